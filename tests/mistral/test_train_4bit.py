"""A tiny Mistral with an NF4 base trains on CPU through ``experiments.run`` (Quantum-PEFT and LoRA), its saved
adapter reloads onto a freshly built 4-bit base with equal outputs, and a killed run resumes exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from experiments import run
from experiments.loop import SimulatedKill
from experiments.models import build_model
from experiments.tasks import build_task

# 48 training rows / batch 8 = 6 steps per epoch; 2 epochs; an evaluation (and checkpoint) every 3 steps.
BASE = ["+experiment=mistral_glue_sst2", "model=tiny_mistral_4bit", "logger=none", "trainer.batch_size=8",
        "trainer.eval_batch_size=16", "trainer.epochs=2", "trainer.eval_every_steps=3", "trainer.log_every=1",
        "record_to=raw"]
LR = {"quantum_peft": "trainer.lr=0.05", "lora": "trainer.lr=0.01"}


def _overrides(method: str, root: Path, glue: Path, *extra: str) -> list[str]:
    return [*BASE, f"method={method}", LR[method], f"paths.root_dir={root}", f"task.data_dir={glue}", *extra]


def _adapter_dir(root: Path) -> Path:
    return next(root.glob("logs/**/adapter"))


def _reloaded_logits(method: str, cfg, adapter: Path, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """A fresh 4-bit base (same seed, so the same random weights) with the saved adapter loaded."""
    torch.manual_seed(cfg.seed)
    task = build_task(cfg.task)
    base, _ = build_model(cfg.model, task)
    if method == "quantum_peft":
        from qpeft import QPeftModel

        model = QPeftModel.from_pretrained(base, str(adapter))
    else:
        from peft import PeftModel

        model = PeftModel.from_pretrained(base, str(adapter))
    return model.eval()(**batch).logits


@pytest.mark.parametrize("method", ["quantum_peft", "lora"])
def test_tiny_4bit_mistral_trains_saves_reloads(method: str, make_cfg, glue_dir, tmp_path) -> None:
    cfg = make_cfg(_overrides(method, tmp_path, glue_dir))
    info = run(cfg)
    assert info["status"] == "completed" and info["steps"] == 12
    assert info["trainable_params"] > 0 and info["ms_per_step"] > 0 and info["peak_memory_bytes"] > 0
    losses = [m["val/loss"] for m in info["metrics"]]
    assert all(torch.isfinite(torch.tensor(losses)))
    # the adapter, reloaded onto a freshly quantized base, gives the trained model's outputs
    from experiments.loop import Trainer

    trainer = Trainer(make_cfg(_overrides(method, tmp_path / "ref", glue_dir)))
    trainer.start()
    try:
        trainer.setup()
        batch = next(iter(trainer.eval_dl))
        batch = {k: v for k, v in batch.items() if k != "labels"}
        adapter = _adapter_dir(tmp_path)
        from safetensors.torch import load_file

        state = load_file(str(adapter / "adapter_model.safetensors"))
        assert any("score" in k for k in state)  # the trained head travels with the adapter
        trained = _reloaded_logits(method, cfg, adapter, batch)
        again = _reloaded_logits(method, cfg, adapter, batch)
        fresh = trainer.model.eval()(**batch).logits  # the untrained adapter on the same base
    finally:
        trainer.cleanup()
    torch.testing.assert_close(trained, again, atol=0, rtol=0)
    assert not torch.allclose(trained, fresh)


@pytest.mark.parametrize("method", ["quantum_peft", "lora"])
def test_tiny_4bit_mistral_resumes_exactly(method: str, make_cfg, glue_dir, tmp_path) -> None:
    full = run(make_cfg(_overrides(method, tmp_path / "a", glue_dir)))
    with pytest.raises(SimulatedKill):
        run(make_cfg(_overrides(method, tmp_path / "b", glue_dir, "trainer.stop_after_steps=3")))
    resumed = run(make_cfg(_overrides(method, tmp_path / "b", glue_dir, "trainer.resume=true")))
    assert resumed["steps"] == full["steps"] == 12
    assert resumed["metrics"] == full["metrics"]  # float equality of every evaluation
    assert resumed["best"] == full["best"] and resumed["final"] == full["final"]


def test_adalora_steps_on_the_4bit_base(make_cfg, glue_dir, tmp_path) -> None:
    """AdaLoRA (peft's SVDLinear4bit) on the NF4 base, rank allocator included, with checkpointing on."""
    cfg = make_cfg([*BASE, "method=adalora", "trainer.lr=0.01", "trainer.epochs=1", "trainer.eval_every_steps=null",
                    "trainer.gradient_checkpointing=non_reentrant", f"paths.root_dir={tmp_path}",
                    f"task.data_dir={glue_dir}"])
    info = run(cfg)
    assert info["status"] == "completed" and info["steps"] == 6 and info["trainable_params"] > 0
