"""GLUE metrics with sklearn/scipy, the functions HF's ``evaluate.load("glue", task)`` calls.

HF key → our key: ``accuracy`` → ``acc``, ``f1`` → ``f1``, ``matthews_correlation`` → ``mcc``,
``pearson`` → ``pearson``, ``spearmanr`` → ``spearman``. The split prefix (``val/``) is added by the task.

One deliberate difference: a correlation that is undefined because one input is constant (a collapsed
regressor) is reported as 0.0 instead of NaN, the convention sklearn already uses for MCC, so that
best-checkpoint selection never compares against NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

# Which metrics each subtask reports (the first one is the task's default ``optimized_metric``).
SUBTASK_METRICS: dict[str, tuple[str, ...]] = {
    "sst2": ("acc",),
    "rte": ("acc",),
    "qnli": ("acc",),
    "mnli": ("acc",),
    "cola": ("mcc", "acc"),
    "mrpc": ("acc", "f1"),
    "qqp": ("acc", "f1"),
    "stsb": ("pearson", "spearman"),
}


def accuracy(preds: Sequence[int], labels: Sequence[int]) -> float:
    """Fraction of exact matches."""
    return float((np.asarray(preds) == np.asarray(labels)).mean())


def f1(preds: Sequence[int], labels: Sequence[int]) -> float:
    """Binary F1 of the positive class (label 1), as in GLUE MRPC/QQP."""
    return float(f1_score(y_true=np.asarray(labels), y_pred=np.asarray(preds)))


def mcc(preds: Sequence[int], labels: Sequence[int]) -> float:
    """Matthews correlation coefficient (CoLA); 0.0 when undefined."""
    return float(matthews_corrcoef(np.asarray(labels), np.asarray(preds)))


def _finite(value: float) -> float:
    return 0.0 if math.isnan(value) else float(value)


def _constant(x: np.ndarray) -> bool:
    return bool(np.all(x == x[0]))


def pearson(preds: Sequence[float], labels: Sequence[float]) -> float:
    """Pearson correlation (STS-B); 0.0 when an input is constant."""
    p, y = np.asarray(preds, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    return 0.0 if _constant(p) or _constant(y) else _finite(pearsonr(p, y)[0])


def spearman(preds: Sequence[float], labels: Sequence[float]) -> float:
    """Spearman rank correlation (STS-B); 0.0 when an input is constant."""
    p, y = np.asarray(preds, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    return 0.0 if _constant(p) or _constant(y) else _finite(spearmanr(p, y)[0])


_FUNCTIONS = {"acc": accuracy, "f1": f1, "mcc": mcc, "pearson": pearson, "spearman": spearman}


def glue_metrics(subtask: str, preds: Sequence[float], labels: Sequence[float]) -> dict[str, float]:
    """Metrics of ``subtask`` (keys without split prefix, e.g. ``{"acc": .., "f1": ..}``)."""
    if subtask not in SUBTASK_METRICS:
        raise ValueError(f"unknown GLUE subtask {subtask!r}; valid: {sorted(SUBTASK_METRICS)}")
    if len(preds) != len(labels) or len(preds) == 0:
        raise ValueError(
            f"need equally many, and at least one, predictions and labels; got {len(preds)} and {len(labels)}"
        )
    return {name: _FUNCTIONS[name](preds, labels) for name in SUBTASK_METRICS[subtask]}
