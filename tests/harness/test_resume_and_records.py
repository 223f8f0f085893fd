"""Resume after a kill reproduces the uninterrupted run; errors are clear and never clobber records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from experiments import run
from experiments.checkpoint import find_checkpoint
from experiments.loop import SimulatedKill


def _overrides(root: Path, glue: Path, *extra: str) -> list[str]:
    return ["+experiment=glue_sst2", "method=lora", "model=tiny_deberta", "logger=none", f"paths.root_dir={root}",
            f"task.data_dir={glue}", "trainer.epochs=2", "trainer.batch_size=8", "trainer.eval_batch_size=16",
            "trainer.eval_every_steps=4", "trainer.warmup_steps=2", "record_to=raw", *extra]


def _metrics(info: dict) -> list[float]:
    return [m["val/loss"] for m in info["metrics"]]


def test_resume_reproduces_uninterrupted_run(make_cfg, glue_dir, tmp_path) -> None:
    """48 rows / batch 8 = 6 steps per epoch; killed at step 4 (mid-epoch), resumed, same metrics."""
    full = run(make_cfg(_overrides(tmp_path / "a", glue_dir)))
    assert full["steps"] == 12 and [m["step"] for m in full["metrics"]] == [4, 8, 12]
    killed = make_cfg(_overrides(tmp_path / "b", glue_dir, "trainer.stop_after_steps=4"))
    with pytest.raises(SimulatedKill):
        run(killed)
    ckpt = find_checkpoint(killed.paths.output_dir)
    state = torch.load(ckpt / "state.pt", weights_only=False)
    assert state["progress"]["global_step"] == 4 and state["progress"]["batches_in_epoch"] == 4
    assert all("lora_" in k or "classifier" in k or "pooler" in k for k in state["adapter"])  # no frozen base
    resumed = run(make_cfg(_overrides(tmp_path / "b", glue_dir, "trainer.resume=true")))
    assert resumed["steps"] == 12
    torch.testing.assert_close(_metrics(resumed), _metrics(full), rtol=1e-5, atol=1e-6)
    assert resumed["best"] == pytest.approx(full["best"])


def _record(root: Path) -> Path:
    return root / "results" / "raw" / "glue_sst2--lora--seed0.json"


def test_failures_keep_completed_record(make_cfg, glue_dir, tmp_path) -> None:
    base = ["trainer.max_steps=1", "trainer.eval_every_steps=1", "trainer.max_eval_batches=1"]
    run(make_cfg(_overrides(tmp_path, glue_dir, *base)))
    record = _record(tmp_path)
    before = record.read_text()
    assert json.loads(before)["train_info"]["status"] == "completed"

    with pytest.raises(FileNotFoundError, match="train.tsv"):  # missing data file
        run(make_cfg(_overrides(tmp_path, glue_dir, *base, f"task.data_dir={tmp_path / 'nowhere'}",
                                "task.source=local")))
    assert record.read_text() == before
    failed = json.loads(record.with_suffix(".failed.json").read_text())
    assert failed["train_info"]["status"] == "failed" and "FileNotFoundError" in failed["run_info"]["error"]

    bad = tmp_path / "bad" / "SST-2"
    bad.mkdir(parents=True)
    (bad / "train.tsv").write_text("sentence\tlabel\ngood movie\t1\nbroken row without label\n")
    (bad / "dev.tsv").write_text("sentence\tlabel\nfine\t0\n")
    with pytest.raises(ValueError, match=r"train\.tsv(:|, line )3"):  # malformed row, with its line number
        run(make_cfg(_overrides(tmp_path, glue_dir, *base, f"task.data_dir={bad.parent}")))
    assert record.read_text() == before

    run(make_cfg(_overrides(tmp_path, glue_dir, *base)))  # a later success replaces the failure note
    assert not record.with_suffix(".failed.json").exists()


def test_record_schema(make_cfg, glue_dir, tmp_path) -> None:
    run(make_cfg(_overrides(tmp_path, glue_dir, "trainer.max_steps=2", "trainer.eval_every_steps=1")))
    rec = json.loads(_record(tmp_path).read_text())
    assert {"experiment", "method", "seed", "config", "git", "start_time", "wall_seconds", "error"} <= set(rec["run_info"])
    assert {"sha", "dirty"} <= set(rec["run_info"]["git"])
    info = rec["train_info"]
    for key in ("trainable_params", "total_params", "adapter_bytes", "peak_memory_bytes", "ms_per_step", "best",
                "final", "selection_rule", "status", "metrics"):
        assert info[key] is not None, key
    assert [m["step"] for m in info["metrics"]] == [1, 2] and "val/acc_best" in info["metrics"][-1]
    assert {"torch", "transformers", "peft", "bitsandbytes", "accelerate", "cuda", "gpu"} <= set(rec["meta_info"])
    assert rec["run_info"]["config"]["trainer"]["lr"] == 8e-4  # resolved, not an interpolation


def test_records_do_not_make_the_tree_dirty(tmp_path) -> None:
    """A run's own record (under results/) must not send the next run of the commit to temporary/."""
    import subprocess

    from experiments.records import git_info

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "results" / "raw").mkdir(parents=True)
    (tmp_path / "results" / "raw" / "a.json").write_text("{}\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "init")
    assert git_info(tmp_path)["dirty"] is False
    (tmp_path / "results" / "raw" / "a.json").write_text('{"new": 1}\n')
    assert git_info(tmp_path)["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_info(tmp_path)["dirty"] is True
