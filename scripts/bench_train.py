"""Quantum-PEFT vs peft baselines: train step, peak memory, inference, checkpoint size.

Two sets of configurations (``--configs``):

- ``equal-rank`` (default): every method at rank ``--rank`` on real-size DeBERTaV3-base and GPT-2 Medium
  built from their configs (random weights), and DeBERTaV3-base with its 72 adapted matrices quantized to
  bitsandbytes nf4 (``deberta-v3-base-4bit``, a QLoRA-style base; training step and memory only: bnb's CPU
  inference kernel repacks the shared 4-bit weights in place, so unmerged/merged inference is not timed
  for it); Quantum-PEFT's Pauli, QSD-Pauli and Taylor (P = 4, K' = K) mappings, peft LoRA / AdaLoRA /
  LoHa / LoKr.
- ``paper``: the paper's own configurations, every method built exactly as a run builds it
  (``+experiment=<e> method=<m>`` composed by Hydra, then ``experiments.methods.build_method``): Table 2
  (DeBERTaV3-base, ``glue_sst2``: LoRA r = 2 on the six matrices vs ``quantum_peft``, ``quantum_peft_taylor``
  and ``quantum_peft_exp`` as shipped, K = 3), the same on the nf4 4-bit base, Table 3 (GPT-2 Medium,
  ``e2e_gpt2m``: LoRA r = 4 on Q, V vs Taylor K = 2, K' = 1; the E2E loss installed) and Table 6 (ViT-B/16
  with its 3-bit base, ``cifar10_vit``), at every ``--shapes`` entry (batch x tokens; ViT: the same token
  count in 197-token images, at least one) and every ``--threads`` count -> ``results/bench/train_paper.json``
  and ``train_paper.md``; a CPU run to that default ``--out`` also rewrites the README block, and
  ``--render <json>`` rewrites the markdown and the README block from a JSON.

All methods of one model share the frozen base weights and are timed round-robin (method order rotated
every repeat), so drift hits all alike; the median and the spread (min-max) are reported.

- step: ``zero_grad`` + forward + ``loss.backward()`` (+ AdaLoRA's rank allocator) + AdamW step on the next of
  ``BATCH_POOL`` distinct random batches (a fixed batch is memorized at the paper's learning rates and its
  subnormal gradients slow the CPU backward 10x), at the method's own learning rate (paper mode), under
  ``--autocast bf16`` in a bf16 autocast region.  ``base`` is the frozen model with input-embedding
  gradients on, no optimizer: the floor.
- inference (equal-rank only): eval mode, ``no_grad``, steady state (after training, so Quantum-PEFT's
  U/V are cached); unmerged, then with every adapter merged (``merge_adapter``).
- peak memory: one fresh process per method; the peak over 3 steps above the memory held after the
  model is built (CPU: peak RSS, ``/proc/self/clear_refs``; CUDA: ``max_memory_allocated``).
- construction: forward+backward of all U/V factors alone (batched as in training), and its share of
  the Quantum-PEFT step.

    python scripts/bench_train.py                   # equal rank, CPU: batch 4, seq 32, 1 thread -> results/bench/train.json
    python scripts/bench_train.py --configs paper   # paper configs, 4x32 and 4x128, 1 and 2 threads -> train_paper.json
    python scripts/bench_train.py --configs paper --device cuda --autocast bf16 --shapes 8x128,8x512 --threads 1 \\
        --repeats 20 --out results/bench/train_paper_cuda.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from qpeft import QPeftConfig, get_qpeft_model  # noqa: E402
from qpeft.io import atomic_write_text  # noqa: E402
from timing import round_robin  # noqa: E402

DEBERTA_TARGETS = r".*\.layer\.\d+\.(attention\.self\.(query|key|value)_proj|attention\.output\.dense|intermediate\.dense|output\.dense)"
QPEFT_MAPPINGS = {  # equal-rank mode; DeBERTa sizes 768 / 3072 are not powers of two: Pauli runs through pad or qsd
    "deberta-v3-base": {"pad-pauli": ("pad", {}), "qsd-pauli": ("qsd", {}), "taylor": ("taylor", {"order": 4})},
    "deberta-v3-base-4bit": {"pad-pauli": ("pad", {}), "qsd-pauli": ("qsd", {}), "taylor": ("taylor", {"order": 4})},
    "gpt2-medium": {"pauli": ("pauli", {"layers": 1}), "qsd-pauli": ("qsd", {}), "taylor": ("taylor", {"order": 4})},
}
PEFT_METHODS = ("lora", "adalora", "loha", "lokr")
#: paper mode: model -> (experiment, method configs); the first method is the reference (LoRA)
PAPER = {
    "deberta-v3-base": ("glue_sst2", ("lora", "quantum_peft", "quantum_peft_taylor", "quantum_peft_exp")),
    "deberta-v3-base-4bit": ("glue_sst2", ("lora", "quantum_peft", "quantum_peft_taylor", "quantum_peft_exp")),
    "gpt2-medium": ("e2e_gpt2m", ("lora", "quantum_peft_taylor", "quantum_peft", "quantum_peft_exp")),
    "vit-b16-3bit": ("cifar10_vit", ("lora", "quantum_peft_taylor", "quantum_peft_pad", "quantum_peft")),
}
PAPER_TABLE = {"deberta-v3-base": "Table 2", "deberta-v3-base-4bit": "Table 2 on an nf4 base",
               "gpt2-medium": "Table 3", "vit-b16-3bit": "Table 6"}
VIT_TOKENS = 197  # (224 / 16)² patches + [CLS]
README, PAPER_OUT = ROOT / "README.md", "results/bench/train_paper.json"
README_BEGIN, README_END = "<!-- bench_train paper: begin -->", "<!-- bench_train paper: end -->"


def quantize_4bit(model: nn.Module, pattern: str, compute_dtype: torch.dtype = torch.float32,
                  device: torch.device = torch.device("cpu")) -> nn.Module:
    """Replace every ``nn.Linear`` (on the CPU) whose name matches ``pattern`` by a bitsandbytes nf4
    ``Linear4bit``, quantized as it moves to ``device`` (as ``from_pretrained`` does), and move the rest."""
    import bitsandbytes as bnb

    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and re.fullmatch(pattern, name):
            q = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=module.bias is not None,
                                  quant_type="nf4", compute_dtype=compute_dtype)
            q.weight = bnb.nn.Params4bit(module.weight.data, requires_grad=False, quant_type="nf4")
            if module.bias is not None:
                q.bias = nn.Parameter(module.bias.data, requires_grad=False)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, q.to(device))  # .to() quantizes
    model.is_loaded_in_4bit = True  # as from_pretrained(quantization_config=...) marks it: peft dispatches bnb layers
    return model.to(device)


def build_base(model: str, device: torch.device = torch.device("cpu"), autocast: str = "off") -> nn.Module:
    """The real-size model from its config, random weights (seed 0), on ``device`` (4-bit: quantized there)."""
    torch.manual_seed(0)
    if model == "deberta-v3-base-4bit":
        compute = torch.bfloat16 if autocast == "bf16" else torch.float32
        return quantize_4bit(build_base("deberta-v3-base"), DEBERTA_TARGETS, compute, device)
    if model == "deberta-v3-base":
        from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

        cfg = DebertaV2Config(
            hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
            vocab_size=128100, relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=256,
            max_relative_positions=-1, norm_rel_ebd="layer_norm", share_att_key=True, num_labels=2,
        )
        return DebertaV2ForSequenceClassification(cfg).to(device)
    if model == "vit-b16-3bit":
        from transformers import ViTConfig, ViTForImageClassification

        from experiments.base_quant import quantize_base_

        vit = ViTForImageClassification(ViTConfig(image_size=224, patch_size=16, num_labels=10))
        quantize_base_(vit, 3, 128)  # model=vit_b16_3bit: every weight rounded to 3 bits per group of 128
        return vit.to(device)
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(n_embd=1024, n_layer=24, n_head=16, vocab_size=50257)).to(device)


def methods_for(model: str, configs: str) -> list[str]:
    if configs == "paper":
        return ["base", *PAPER[model][1]]
    return ["base", *PEFT_METHODS, *(f"qpeft-{m}" for m in QPEFT_MAPPINGS[model])]


def unsupported(model: str, method: str) -> str | None:
    """Why ``method`` cannot run on ``model`` (peft LoHa/LoKr have no GPT-2 Conv1D), else ``None``."""
    if model == "gpt2-medium" and method in ("loha", "lokr"):
        return "peft LyCORIS layers do not support transformers Conv1D (reference.md §1.6)"
    if model.endswith("-4bit") and method in ("loha", "lokr"):
        return "peft LyCORIS layers do not support bitsandbytes 4-bit layers (reference.md §1.11)"
    return None


#: distinct random batches a runner cycles through: a step never sees the batch of the step before (a fixed
#: batch is memorized within a few steps at the paper's Quantum-PEFT learning rates, and the vanishing
#: gradients turn subnormal, which made the CPU backward 10x slower: a benchmark artifact, not a cost)
BATCH_POOL = 32


def make_batches(model: str, batch: int, seq: int, device: torch.device, count: int = BATCH_POOL) -> list[dict]:
    """``count`` batches of :func:`make_batch` (seeds 1 .. count)."""
    return [make_batch(model, batch, seq, device, seed) for seed in range(1, count + 1)]


def make_batch(model: str, batch: int, seq: int, device: torch.device, seed: int = 1) -> dict[str, torch.Tensor]:
    """Random inputs: DeBERTa labels of 2 classes; GPT-2 the loss on the last 60% of each row (E2E's
    references); ViT ``images(batch, seq)`` random 224 x 224 images of 10 classes."""
    g = torch.Generator().manual_seed(seed)
    if model.startswith("vit"):
        count = images(batch, seq)
        return {"pixel_values": torch.randn(count, 3, 224, 224, generator=g).to(device),
                "labels": torch.randint(0, 10, (count,), generator=g).to(device)}
    ids = torch.randint(5, 50000, (batch, seq), generator=g)
    if model.startswith("deberta"):
        return {"input_ids": ids.to(device), "labels": torch.randint(0, 2, (batch,), generator=g).to(device)}
    labels = ids.clone()
    labels[:, : int(0.4 * seq)] = -100
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": labels.to(device)}


def images(batch: int, seq: int) -> int:
    """ViT images with the token count of a ``batch x seq`` text batch (197 tokens an image, at least one)."""
    return max(1, round(batch * seq / VIT_TOKENS))


@dataclass
class Adapted:
    """One method on its private copy of the base: the model, what AdamW trains, and the per-step hook."""

    net: nn.Module
    param_groups: list[dict[str, Any]]
    on_step_end: Callable[[int], None] = lambda step: None
    trainable: int = 0
    save: Callable[[str], None] | None = None
    info: dict[str, Any] = field(default_factory=dict)


def adapt_equal_rank(base: nn.Module, model: str, method: str, rank: int, total_step: int) -> Adapted:
    """``base`` (already a private copy) with ``method`` injected at rank ``rank`` (equal-rank mode)."""
    if method == "base":
        return frozen(base)
    gpt2 = model == "gpt2-medium"
    targets = ["c_attn"] if gpt2 else DEBERTA_TARGETS
    if method.startswith("qpeft-"):
        mapping, options = QPEFT_MAPPINGS[model][method.removeprefix("qpeft-")]
        config = QPeftConfig(
            target_modules=targets, rank=rank, alpha=32.0, mapping=mapping, mapping_options=options,
            fused_modules={"c_attn": [0, 2]} if gpt2 else {},
        )
        net = get_qpeft_model(base, config)
        return trained(net, [{"params": [p for p in net.parameters() if p.requires_grad]}], save=net.save_pretrained)
    import peft

    common = dict(target_modules=targets)
    config = {
        "lora": lambda: peft.LoraConfig(r=rank, lora_alpha=32, fan_in_fan_out=gpt2, **common),
        "adalora": lambda: peft.AdaLoraConfig(
            init_r=rank, target_r=rank, lora_alpha=32, tinit=10, tfinal=10, total_step=total_step,
            fan_in_fan_out=gpt2, **common,
        ),
        "loha": lambda: peft.LoHaConfig(r=rank, alpha=32, **common),
        "lokr": lambda: peft.LoKrConfig(r=rank, alpha=32, **common),
    }[method]()
    net = peft.get_peft_model(base, config)
    hook = net.base_model.update_and_allocate if method == "adalora" else (lambda step: None)
    return trained(net, [{"params": [p for p in net.parameters() if p.requires_grad]}], hook, net.save_pretrained)


def compose_paper(model: str, method: str) -> Any:
    """The run config of ``+experiment=<PAPER[model]> method=<method>`` (the experiment's own model config)."""
    from hydra import compose, initialize_config_dir

    import experiments.schemas  # noqa: F401  (registers the config schemas)

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"+experiment={PAPER[model][0]}", f"method={method}"])


def adapt_paper(base: nn.Module, model: str, method: str) -> Adapted:
    """``base`` (a private copy) wrapped by ``method`` as a run of the model's paper experiment builds it."""
    if method == "base":
        return frozen(base)
    from omegaconf import OmegaConf

    from experiments.methods import build_method
    from experiments.tasks import build_task

    cfg = compose_paper(model, method)
    task_type = {"glue_sst2": "SEQ_CLS", "e2e_gpt2m": "CAUSAL_LM", "cifar10_vit": None}[PAPER[model][0]]
    if task_type == "CAUSAL_LM":
        build_task(cfg.task).prepare_model(base)  # the E2E label-smoothed completion loss, as the loop installs it
    built = build_method(cfg.method, base, cfg.model, 10_000, task_type=task_type)
    protocol = cfg.protocols[cfg.method.protocol]
    groups = built.param_groups(protocol.weight_decay)
    for group in groups:
        group.setdefault("lr", protocol.lr)
    info = {"method_config": f"conf/method/{method}.yaml", "experiment": PAPER[model][0]}
    method_cfg = OmegaConf.to_container(cfg.method, resolve=True)
    info |= {k: method_cfg[k] for k in ("r", "rank", "mapping", "mapping_options", "lora_dropout", "dropout")
             if k in method_cfg}
    return trained(built.model, groups, built.on_step_end, built.save_adapter, info)


def frozen(base: nn.Module) -> Adapted:
    """The floor: the frozen base with input-embedding gradients on (the backward runs), no optimizer."""
    base.requires_grad_(False)
    base.enable_input_require_grads()
    return Adapted(base, [])


def trained(net: nn.Module, groups: list[dict[str, Any]], hook: Callable[[int], None] = lambda step: None,
            save: Callable[[str], None] | None = None, info: dict[str, Any] | None = None) -> Adapted:
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    return Adapted(net, groups, hook, trainable, save, info or {})


def adapt(base: nn.Module, model: str, method: str, args: argparse.Namespace) -> Adapted:
    if args.configs == "paper":
        return adapt_paper(base, model, method)
    return adapt_equal_rank(base, model, method, args.rank, args.total_step)


class Runner:
    """One adapted model with its optimizer: ``step`` (on the next of ``batches``), ``infer``, ``build`` (U/V alone)."""

    def __init__(self, adapted: Adapted, batches: list[dict[str, torch.Tensor]], autocast: str = "off") -> None:
        self.adapted, self.net, self.batches = adapted, adapted.net, batches
        self.opt = torch.optim.AdamW(adapted.param_groups, lr=1e-5) if adapted.param_groups else None
        device = next(self.net.parameters()).device.type
        self.autocast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if autocast == "bf16" else contextlib.nullcontext
        self.global_step = 0

    def step(self) -> None:
        self.net.train()
        if self.opt is not None:
            self.opt.zero_grad(set_to_none=True)
        with self.autocast():
            loss = self.net(**self.batches[self.global_step % len(self.batches)]).loss
        loss.backward()
        if self.opt is not None:
            self.opt.step()
        self.adapted.on_step_end(self.global_step)
        self.global_step += 1

    def infer(self) -> None:
        self.net.eval()
        with torch.no_grad(), self.autocast():
            self.net(**self.batches[0])

    def build(self) -> None:
        """Forward+backward of every U/V factor, built as in a training step."""
        layers = [layer for _, layer in self.net.qpeft_layers()]
        with self.autocast():
            factors = self.net.base_model._batcher.build(layers)  # QPeftModel.base_model is the tuner
        sum(f.float().sum() for us, vs in factors for f in (*us, *vs)).backward()

    @property
    def is_qpeft(self) -> bool:
        return hasattr(self.net, "qpeft_layers")


# ------------------------------------------------------------------ memory / size probe (own process)
def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def probe(model: str, method: str, args: argparse.Namespace) -> dict:
    """Peak training memory above the built model, trainable parameters and adapter file bytes."""
    device = torch.device(args.device)
    adapted = adapt(build_base(model, device, args.autocast), model, method, args)
    adapted.net.to(device)
    runner = Runner(adapted, make_batches(model, args.batch, args.seq, device, 3), args.autocast)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS high-water mark
        before = _rss_kib("VmRSS") * 1024
    for _ in range(3):
        runner.step()
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _rss_kib("VmHWM") * 1024
    out = {"peak_train_mib": (peak - before) / 2**20, "trainable": adapted.trainable}
    if adapted.save is not None:
        with tempfile.TemporaryDirectory() as tmp:
            adapted.save(tmp)
            out["adapter_bytes"] = sum(f.stat().st_size for f in Path(tmp).rglob("*.safetensors"))
    return out


def run_probe(model: str, method: str, args: argparse.Namespace, batch: int, tokens: int) -> dict:
    """:func:`probe` of ``method`` at ``batch x tokens`` in a fresh process (the current thread count)."""
    cmd = [sys.executable, __file__, "--probe", model, method, "--configs", args.configs, "--device", args.device,
           "--batch", str(batch), "--seq", str(tokens), "--rank", str(args.rank),
           "--total-step", str(args.total_step), "--threads", str(torch.get_num_threads()), "--autocast", args.autocast]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"memory probe {model}/{method} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ timing (one process, shared base)
def bench_model(model: str, args: argparse.Namespace, runs: list[tuple[tuple[int, int], int]]) -> list[dict[str, dict]]:
    """Every method of ``model``, built once, timed round-robin at every ``((batch, tokens), threads)`` of
    ``runs``; unless ``--skip-memory``, each method's peak memory and adapter size are probed in its own
    process once per shape (at the first thread count: threads do not change the peak)."""
    device = torch.device(args.device)
    base = build_base(model, device, args.autocast)
    runners, built = {}, {}
    for method in methods_for(model, args.configs):
        if reason := unsupported(model, method):
            built[method] = {"unsupported": reason}
            continue
        private = copy.deepcopy(base, memo={id(p): p for p in base.parameters()})  # frozen weights shared
        adapted = adapt(private, model, method, args)
        adapted.net.to(device)
        runners[method] = Runner(adapted, [], args.autocast)
        built[method] = {"trainable": adapted.trainable, **adapted.info}
    repeats = args.repeats if model.startswith("deberta") else args.repeats_gpt2
    out, probed = [], set()
    for (batch_size, tokens), threads in runs:
        torch.set_num_threads(threads)
        print(f"== {model}: {batch_size} x {tokens}, {threads} thread(s)", flush=True)
        batches = make_batches(model, batch_size, tokens, device)
        results = copy.deepcopy(built)
        tasks: dict[str, Callable[[], None]] = {}
        for method, runner in runners.items():
            runner.batches = batches
            tasks[f"step/{method}"] = runner.step
            if runner.is_qpeft:
                tasks[f"build/{method}"] = runner.build
        timed = round_robin(tasks, repeats, device)
        if args.configs == "equal-rank" and not model.endswith("-4bit"):  # 4-bit: no inference timing (docstring)
            timed |= round_robin({f"infer/{m}": r.infer for m, r in runners.items()}, repeats, device)  # steady eval
            for method, runner in runners.items():  # merged inference: every adapter folded in (shared W: values moot)
                if method != "base":
                    runner.net.merge_adapter()
            timed |= round_robin({f"merged/{m}": r.infer for m, r in runners.items()}, repeats, device)
            for method, runner in runners.items():
                if method != "base":
                    runner.net.unmerge_adapter()
        for key, value in timed.items():
            kind, method = key.split("/", 1)
            results[method][kind] = value
        if not args.skip_memory and (batch_size, tokens) not in probed:
            probed.add((batch_size, tokens))
            for method in runners:
                results[method].update(run_probe(model, method, args, batch_size, tokens))
        add_ratios(results)
        print(table(model, results), "\n", flush=True)
        out.append(results)
    return out


def add_ratios(results: dict[str, dict]) -> None:
    lora, base = results["lora"], results["base"]
    for res in results.values():
        if "step" not in res:
            continue
        res["step_vs_lora"] = res["step"]["ms"] / lora["step"]["ms"]
        res["step_vs_base"] = res["step"]["ms"] / base["step"]["ms"]
        if "infer" in res:
            res["infer_vs_lora"] = res["infer"]["ms"] / lora["infer"]["ms"]
            res["merged_vs_base"] = res["merged"]["ms"] / base["merged"]["ms"]
        if "peak_train_mib" in res and lora.get("peak_train_mib"):
            res["peak_vs_lora"] = res["peak_train_mib"] / lora["peak_train_mib"]
        if "build" in res:
            res["build_share_of_step"] = res["build"]["ms"] / res["step"]["ms"]
        if "adapter_bytes" in res and res.get("trainable"):
            res["bytes_per_4_params"] = res["adapter_bytes"] / (4 * res["trainable"])


def table(model: str, results: dict[str, dict]) -> str:
    head = ("| method | step ms (min–max) | ×LoRA | peak MiB | ×LoRA | infer ms | ×LoRA | merged ms | ×base "
            "| trainable | adapter bytes | U/V build ms (share) |")
    lines = [f"**{model}**", "", head, "|" + "---|" * 12]
    for method, r in results.items():
        if "unsupported" in r:
            lines.append(f"| {method} | unsupported | | | | | | | | | | |")
            continue
        build = f"{r['build']['ms']:.1f} ({100 * r['build_share_of_step']:.1f}%)" if "build" in r else ""
        peak = r.get("peak_train_mib")
        infer = (f"| {r['infer']['ms']:.0f} | {r['infer_vs_lora']:.3f} | {r['merged']['ms']:.0f} "
                 f"| {r['merged_vs_base']:.3f} " if "infer" in r else "| n/a | | n/a | ")
        lines.append(
            f"| {method} | {r['step']['ms']:.0f} ({r['step']['min']:.0f}–{r['step']['max']:.0f}) | {r['step_vs_lora']:.3f} "
            f"| {'' if peak is None else f'{peak:.0f}'} | {r.get('peak_vs_lora', float('nan')):.2f} "
            + infer
            + f"| {r.get('trainable', '')} | {r.get('adapter_bytes', '')} | {build} |"
        )
    return "\n".join(lines)


def paper_markdown(report: dict) -> str:
    """The paper-configuration table: step ×LoRA and ×base, peak memory ×LoRA, per thread count and shape."""
    lines = ["| model (paper) | shape | threads | method | trainable | step ms (min–max) | ×LoRA | ×base "
             "| U/V build share | peak MiB | ×LoRA |", "|" + "---|" * 11]
    for run in report["runs"]:
        shape = run["shape"]
        for model, results in run["models"].items():
            for method, r in results.items():
                if "step" not in r:
                    continue
                peak, peak_ratio = r.get("peak_train_mib"), r.get("peak_vs_lora")
                tokens = (f"{images(*shape)} img × {VIT_TOKENS}" if model.startswith("vit")
                          else f"{shape[0]} × {shape[1]}")
                build = f"{100 * r['build_share_of_step']:.1f}%" if "build_share_of_step" in r else ""
                lines.append(
                    f"| {model} ({PAPER_TABLE[model]}) | {tokens} | {run['threads']} | {method} | {r['trainable']:,} "
                    f"| {r['step']['ms']:.0f} ({r['step']['min']:.0f}–{r['step']['max']:.0f}) | {r['step_vs_lora']:.3f} "
                    f"| {r['step_vs_base']:.3f} | {build} | {'' if peak is None else f'{peak:.0f}'} "
                    f"| {'' if peak_ratio is None else f'{peak_ratio:.2f}'} |")
    return "\n".join(lines)


def render(report_path: Path, readme: Path | None = None) -> None:
    """Write ``<report>.md`` from a paper-mode JSON and, given ``readme``, replace its block between the markers
    (CPU reports only: the README's table is this machine's)."""
    report = json.loads(report_path.read_text())
    text = paper_markdown(report)
    git = report.get("git") or {}
    commit = f", commit {git['sha'][:7]}{' (dirty)' if git.get('dirty') else ''}" if git.get("sha") else ""
    machine_line = (f"{report['machine'].get('gpu') or report['machine']['cpu']}, torch {report['machine']['torch']}, "
                    f"autocast {report['settings']['autocast']}, {report['settings']['repeats']} rounds "
                    f"({report['settings']['repeats_gpt2']} for GPT-2 / ViT){commit}; `{report['command']}`")
    atomic_write_text(report_path.with_suffix(".md"), f"{machine_line}\n\n{text}\n")
    if readme is not None and readme.is_file() and report["settings"]["device"] == "cpu":
        content = readme.read_text()
        if README_BEGIN in content and README_END in content:
            before, rest = content.split(README_BEGIN, 1)
            _, after = rest.split(README_END, 1)
            block = f"{README_BEGIN}\n{machine_line}\n\n{text}\n{README_END}"
            atomic_write_text(readme, before + block + after)


def machine(device: torch.device) -> dict[str, str | int]:
    info: dict[str, str | int] = {"torch": torch.__version__, "python": platform.python_version(),
                                  "cpu": platform.processor() or platform.machine()}
    try:
        info["cpu"] = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                           if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """``"4x32,4x128"`` -> ``[(4, 32), (4, 128)]`` (batch x tokens)."""
    try:
        shapes = [tuple(int(v) for v in part.lower().split("x")) for part in text.split(",") if part]
    except ValueError:
        shapes = []
    if not shapes or any(len(s) != 2 or min(s) < 1 for s in shapes):
        raise argparse.ArgumentTypeError(f"--shapes {text!r}: expected BATCHxTOKENS[,BATCHxTOKENS...], e.g. 4x32,4x128")
    return shapes  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", choices=("equal-rank", "paper"), default="equal-rank")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=None,
                        help="equal-rank default: deberta-v3-base gpt2-medium; paper default: all of PAPER")
    parser.add_argument("--batch", type=int, default=4, help="equal-rank mode")
    parser.add_argument("--seq", type=int, default=32, help="equal-rank mode")
    parser.add_argument("--shapes", type=parse_shapes, default=[(4, 32), (4, 128)], help="paper mode: BATCHxTOKENS,...")
    parser.add_argument("--rank", type=int, default=4, help="equal-rank mode")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds, DeBERTa")
    parser.add_argument("--repeats-gpt2", type=int, default=3, help="timed rounds, GPT-2 Medium and ViT")
    parser.add_argument("--total-step", type=int, default=10_000, help="AdaLoRA schedule length (equal-rank)")
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="CPU threads (equal-rank default 1; paper default 1 2)")
    parser.add_argument("--autocast", choices=("off", "bf16"), default="off", help="bf16 autocast of the step (GPU)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--out", type=Path, default=None,
                        help="default results/bench/train.json (equal-rank) or train_paper.json (paper)")
    parser.add_argument("--render", type=Path, default=None, help="only rewrite <json>.md and the README block")
    parser.add_argument("--probe", nargs=2, metavar=("MODEL", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.render:
        render(args.render, README)
        return
    paper = args.configs == "paper"
    valid = list(PAPER) if paper else list(QPEFT_MAPPINGS)
    models = args.models or (list(PAPER) if paper else ["deberta-v3-base", "gpt2-medium"])
    if unknown := sorted(set(models) - set(valid)):
        parser.error(f"--models {unknown} unknown for --configs {args.configs}; valid: {valid}")
    threads = args.threads or ([1, 2] if paper else [1])
    if args.probe:
        torch.set_num_threads(threads[0])
        print(json.dumps(probe(*args.probe, args)))
        return
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device visible")
    out = args.out or Path(PAPER_OUT if paper else "results/bench/train.json")
    from experiments.records import git_info

    report: dict[str, Any] = {
        "command": " ".join(["python", "scripts/bench_train.py", *sys.argv[1:]]),
        "git": git_info(ROOT),  # the tree the run starts from
        "machine": machine(torch.device(args.device)),
        "settings": {k: v for k, v in vars(args).items() if k not in ("probe", "out", "render")}
        | {"out": str(out), "models": models, "threads": threads},
    }
    start = time.perf_counter()
    runs = ([(shape, count) for shape in args.shapes for count in threads] if paper
            else [((args.batch, args.seq), threads[0])])
    per_model = {model: bench_model(model, args, runs) for model in models}
    if paper:
        report["paper_methods"] = {m: {"experiment": e, "methods": list(ms)} for m, (e, ms) in PAPER.items() if m in models}
        report["runs"] = [{"shape": list(shape), "threads": count, "models": {m: per_model[m][i] for m in models}}
                          for i, (shape, count) in enumerate(runs)]
    else:
        report["machine"]["threads"] = threads[0]
        report["qpeft_mappings"] = QPEFT_MAPPINGS
        report["models"] = {m: per_model[m][0] for m in models}
    report["wall_s"] = time.perf_counter() - start
    atomic_write_text(out, json.dumps(report, indent=2, default=str))
    if paper:
        render(out, README if out.resolve() == (ROOT / PAPER_OUT).resolve() else None)  # other --out: no README
    print(f"wrote {out} in {report['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
