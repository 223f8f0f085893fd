"""The study driver (``scripts/study.py``) on a tiny model: 2 runs write their records and the report, and a
second call skips them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.study import GRID, select_lr
from tests.harness.conftest import write_glue

ROOT = Path(__file__).resolve().parents[1]


def _study(results: Path, glue: Path, *extra: str) -> str:
    command = [sys.executable, "scripts/study.py", "--entries", "taylor_k1", "--lrs", "1e-2", "--seeds", "0,1",
               "--results", str(results), "model=tiny_deberta", f"task.data_dir={glue}", "task.max_train_samples=null",
               "trainer.max_steps=4", "trainer.eval_every_steps=2", "trainer.batch_size=8", "trainer.eval_batch_size=16",
               "trainer.save_adapter=false", "record_to=raw", f"paths.root_dir={results.parent}",
               "model.target_modules=[query_proj,value_proj]", *extra]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_two_runs_write_records_and_report_then_are_skipped(tmp_path: Path) -> None:
    glue = write_glue(tmp_path / "glue")
    results = tmp_path / "results"
    out = _study(results, glue)
    records = sorted((results / "raw").glob("study_sst2_minilm--*.json"))
    assert [p.name for p in records] == ["study_sst2_minilm--quantum_peft_taylor--seed0--taylor_k1--lr0.01.json",
                                         "study_sst2_minilm--quantum_peft_taylor--seed1--taylor_k1--lr0.01.json"]
    for path in records:
        info = json.loads(path.read_text())["train_info"]
        assert info["status"] == "completed" and [m["step"] for m in info["metrics"]] == [2, 4]
    report = (results / "study" / "README.md").read_text()
    assert "| Taylor K' = 1 |" in report and "(n=2)" in report and records[0].name in report
    assert (results / "study" / "acc_vs_steps.png").stat().st_size > 1000
    assert (results / "study" / "acc_vs_params.png").exists()
    assert "run  taylor_k1" in out
    before = [p.stat().st_mtime_ns for p in records]
    again = _study(results, glue)
    assert again.count("skip taylor_k1") == 2 and "run  taylor_k1" not in again
    assert [p.stat().st_mtime_ns for p in records] == before


def test_selection_rule_takes_the_best_first_seed_run_and_the_smaller_rate_on_ties() -> None:
    def record(*accs: float) -> dict:
        return {"train_info": {"metrics": [{"val/acc": a} for a in accs]}}

    assert select_lr({1e-3: record(0.7, 0.8), 2e-3: record(0.85, 0.6), 5e-3: None}) == 2e-3
    assert select_lr({1e-3: record(0.8), 2e-3: record(0.8)}) == 1e-3
    assert select_lr({1e-3: None}) is None


def test_grid_is_the_issue_grid() -> None:
    assert len(GRID) == 12 and "lora" in GRID
    assert "method.train_mappings=false" in GRID["qsd_L1_lambda_only"].overrides
    assert GRID["qsd_L1_small_init"].mapping_options["block_options"]["init_std"] == 0.1
