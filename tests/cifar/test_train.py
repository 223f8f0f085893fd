"""A tiny ViT with a 3-bit base trains and evaluates on the synthetic CIFAR-10 through ``experiments.run``
(``+experiment=cifar10_vit model=tiny_vit``), for LoRA and Quantum-PEFT; the base stays on its 3-bit grid and
frozen, the head is the 10 selected rows; ``method=original`` evaluates the untouched model."""

from __future__ import annotations

import pytest
import torch

from experiments import run
from experiments.loop import Trainer
from qpeft.quantize import quantize_groups

BASE = ["+experiment=cifar10_vit", "model=tiny_vit", "logger=none", "trainer.batch_size=20", "trainer.epochs=2",
        "trainer.eval_batch_size=40", "record_to=none"]


def _cfg(make_cfg, method: str, cifar_dir, tmp_path, *extra: str):
    return make_cfg([*BASE, f"method={method}", f"task.data_dir={cifar_dir}", f"paths.root_dir={tmp_path}", *extra])


@pytest.mark.parametrize("method", ["lora", "quantum_peft_pad", "quantum_peft_taylor"])
def test_tiny_vit_3bit_trains_and_evaluates(method: str, make_cfg, cifar_dir, tmp_path) -> None:
    info = run(_cfg(make_cfg, method, cifar_dir, tmp_path))
    assert info["status"] == "completed" and info["steps"] == 10
    assert 0 < info["trainable_params"] < 5000 and 0.0 <= info["best"] <= 1.0
    assert all(torch.isfinite(torch.tensor(m["val/loss"])) for m in info["metrics"])


def test_base_is_3bit_frozen_and_the_head_has_10_rows(make_cfg, cifar_dir, tmp_path) -> None:
    trainer = Trainer(_cfg(make_cfg, "lora", cifar_dir, tmp_path))
    trainer.start()
    try:
        trainer.setup()
        model = trainer.method.model
        rows = trainer.task.head_rows
        assert len(set(rows)) == 10
        base = [(n, p) for n, p in model.named_parameters() if "lora_" not in n]
        assert base and not any(p.requires_grad for _, p in base)
        for name, p in base:  # on the 3-bit grid: rounding again changes nothing
            torch.testing.assert_close(quantize_groups(p.detach(), 3, 128), p.detach(), atol=1e-6, rtol=0, msg=name)
        head = next(p for n, p in base if n.endswith("classifier.weight"))
        assert head.shape[0] == 10
    finally:
        trainer.cleanup()


def test_original_row_evaluates_the_untouched_model(make_cfg, cifar_dir, tmp_path) -> None:
    info = run(_cfg(make_cfg, "original", cifar_dir, tmp_path))
    assert info["status"] == "completed" and info["steps"] == 1 and len(info["metrics"]) == 1


@pytest.mark.parametrize(("override", "message"), [
    ("model.base_bits=9", "model.base_bits=9 is invalid; allowed: None, 1, 2, 3, 4, 5, 6, 7, 8"),
    ("model.base_group_size=0", "model.base_group_size=0 is invalid; allowed: an integer >= 1"),
    ("task.image_size=4", "task.image_size=4 is invalid; valid: an integer >= 8"),
])
def test_bad_values_fail_before_anything_is_built(override: str, message: str, make_cfg, cifar_dir, tmp_path) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run(_cfg(make_cfg, "lora", cifar_dir, tmp_path, override))
    assert not (tmp_path / "logs").exists()


def test_killed_run_resumes_exactly_mid_epoch(make_cfg, cifar_dir, tmp_path) -> None:
    """Augmentation seeded by (seed, epoch, index): a run killed at step 3 (mid-epoch) and resumed evaluates
    bit-identically to one that never stopped."""
    from experiments.loop import SimulatedKill

    extra = ("trainer.eval_every_steps=3", "record_to=raw")
    full = run(_cfg(make_cfg, "lora", cifar_dir, tmp_path / "a", *extra))
    with pytest.raises(SimulatedKill):
        run(_cfg(make_cfg, "lora", cifar_dir, tmp_path / "b", *extra, "trainer.stop_after_steps=3"))
    resumed = run(_cfg(make_cfg, "lora", cifar_dir, tmp_path / "b", *extra, "trainer.resume=true"))
    assert resumed["steps"] == full["steps"] == 10 and resumed["metrics"] == full["metrics"]
