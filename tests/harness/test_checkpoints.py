"""Checkpoints: verified on load with a fallback, leftovers recovered, retention, and resume refuses changed settings."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from experiments import run
from experiments.checkpoint import CheckpointError, checkpoints
from experiments.loop import SimulatedKill
from experiments.resume import ResumeRefused
from tests.harness.test_resume_and_records import qp_overrides

EVERY = "trainer.eval_every_steps=4"  # evaluations (and checkpoints) at steps 4, 8, 12, 16, 18


@pytest.fixture(scope="module")
def uninterrupted(make_cfg, glue_dir, tmp_path_factory) -> dict:
    return run(make_cfg(qp_overrides(tmp_path_factory.mktemp("full"), glue_dir, EVERY)))


@pytest.fixture
def killed_at_8(uninterrupted, make_cfg, glue_dir, tmp_path) -> tuple[dict, Path]:
    """The uninterrupted run's train_info, and the folder of the same run killed after step 8."""
    cfg = make_cfg(qp_overrides(tmp_path / "b", glue_dir, EVERY, "trainer.stop_after_steps=8"))
    with pytest.raises(SimulatedKill):
        run(cfg)
    out = Path(cfg.paths.output_dir)
    assert [p.name for p in checkpoints(out)] == ["step_8", "step_4"]  # keep_checkpoints=2
    return uninterrupted, out


def _resume(make_cfg, glue_dir, out: Path, *extra: str) -> dict:
    return run(make_cfg(qp_overrides(out.parents[4], glue_dir, EVERY, "trainer.resume=true", *extra)))


@pytest.mark.parametrize("keep", [0.0, 0.5])  # empty, truncated to half
def test_damaged_checkpoint_falls_back_to_previous(keep, killed_at_8, make_cfg, glue_dir, caplog) -> None:
    full, out = killed_at_8
    state = out / "checkpoints" / "step_8" / "state.pt"
    data = state.read_bytes()
    state.write_bytes(data[: int(keep * len(data))])
    with caplog.at_level(logging.WARNING, logger="experiments"):
        resumed = _resume(make_cfg, glue_dir, out)
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert f"{state} is damaged" in warned and "falling back to the previous good checkpoint" in warned
    assert resumed["metrics"] == full["metrics"]  # exact from step 4 too


def test_all_checkpoints_damaged_is_refused_naming_the_files(killed_at_8, make_cfg, glue_dir) -> None:
    _, out = killed_at_8
    for path in checkpoints(out):
        (path / "state.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"no usable checkpoint.*step_8/state\.pt is damaged.*step_4/state\.pt"):
        _resume(make_cfg, glue_dir, out)


def test_complete_leftover_tmp_is_recovered(killed_at_8, make_cfg, glue_dir, caplog) -> None:
    full, out = killed_at_8
    root = out / "checkpoints"
    (root / "step_8").rename(root / ".tmp-8")  # died between writing and renaming
    (root / ".tmp-12").mkdir()
    (root / ".tmp-12" / "state.pt").write_bytes(b"partial")  # died while writing
    with caplog.at_level(logging.WARNING, logger="experiments"):
        resumed = _resume(make_cfg, glue_dir, out)
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert f"recovered the checkpoint {root / 'step_8'} from {root / '.tmp-8'}" in warned
    assert f"removing the incomplete checkpoint {root / '.tmp-12'}" in warned
    assert resumed["metrics"] == full["metrics"]
    assert [p.name for p in checkpoints(out)] == ["step_18", "step_16"] and not list(root.glob(".tmp-*"))


@pytest.mark.parametrize("change, field", [
    ("trainer.lr=0.01", r"trainer\.lr \(checkpoint 0\.05, now 0\.01\)"),
    ("method.rank=4", r"method\.rank \(checkpoint 3, now 4\)"),
    ("trainer.epochs=4", r"trainer\.epochs \(checkpoint 3, now 4\)"),
    ("task.max_length=64", r"task\.max_length \(checkpoint 128, now 64\)"),
])
def test_resume_refuses_a_change_that_alters_the_run(change, field, killed_at_8, make_cfg, glue_dir) -> None:
    _, out = killed_at_8
    with pytest.raises(ResumeRefused, match=f"trainer.resume=true: .*step_8 was written with other settings that "
                                            f"alter the run: {field}"):
        _resume(make_cfg, glue_dir, out, change)


def test_resume_accepts_harmless_changes(killed_at_8, make_cfg, glue_dir) -> None:
    full, out = killed_at_8
    resumed = _resume(make_cfg, glue_dir, out, "trainer.log_every=3", "logger.tags=[x]", "trainer.keep_checkpoints=1")
    assert resumed["metrics"] == full["metrics"] and len(checkpoints(out)) == 1


def test_fresh_start_refuses_to_discard_an_unfinished_run(killed_at_8, make_cfg, glue_dir) -> None:
    _, out = killed_at_8
    with pytest.raises(ResumeRefused, match=r"holds an unfinished run \(step 8\); continue it with trainer.resume=true"):
        run(make_cfg(qp_overrides(out.parents[4], glue_dir, EVERY)))
    assert [p.name for p in checkpoints(out)] == ["step_8", "step_4"]
