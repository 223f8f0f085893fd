"""Loaders on every shipped TSV, and the clear errors for missing data, malformed rows and offline Hub."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from experiments.tasks import build_task
from experiments.tasks.glue import GlueTask
from tests.glue.conftest import task_cfg

# subtask: (train rows, dev rows, train label counts, dev label counts); official GLUE numbers
EXPECTED = {
    "sst2": (67_349, 872, {0: 29_780, 1: 37_569}, {0: 428, 1: 444}),
    "mrpc": (3_668, 408, {0: 1_194, 1: 2_474}, {0: 129, 1: 279}),
    "rte": (2_490, 277, {0: 1_249, 1: 1_241}, {0: 146, 1: 131}),
    "stsb": (5_749, 1_500, None, None),
}


@pytest.mark.parametrize("subtask", sorted(EXPECTED))
def test_shipped_files_rows_and_labels(subtask: str) -> None:
    splits = build_task(task_cfg(subtask)).load_splits()
    n_train, n_dev, train_counts, dev_counts = EXPECTED[subtask]
    assert (len(splits["train"]), len(splits["val"])) == (n_train, n_dev)
    if train_counts is None:  # STS-B: float scores in [0, 5], two texts
        scores = [y for _, y in splits["train"] + splits["val"]]
        assert min(scores) == 0.0 and max(scores) == 5.0
    else:
        assert Counter(y for _, y in splits["train"]) == train_counts
        assert Counter(y for _, y in splits["val"]) == dev_counts
    n_texts = 1 if subtask == "sst2" else 2
    assert all(len(texts) == n_texts and all(texts) for texts, _ in splits["train"][:100])


def test_mrpc_bom_and_quotes_survive() -> None:
    texts, label = build_task(task_cfg("mrpc")).load_splits()["train"][0]
    assert texts[0].startswith("Amrozi accused his brother") and '"the witness"' in texts[0] and label == 1


def test_limits_take_first_rows() -> None:
    splits = build_task(task_cfg("rte", max_train_samples=10, max_eval_samples=5)).load_splits()
    full = build_task(task_cfg("rte")).load_splits()
    assert splits["train"] == full["train"][:10] and len(splits["val"]) == 5


@pytest.mark.parametrize("source", ["local", "auto"])
def test_missing_cola_is_a_clear_error(source: str) -> None:
    """auto tries the Hub first, which fails offline; both name the expected local path."""
    with pytest.raises(FileNotFoundError, match=r"data/glue/CoLA.*gluebenchmark"):
        build_task(task_cfg("cola", source=source)).load_splits()


def test_raw_glue_cola_layout_without_header(tmp_path: Path) -> None:
    (tmp_path / "CoLA").mkdir()
    rows = "gj04\t1\t\tOur friends won't buy this analysis.\ngj04\t0\t*\tThey drank the pub.\n"
    for name in ("train.tsv", "dev.tsv"):
        (tmp_path / "CoLA" / name).write_text(rows)
    splits = build_task(task_cfg("cola", data_dir=str(tmp_path))).load_splits()
    assert splits["train"] == [(("Our friends won't buy this analysis.",), 1), (("They drank the pub.",), 0)]


def test_raw_glue_rte_string_labels(tmp_path: Path) -> None:
    (tmp_path / "RTE").mkdir()
    text = "index\tsentence1\tsentence2\tlabel\n0\tA b.\tA.\tentailment\n1\tC d.\tE.\tnot_entailment\n"
    for name in ("train.tsv", "dev.tsv"):
        (tmp_path / "RTE" / name).write_text(text)
    assert [y for _, y in build_task(task_cfg("rte", data_dir=str(tmp_path))).load_splits()["val"]] == [0, 1]


@pytest.mark.parametrize(
    ("body", "problem"),
    [("sentence\tlabel\ngood\t1\nbad movie\n", r"line 3: expected 2 tab-separated fields, found 1"),
     ("sentence\tlabel\ngood\t1\nbad\tpositive\n", r"line 3: label 'positive' is not one of \[0, 1\]"),
     ("text\tlabel\ngood\t1\n", r"lacks column\(s\) \['sentence'\]")],
)
def test_malformed_row_names_file_and_line(tmp_path: Path, body: str, problem: str) -> None:
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "train.tsv").write_text(body)
    (tmp_path / "SST-2" / "dev.tsv").write_text("sentence\tlabel\nok\t0\n")
    with pytest.raises(ValueError, match=r"SST-2/train\.tsv, .*" + problem):
        build_task(task_cfg("sst2", data_dir=str(tmp_path))).load_splits()


def test_hub_offline_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match=r"nyu-mll/glue/rte.*task.source=local"):
        build_task(task_cfg("rte", source="hub")).load_splits()


def test_auto_prefers_local() -> None:
    assert len(build_task(task_cfg("rte", source="auto")).load_splits()["val"]) == 277


def test_bad_family_subtask_and_source() -> None:
    with pytest.raises(ValueError, match=r"valid families: \['glue', 'e2e', 'cifar'\]"):
        build_task(task_cfg("rte", family="e2e_nope"))
    with pytest.raises(ValueError, match="valid:.*'sst2'"):
        GlueTask(task_cfg("sst3"))
    with pytest.raises(ValueError, match="task.source"):
        GlueTask(task_cfg("rte", source="ftp"))


@pytest.mark.parametrize(
    ("subtask", "metric", "head"),
    [("sst2", "val/acc", {"num_labels": 2, "problem_type": "single_label_classification"}),
     ("cola", "val/mcc", {"num_labels": 2, "problem_type": "single_label_classification"}),
     ("mrpc", "val/acc", {"num_labels": 2, "problem_type": "single_label_classification"}),
     ("mnli", "val/acc", {"num_labels": 3, "problem_type": "single_label_classification"}),
     ("stsb", "val/pearson", {"num_labels": 1, "problem_type": "regression"})],
)
def test_head_and_optimized_metric(subtask: str, metric: str, head: dict) -> None:
    task = GlueTask(task_cfg(subtask))
    assert task.optimized_metric == metric and task.model_head == head and task.greater_is_better
    assert GlueTask(task_cfg(subtask, optimized_metric="val/loss")).greater_is_better is False
