"""GLUE metrics against hand-computed values and against the definitions HF's glue metric uses."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

from experiments.metrics.glue import accuracy, f1, glue_metrics, mcc, pearson, spearman

PREDS = [1, 1, 0, 1, 0, 0, 1, 1]
LABELS = [1, 0, 0, 1, 1, 0, 1, 1]  # TP=4, FP=1, FN=1, TN=2


def test_hand_computed_classification() -> None:
    assert accuracy(PREDS, LABELS) == pytest.approx(6 / 8)
    assert f1(PREDS, LABELS) == pytest.approx(2 * 4 / (2 * 4 + 1 + 1))  # 2TP / (2TP + FP + FN) = 0.8
    expected_mcc = (4 * 2 - 1 * 1) / math.sqrt((4 + 1) * (4 + 1) * (2 + 1) * (2 + 1))  # = 7/15
    assert mcc(PREDS, LABELS) == pytest.approx(expected_mcc)


def test_hand_computed_correlations() -> None:
    x, y = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 9.0]
    dx, dy = np.array(x) - 2.5, np.array(y) - 5.25
    assert pearson(x, y) == pytest.approx(float(dx @ dy / math.sqrt((dx @ dx) * (dy @ dy))))
    assert spearman(x, y) == pytest.approx(1.0)  # monotone
    assert spearman([1.0, 2.0, 3.0], [3.0, 1.0, 2.0]) == pytest.approx(-0.5)  # 1 - 6*6/(3*8)


def test_equals_hf_glue_definitions() -> None:
    """HF glue.py: accuracy=(p==y).mean(), f1=f1_score(y, p), matthews_corrcoef(y, p), pearsonr/spearmanr(p, y)."""
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    assert glue_metrics("mrpc", p.tolist(), y.tolist()) == pytest.approx(
        {"acc": float((p == y).mean()), "f1": float(f1_score(y_true=y, y_pred=p))})
    assert glue_metrics("cola", p.tolist(), y.tolist())["mcc"] == pytest.approx(float(matthews_corrcoef(y, p)))
    s, t = rng.random(100) * 5, rng.random(100) * 5
    assert glue_metrics("stsb", s.tolist(), t.tolist()) == pytest.approx(
        {"pearson": float(pearsonr(s, t)[0]), "spearman": float(spearmanr(s, t)[0])})


def test_keys_per_subtask_and_degenerate_inputs() -> None:
    assert set(glue_metrics("sst2", [0, 1], [0, 1])) == {"acc"}
    assert set(glue_metrics("qqp", [0, 1], [0, 1])) == {"acc", "f1"}
    assert glue_metrics("stsb", [2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == {"pearson": 0.0, "spearman": 0.0}
    assert mcc([1, 1, 1], [0, 1, 1]) == 0.0
    with pytest.raises(ValueError, match="valid"):
        glue_metrics("wnli9", [0], [0])
    with pytest.raises(ValueError, match="equally many"):
        glue_metrics("sst2", [0, 1], [0])
