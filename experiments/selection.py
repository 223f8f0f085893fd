"""Each table's selection protocol as data (method.md §12), and the one function that applies it.

A :class:`SelectionRule` says which records feed a table (experiments, model, the protocol's seeds,
untagged protocol runs and ``--lr<value>`` sweep records alike), which metric a record contributes
(its best evaluation or its final one) and how the learning rate is chosen: the value whose mean over
seeds is best.  :func:`select_cell` applies a rule to the records of one (experiment, method) and
returns a :class:`Cell` that knows its value, spread, n, the selected learning rate, the means of the
other learning rates and the names of its records.  ``scripts/make_tables.py`` renders cells and
``scripts/reproduce.py`` plans the runs a rule still lacks.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from experiments.paper_values import GLUE_METRIC, GLUE_TASKS

LR_TAG = re.compile(r"^--lr[0-9.eE+-]+$")
EPOCH_CHOICES = ("best", "final")


@dataclass(frozen=True)
class SelectionRule:
    """How the cells of one paper table are chosen from run records."""

    table: str
    description: str
    experiments: tuple[str, ...]
    model: str
    metric: dict[str, str]  # experiment -> metric key (``val/acc``, ...)
    epoch: str  # "best": a run's best evaluation (best checkpoint); "final": its last evaluation
    seeds: tuple[int, ...]  # the seeds the protocol asks for
    methods: tuple[str, ...]  # the table's rows (method config names)
    swept_protocols: tuple[str, ...] = ("quantum_peft", "quantum_peft_lie")  # methods whose LR is swept
    # rows fed by a non-LR sweep: (method, record_tag) pairs, e.g. ("lora", "--r1"); empty = each method untagged
    tagged: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.epoch not in EPOCH_CHOICES:
            raise ValueError(f"SelectionRule.epoch={self.epoch!r} is invalid; allowed: {list(EPOCH_CHOICES)}")
        missing = sorted(set(self.experiments) - set(self.metric))
        if missing:
            raise ValueError(f"SelectionRule {self.table!r}: no metric for experiments {missing}")

    def cells(self) -> tuple[tuple[str, str], ...]:
        """The (method, record_tag) of every row: ``tagged``, else each method with the empty tag."""
        return self.tagged or tuple((m, "") for m in self.methods)

    def with_model(self, model: str) -> SelectionRule:
        """The same rule for records of another model config (e.g. ``tiny_deberta`` in tests)."""
        return SelectionRule(**{**self.__dict__, "model": model})


RULES: dict[str, SelectionRule] = {
    "2": SelectionRule(
        table="2", description="GLUE dev, DeBERTaV3-base: per task the learning rate with the best mean over "
        "5 seeds, each seed at its best epoch (method.md §12.1: 'best learning rate and the best checkpoints "
        "over each epoch', 5 seeds)",
        experiments=tuple(f"glue_{t}" for t in GLUE_TASKS), model="deberta_v3_base",
        metric={f"glue_{t}": GLUE_METRIC[t] for t in GLUE_TASKS}, epoch="best", seeds=(0, 1, 2, 3, 4),
        methods=("full_ft", "bitfit", "lora", "adalora", "loha", "lokr", "quantum_peft"),
    ),
    "3": SelectionRule(
        table="3", description="E2E NLG, GPT-2 Medium: the final checkpoint of each run (the paper reports the "
        "final epoch, not the best), learning rate by the best mean BLEU over seeds",
        experiments=("e2e_gpt2m",), model="gpt2_medium", metric={"e2e_gpt2m": "test/bleu"}, epoch="final",
        seeds=(0, 1, 2), methods=("lora", "adalora", "loha", "lokr", "quantum_peft_taylor"),
        swept_protocols=(),  # §12.2 prints every method's learning rate (LoRA 2e-4, Quantum-PEFT 2e-3): no sweep
    ),
    "5": SelectionRule(
        table="5", description="GLUE dev, Mistral-7B with an NF4 base: each run at its best epoch of 5, the "
        "learning rate with the best mean (Quantum-PEFT's swept, LoRA/AdaLoRA's at the experiment's rate), one seed (method.md §12.4 gives the setup of Zhang & Pilanci 2024 but no "
        "selection rule or seed count: best epoch as Table 2 and one seed are [I]); metric per task as Table 2",
        experiments=tuple(f"mistral_glue_{t}" for t in GLUE_TASKS), model="mistral_7b_4bit",
        metric={f"mistral_glue_{t}": GLUE_METRIC[t] for t in GLUE_TASKS}, epoch="best", seeds=(0,),
        methods=("lora", "adalora", "quantum_peft"),  # Quantum-PEFT's lr swept (sweep/lr.yaml), baselines' fixed [I]
    ),
    "6": SelectionRule(
        table="6", description="CIFAR-10, ViT-B/16 with a 3-bit base: early stopping (patience 5), so each run "
        "contributes its best evaluation, the checkpoint early stopping keeps; one seed and the printed learning "
        "rates (§12.3: LoRA 1e-3, Quantum-PEFT 3e-3; one seed is [I])",
        experiments=("cifar10_vit",), model="vit_b16_3bit", metric={"cifar10_vit": "val/acc"}, epoch="best",
        seeds=(0,), methods=("original", "full_ft", "lora", "quantum_peft_pad", "quantum_peft_taylor"),
        swept_protocols=(),
        tagged=(("original", ""), ("full_ft", ""), ("lora", "--r1"), ("lora", "--r2"), ("lora", "--r4"),
                ("quantum_peft_pad", ""), ("quantum_peft_taylor", "")),
    ),
    "7": SelectionRule(
        table="7", description="CIFAR-10, ViT-B/16 on the FP32 base, Taylor K = 16, K' = 3, QAT of the Lie parameters "
        "at B = 8..1 bits with uniform (γ = 0) and adaptive (γ = 1) bit loading (sweep cifar_qat_bits); FP32 = Table "
        "8's K' = 3 run. Each run's best evaluation (early stopping), one seed [I]",
        experiments=("cifar10_vit",), model="vit_b16", metric={"cifar10_vit": "val/acc"}, epoch="best",
        seeds=(0,), methods=("quantum_peft_taylor",), swept_protocols=(),
        tagged=(("quantum_peft_taylor", "--k3"),) + tuple(
            ("quantum_peft_taylor", f"--k3--int{b}--g{g}") for b in (8, 4, 3, 2, 1) for g in ("0.0", "1.0")),
    ),
    "10": SelectionRule(
        table="10", description="CIFAR-10, ViT-B/16, tensor-network Quantum-PEFT with Taylor nodes (CP, TRD, HTD, TD, "
        "TTD; conf/method/quantum_peft_tn_*): each run's best evaluation (early stopping), one seed; on the FP32 base "
        "[I]: TTD's printed 98.81% is Table 7's FP32 accuracy, whose base is not quantized",
        experiments=("cifar10_vit",), model="vit_b16", metric={"cifar10_vit": "val/acc"}, epoch="best", seeds=(0,),
        methods=tuple(f"quantum_peft_tn_{n}" for n in ("cp", "trd", "htd", "tucker", "ttd")), swept_protocols=(),
    ),
    "8": SelectionRule(
        table="8", description="CIFAR-10, ViT-B/16, Taylor K = 16, intrinsic rank K' = 1..8 (sweep "
        "cifar_intrinsic_rank): each run's best evaluation (early stopping), one seed [I]; on the FP32 base "
        "(model vit_b16): the paper runs Table 8 'in the same settings as Table 7', whose base is not quantized",
        experiments=("cifar10_vit",), model="vit_b16", metric={"cifar10_vit": "val/acc"}, epoch="best",
        seeds=(0,), methods=("quantum_peft_taylor",), swept_protocols=(),
        tagged=tuple(("quantum_peft_taylor", f"--k{k}") for k in range(1, 9)),
    ),
    "9": SelectionRule(
        table="9", description="CIFAR-10, ViT-B/16 with a 2-bit base, Quantum-PEFT (Pauli, padded to 1024, K = 1), "
        "entangling layers L (sweep cifar_layers): each run's best evaluation, one seed [I]",
        experiments=("cifar10_vit_2bit",), model="vit_b16_2bit", metric={"cifar10_vit_2bit": "val/acc"},
        epoch="best", seeds=(0,), methods=("quantum_peft_pad",), swept_protocols=(),
        tagged=tuple(("quantum_peft_pad", f"--L{L}") for L in (1, 2, 3, 4, 8, 16, 32)),
    ),
}


def rule_for(table: str) -> SelectionRule:
    """The rule of ``table``; ``ValueError`` listing the tables that have one."""
    if table not in RULES:
        raise ValueError(f"no selection rule for table {table!r}; allowed: {sorted(RULES)}")
    return RULES[table]


def record_lr(record: dict[str, Any]) -> float | None:
    lr = record["run_info"]["config"].get("trainer", {}).get("lr")
    return None if lr is None else float(lr)


def record_tag(record: dict[str, Any]) -> str:
    return record["run_info"]["config"].get("record_tag") or ""


def record_model(record: dict[str, Any]) -> str:
    return record["run_info"]["config"].get("model", {}).get("name", "?")


def feeds(record: dict[str, Any], rule: SelectionRule, experiment: str, method: str, tag: str = "") -> bool:
    """Whether a completed record is one of the runs the rule's cell (experiment, method, tag) is chosen from:
    its record tag is ``tag``, optionally followed by an ``--lr<value>`` sweep tag."""
    info = record["run_info"]
    rest = record_tag(record)
    if not rest.startswith(tag):
        return False
    rest = rest[len(tag):]
    return (info["experiment"] == experiment and info["method"] == method and record_model(record) == rule.model
            and info["seed"] in rule.seeds and (rest == "" or LR_TAG.match(rest) is not None))


def lower_is_better(metric: str) -> bool:
    """Losses and perplexities (``val/loss``, ``val/ppl``); every other metric is higher-is-better."""
    return metric.endswith(("/loss", "/ppl"))


def run_value(record: dict[str, Any], metric: str, epoch: str) -> float | None:
    """The record's contribution: its best evaluation of ``metric`` (the lowest loss, else the highest
    value) or its last one."""
    values = [m[metric] for m in record["train_info"]["metrics"] if metric in m and _finite(m[metric])]
    if not values:
        return None
    if epoch == "final":
        return values[-1]
    return min(values) if lower_is_better(metric) else max(values)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@dataclass
class Cell:
    """One table cell: the selected learning rate's runs and the alternatives it beat."""

    mean: float
    std: float | None
    n: int
    required: int
    lr: float | None
    files: list[str]
    alternatives: dict[float | None, tuple[float, int]] = field(default_factory=dict)  # lr -> (mean, n)
    duplicates: list[str] = field(default_factory=list)

    def text(self, scale: float = 100.0) -> str:
        spread = f" ± {scale * self.std:.2f}" if self.std is not None else ""
        lr = f", lr={self.lr:g}" if self.lr is not None else ""
        short = f", {self.required - self.n} seed(s) missing" if self.n < self.required else ""
        return f"{scale * self.mean:.2f}{spread} (n={self.n}{lr}{short})"

    def provenance(self, scale: float = 100.0) -> str:
        """The selection made and the records it rests on."""
        others = "; ".join(f"lr={lr:g}: {scale * mean:.2f} (n={n})" for lr, (mean, n) in sorted(
            ((lr, v) for lr, v in self.alternatives.items() if lr != self.lr), key=lambda kv: (kv[0] is None, kv[0] or 0)))
        chosen = f"lr={self.lr:g} selected" if self.lr is not None else "one learning rate"
        text = f"{chosen}{' over ' + others if others else ''}; records: {', '.join(self.files)}"
        if self.duplicates:
            text += f"; ignored duplicates (same lr and seed): {', '.join(self.duplicates)}"
        return text


def select_cell(records: list[dict[str, Any]], rule: SelectionRule, experiment: str, method: str,
                tag: str = "") -> Cell | None:
    """Apply ``rule`` to the completed ``records`` of (``experiment``, ``method``, ``tag``); ``None`` if none
    feeds it.

    Per learning rate: one value per seed (a later record of the same lr and seed replaces an earlier
    one, by start time, and is reported), mean over seeds.  The selected lr has the best mean; ties go
    to more seeds, then to the smaller learning rate.
    """
    metric = rule.metric[experiment]
    by_lr: dict[float | None, dict[int, tuple[str, float, str]]] = defaultdict(dict)
    duplicates = []
    for record in sorted(records, key=lambda r: (r["run_info"].get("start_time") or "", r.get("_file", ""))):
        if not feeds(record, rule, experiment, method, tag):
            continue
        value = run_value(record, metric, rule.epoch)
        if value is None:
            continue
        seed, lr = record["run_info"]["seed"], record_lr(record)
        if seed in by_lr[lr]:
            duplicates.append(by_lr[lr][seed][0])
        by_lr[lr][seed] = (record.get("_file", "?"), value, record["run_info"].get("start_time") or "")
    if not by_lr:
        return None
    means = {lr: (statistics.mean(v for _, v, _ in runs.values()), len(runs)) for lr, runs in by_lr.items()}
    best = max(means, key=lambda lr: (means[lr][0], means[lr][1], -(lr or 0.0)))
    chosen = by_lr[best]
    values = [v for _, v, _ in chosen.values()]
    return Cell(mean=statistics.mean(values), std=statistics.stdev(values) if len(values) > 1 else None,
                n=len(values), required=len(rule.seeds), lr=best,
                files=sorted(f for f, _, _ in chosen.values()), alternatives=means, duplicates=sorted(duplicates))
