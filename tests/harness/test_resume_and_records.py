"""Resume after a kill reproduces the uninterrupted run exactly; records are never replaced by worse ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from experiments import run
from experiments.checkpoint import find_checkpoint
from experiments.loop import SimulatedKill

# 48 rows / batch 8 = 6 steps per epoch. Quantum-PEFT with dropout on everywhere (adapter input 0.1, DeBERTa's
# hidden and attention dropout 0.1): a resume that replays other dropout masks changes every later loss.
QP = ["+experiment=glue_sst2", "method=quantum_peft", "model=tiny_deberta", "logger=none", "trainer.batch_size=8",
      "trainer.eval_batch_size=16", "trainer.lr=0.05", "trainer.epochs=3", "method.dropout=0.1", "record_to=raw",
      "trainer.log_every=1"]


def qp_overrides(root: Path, glue: Path, *extra: str) -> list[str]:
    return [*QP, f"paths.root_dir={root}", f"task.data_dir={glue}", *extra]


def _adapter(root: Path) -> dict[str, torch.Tensor]:
    return load_file(next(root.glob("logs/**/adapter/adapter_model.safetensors")))


@pytest.mark.parametrize("eval_every, kill_at, position, accum", [
    ("4", 4, (0, 4), 1),     # mid-epoch: 4 of the epoch's 6 batches consumed
    ("4", 4, (0, 8), 2),     # the same with 2 micro-batches per step
    ("4", 12, (1, 6), 1),    # an in-epoch evaluation at the epoch's last batch
    ("null", 6, (1, 0), 1),  # an end-of-epoch evaluation, after the epoch rolled over
])
def test_resume_is_exact_with_dropout(eval_every, kill_at, position, accum, make_cfg, glue_dir, tmp_path) -> None:
    every = f"trainer.eval_every_steps={eval_every} trainer.grad_accum_steps={accum}".split()
    full = run(make_cfg(qp_overrides(tmp_path / "a", glue_dir, *every)))
    assert full["steps"] == 18 and len(full["metrics"]) == (5 if eval_every == "4" else 3)
    killed = make_cfg(qp_overrides(tmp_path / "b", glue_dir, *every, f"trainer.stop_after_steps={kill_at}"))
    with pytest.raises(SimulatedKill):
        run(killed)
    ckpt, meta = find_checkpoint(killed.paths.output_dir)
    state = torch.load(ckpt / "state.pt", weights_only=False)
    assert (state["progress"]["epoch"], state["progress"]["batches_in_epoch"]) == position
    assert meta["step"] == kill_at and not meta["finished"]
    assert all("qpeft_" in k for k in state["adapter"])  # no frozen base
    resumed = run(make_cfg(qp_overrides(tmp_path / "b", glue_dir, *every, "trainer.resume=true")))
    assert resumed["steps"] == 18
    assert resumed["metrics"] == full["metrics"]  # float equality of every loss, metric and guard value
    assert resumed["best"] == full["best"] and resumed["final"] == full["final"]
    a, b = _adapter(tmp_path / "a"), _adapter(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _lora(root: Path, glue: Path, *extra: str) -> list[str]:
    return ["+experiment=glue_sst2", "method=lora", "model=tiny_deberta", "logger=none", f"paths.root_dir={root}",
            f"task.data_dir={glue}", "trainer.batch_size=8", "trainer.eval_batch_size=16", "trainer.max_steps=1",
            "trainer.eval_every_steps=1", "trainer.max_eval_batches=1", "record_to=raw", *extra]


def _record(root: Path) -> Path:
    return root / "results" / "raw" / "glue_sst2--lora--seed0.json"


def test_failures_keep_completed_record(make_cfg, glue_dir, tmp_path) -> None:
    run(make_cfg(_lora(tmp_path, glue_dir)))
    record = _record(tmp_path)
    before = record.read_text()
    assert json.loads(before)["train_info"]["status"] == "completed"

    with pytest.raises(FileNotFoundError, match="train.tsv"):  # missing data file
        run(make_cfg(_lora(tmp_path, glue_dir, f"task.data_dir={tmp_path / 'nowhere'}", "task.source=local",
                           "record_replace=true")))
    assert record.read_text() == before  # even with record_replace: a failure never replaces a completed run
    failed = json.loads(record.with_suffix(".failed.json").read_text())
    assert failed["train_info"]["status"] == "failed" and "FileNotFoundError" in failed["run_info"]["error"]

    bad = tmp_path / "bad" / "SST-2"
    bad.mkdir(parents=True)
    (bad / "train.tsv").write_text("sentence\tlabel\ngood movie\t1\nbroken row without label\n")
    (bad / "dev.tsv").write_text("sentence\tlabel\nfine\t0\n")
    with pytest.raises(ValueError, match=r"train\.tsv(:|, line )3"):  # malformed row, with its line number
        run(make_cfg(_lora(tmp_path, glue_dir, f"task.data_dir={bad.parent}", "record_replace=true")))
    assert record.read_text() == before

    with pytest.raises(FileExistsError, match=r"glue_sst2--lora--seed0.json already holds a completed run; "
                                              r"record_replace=true replaces it"):
        run(make_cfg(_lora(tmp_path, glue_dir)))  # refused before it starts
    assert record.read_text() == before and record.with_suffix(".failed.json").exists()

    run(make_cfg(_lora(tmp_path, glue_dir, "record_replace=true")))  # replaces it, and the stale failure note
    assert record.read_text() != before and not record.with_suffix(".failed.json").exists()


def test_temporary_records_are_replaced_by_newer_completed_runs(make_cfg, glue_dir, tmp_path) -> None:
    for _ in range(2):
        run(make_cfg(_lora(tmp_path, glue_dir, "record_to=temporary")))
    assert [p.name for p in (tmp_path / "results" / "temporary").iterdir()] == ["glue_sst2--lora--seed0.json"]


def test_record_schema(make_cfg, glue_dir, tmp_path) -> None:
    run(make_cfg(_lora(tmp_path, glue_dir, "trainer.max_steps=2", "trainer.max_eval_batches=null")))
    rec = json.loads(_record(tmp_path).read_text())
    assert {"experiment", "method", "seed", "config", "git", "start_time", "wall_seconds", "error"} <= set(rec["run_info"])
    assert {"sha", "dirty"} <= set(rec["run_info"]["git"])
    info = rec["train_info"]
    for key in ("trainable_params", "total_params", "adapter_bytes", "peak_memory_bytes", "ms_per_step", "best",
                "final", "selection_rule", "status", "metrics"):
        assert info[key] is not None, key
    assert info["diverged_at_step"] is None
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
