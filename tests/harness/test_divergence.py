"""A diverging run stops as "diverged": last good checkpoint kept, good record untouched, no NaN written anywhere."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from experiments import run
from experiments.checkpoint import checkpoints, find_checkpoint
from experiments.divergence import Diverged
from experiments.tasks.glue import GlueTask
from tests.harness.test_resume_and_records import qp_overrides


def _strict(text: str) -> dict:
    """Parse strict JSON: a NaN / Infinity token fails."""
    def refuse(token: str) -> None:
        raise AssertionError(f"non-strict JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def _all_finite(tree: object) -> bool:
    if isinstance(tree, torch.Tensor):
        return not tree.is_floating_point() or bool(torch.isfinite(tree).all())
    if isinstance(tree, dict):
        return all(_all_finite(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return all(_all_finite(v) for v in tree)
    return not isinstance(tree, float) or math.isfinite(tree)


def _good_checkpoint(output_dir: str) -> int:
    """The step of the only checkpoint left, after checking it verifies and holds no NaN."""
    (path, meta), = [find_checkpoint(output_dir)]
    assert [p.name for p in checkpoints(output_dir)] == [path.name]
    state = torch.load(path / "state.pt", weights_only=False)
    assert _all_finite(state["adapter"]) and _all_finite(state["optimizer"]) and _all_finite(state["progress"])
    return meta["step"]


def test_lr_1e6_diverges_keeps_last_good_checkpoint_and_completed_record(make_cfg, glue_dir, tmp_path) -> None:
    every = ["trainer.epochs=2", "trainer.eval_every_steps=2"]
    good = make_cfg(qp_overrides(tmp_path, glue_dir, *every))
    run(good)
    record = tmp_path / "results" / "raw" / "glue_sst2--quantum_peft--seed0.json"
    adapter = Path(good.paths.output_dir) / "adapter" / "adapter_model.safetensors"
    before, adapter_before = record.read_text(), adapter.read_bytes()

    bad = make_cfg(qp_overrides(tmp_path, glue_dir, *every, "trainer.lr=1e6", "record_replace=true"))
    with pytest.raises(Diverged, match=r"diverged at step 4: the training loss or gradient norm is not finite"):
        run(bad)
    assert record.read_text() == before and adapter.read_bytes() == adapter_before  # even with record_replace
    text = record.with_suffix(".diverged.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    info = _strict(text)["train_info"]
    assert info["status"] == "diverged" and info["diverged_at_step"] == 4 and info["steps"] == 4
    assert [m["step"] for m in info["metrics"]] == [2] and info["final"] == info["metrics"][0]["val/acc"]
    assert _good_checkpoint(bad.paths.output_dir) == 2  # step 4's NaN state was never written


class _NanGrad(torch.autograd.Function):
    """Identity forward (a finite loss), NaN backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad * float("nan")


@pytest.mark.parametrize("inject, extra, first_bad", [
    ("loss", [], 6),                                 # the loss itself (synced only at the step-8 evaluation)
    ("grad", ["trainer.max_grad_norm=1.0"], 6),      # a finite loss, a non-finite gradient norm
    ("grad", [], 7),                                 # unmeasured gradient: the next loss is NaN
])
def test_first_non_finite_step_is_recorded(inject, extra, first_bad, make_cfg, glue_dir, tmp_path,
                                           monkeypatch) -> None:
    calls = {"n": 0}
    compute_loss = GlueTask.compute_loss

    def poisoned(self, model, batch):
        loss = compute_loss(self, model, batch)
        calls["n"] += 1
        if calls["n"] == 6 and model.training:  # the 6th training micro-batch: optimizer step 6
            return loss * float("nan") if inject == "loss" else _NanGrad.apply(loss)
        return loss

    monkeypatch.setattr(GlueTask, "compute_loss", poisoned)
    cfg = make_cfg(qp_overrides(tmp_path, glue_dir, "trainer.eval_every_steps=4", "trainer.log_every=50", *extra))
    with pytest.raises(Diverged, match=f"diverged at step {first_bad}"):
        run(cfg)
    info = _strict((tmp_path / "results" / "raw" / "glue_sst2--quantum_peft--seed0.json").read_text())["train_info"]
    assert info["status"] == "diverged" and info["diverged_at_step"] == first_bad and info["steps"] == 8
    assert [m["step"] for m in info["metrics"]] == [4]
    assert _good_checkpoint(cfg.paths.output_dir) == 4
