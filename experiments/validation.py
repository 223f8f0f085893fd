"""Value checks of a composed config; ``experiments.run`` calls :func:`validate` before anything is built.

Hydra's schemas (``experiments.schemas``) already reject unknown keys and wrong types at composition; this
adds ranges, allowed values and checks across fields, and builds what can be built without a model (the
task and, for Quantum-PEFT, the ``QPeftConfig``) so that their own checks run now too. Every problem is
reported at once, each naming the field and what it allows, e.g.
``trainer.grad_accum_steps=0 is invalid; allowed: an integer >= 1``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": leaf}`` of a nested dict (lists and empty dicts are leaves)."""
    if isinstance(tree, dict) and tree:
        return {k: v for key, value in tree.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree}


@dataclass(frozen=True)
class Rule:
    """``ok(value)`` must hold; ``allowed`` says what does."""

    ok: Callable[[Any], bool]
    allowed: str


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def integer(low: int, optional: bool = False) -> Rule:
    return Rule(lambda v: (optional and v is None) or (_is_int(v) and v >= low),
                f"an integer >= {low}" + (", or null" if optional else ""))


def number(ok: Callable[[float], bool], allowed: str, optional: bool = False) -> Rule:
    return Rule(lambda v: (optional and v is None) or (_is_number(v) and ok(v)),
                allowed + (", or null" if optional else ""))


def one_of(*values: Any) -> Rule:
    return Rule(lambda v: v in values, ", ".join(map(str, values)))


def _rules() -> dict[str, Rule]:
    from experiments.kbit import GRADIENT_CHECKPOINTING
    from experiments.loop import PRECISIONS, SCHEDULES
    from experiments.methods import METHOD_KINDS
    from experiments.models import MODEL_TYPES, SOURCES, TOKENIZERS
    from experiments.records import RECORD_TO

    positive = "a finite number > 0"
    return {
        "seed": integer(0),
        "record_to": one_of(*RECORD_TO),
        "record_replace": Rule(lambda v: isinstance(v, bool), "true or false"),
        "optimized_metric": Rule(lambda v: isinstance(v, str) and "/" in v, "a metric name split/metric, e.g. val/acc"),
        "task.max_length": integer(1),
        "task.max_train_samples": integer(1, optional=True),
        "task.max_eval_samples": integer(1, optional=True),
        "model.source": one_of(*SOURCES),
        "model.tokenizer": one_of(*TOKENIZERS),
        "model.load_as": one_of(None, *MODEL_TYPES),
        "model.bnb_4bit_quant_type": one_of("nf4", "fp4"),
        "model.base_bits": one_of(None, 1, 2, 3, 4, 5, 6, 7, 8),
        "model.base_group_size": integer(1),
        "model.bnb_4bit_compute_dtype": one_of(None, "bfloat16", "float16", "float32"),
        "trainer.gradient_checkpointing": one_of(*GRADIENT_CHECKPOINTING),
        "method.kind": one_of(*METHOD_KINDS),
        "trainer.epochs": integer(1),
        "trainer.max_steps": integer(1, optional=True),
        "trainer.batch_size": integer(1),
        "trainer.grad_accum_steps": integer(1),
        "trainer.eval_batch_size": integer(1),
        "trainer.lr": number(lambda v: v > 0, positive),
        "trainer.weight_decay": number(lambda v: v >= 0, "a finite number >= 0"),
        "trainer.adam_betas": Rule(lambda v: isinstance(v, list) and len(v) == 2
                                   and all(_is_number(b) and 0 <= b < 1 for b in v), "two numbers in [0, 1)"),
        "trainer.adam_eps": number(lambda v: v > 0, positive),
        "trainer.schedule": one_of(*SCHEDULES),
        "trainer.warmup_ratio": number(lambda v: 0 <= v <= 1, "a number in [0, 1]"),
        "trainer.warmup_steps": integer(0),
        "trainer.max_grad_norm": number(lambda v: v > 0, positive, optional=True),
        "trainer.precision": one_of(*PRECISIONS),
        "trainer.eval_every_steps": integer(1, optional=True),
        "trainer.max_eval_batches": integer(1, optional=True),
        "trainer.log_every": integer(1),
        "trainer.patience": integer(1, optional=True),
        "trainer.stop_after_steps": integer(1, optional=True),
        "trainer.keep_checkpoints": integer(1),
        "trainer.num_workers": integer(0),
    }


# QPeftConfig fields whose Hydra key is not ``method.<field>``
QPEFT_FIELDS = {"target_modules": "model.target_modules", "modules_to_save": "model.head_modules"}


def _built_checks(cfg: DictConfig) -> list[str]:
    """Errors of the objects that can be built without a model: the task and a Quantum-PEFT config."""
    from experiments.methods import qpeft_config
    from experiments.tasks import build_task

    errors = []
    try:
        build_task(cfg.task)
    except ValueError as err:
        errors.append(str(err))
    if cfg.method.kind == "quantum_peft":
        try:
            qpeft_config(cfg.method, cfg.model)
        except ValueError as err:  # name the Hydra key, not the library's field
            errors.append(re.sub(r"QPeftConfig\.(\w+)", lambda m: QPEFT_FIELDS.get(m[1], f"method.{m[1]}"), str(err)))
        if cfg.method.save_quantized and cfg.method.quant_bits is None:
            errors.append("method.save_quantized=true needs method.quant_bits (1..8): only a QAT adapter has codes to pack")
    return errors


def _evaluation_only(cfg: DictConfig, key: str, value: Any) -> bool:
    """``method.protocol: original`` (the no-fine-tuning row, ``conf/method/original.yaml``) runs at lr 0."""
    return key == "trainer.lr" and value == 0 and cfg.method.get("protocol") == "original"


def validate(cfg: DictConfig) -> None:
    """Raise one ``ValueError`` listing every invalid value of ``cfg`` (field, value, what is allowed)."""
    errors, bad = [], set()
    for key, rule in _rules().items():
        value = OmegaConf.select(cfg, key)
        value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        if not rule.ok(value) and not _evaluation_only(cfg, key, value):
            errors.append(f"{key}={value!r} is invalid; allowed: {rule.allowed}")
            bad.add(key)
    tc = cfg.trainer
    if not {"trainer.batch_size", "trainer.grad_accum_steps"} & bad and tc.batch_size % tc.grad_accum_steps:
        errors.append(f"trainer.batch_size={tc.batch_size} is invalid with trainer.grad_accum_steps="
                      f"{tc.grad_accum_steps}; allowed: a multiple of grad_accum_steps")
    errors += _built_checks(cfg)
    if errors:
        raise ValueError("invalid config:\n  " + "\n  ".join(errors))
