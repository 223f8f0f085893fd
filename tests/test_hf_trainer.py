"""``transformers.Trainer`` with default arguments trains, evaluates, saves and resumes a qpeft model.

Default ``TrainingArguments`` drop every dataset column the model's ``forward`` does not name and find the
labels the same way; a wrapper with ``forward(*args, **kwargs)`` that Trainer does not recognise as an
adapter gets an empty batch, no ``eval_loss``, whole-model checkpoints and a resume that loads nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import Trainer, TrainingArguments

from qpeft import QPeftConfig, QPeftModel, get_qpeft_model
from tests.tiny_models import tiny_deberta, tiny_gpt2

MODELS = {
    "deberta-cls": (tiny_deberta, dict(target_modules=["query_proj", "value_proj"], rank=2, mapping="taylor",
                                       modules_to_save=["classifier", "pooler"], task_type="SEQ_CLS")),
    "gpt2-lm": (tiny_gpt2, dict(target_modules=["c_attn"], rank=2, mapping="pauli", mapping_v="qsd",
                                fused_modules={"c_attn": [0, 2]}, task_type="CAUSAL_LM")),
}


def _data(kind: str, n: int = 16) -> list[dict]:
    """Token ids, a mask, labels, and a text column the model does not take (Trainer must drop it)."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        ids = torch.randint(1, 97, (8,), generator=g)
        labels = ids.clone() if kind == "gpt2-lm" else i % 3
        rows.append({"input_ids": ids, "attention_mask": torch.ones(8, dtype=torch.long), "labels": labels,
                     "text": f"row {i}"})
    return rows


def _metrics(calls: list) -> object:
    def compute(pred) -> dict[str, float]:
        calls.append(1)
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        return {"acc": float(np.mean(logits.argmax(-1) == pred.label_ids))}
    return compute


def _model(kind: str) -> QPeftModel:
    factory, kwargs = MODELS[kind]
    torch.manual_seed(0)
    return get_qpeft_model(factory(), QPeftConfig(**kwargs))


def _trainer(model: QPeftModel, kind: str, out: Path, calls: list, **overrides: object) -> Trainer:
    options = dict(max_steps=4, save_steps=2, per_device_train_batch_size=4, learning_rate=0.05) | overrides
    args = TrainingArguments(output_dir=str(out), report_to=[], use_cpu=True, **options)
    data = _data(kind)
    return Trainer(model=model, args=args, train_dataset=data, eval_dataset=data[:8], compute_metrics=_metrics(calls))


def _adapter(model: QPeftModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.adapter_state_dict().items()}


@pytest.mark.parametrize("kind", list(MODELS))
def test_default_trainer_trains_evaluates_saves_and_reloads(kind: str, tmp_path: Path) -> None:
    model = _model(kind)
    before = _adapter(model)
    calls: list = []
    trainer = _trainer(model, kind, tmp_path / "run", calls)
    assert trainer.label_names == ["labels"]
    trainer.train()
    after = _adapter(model)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics and "eval_acc" in metrics and calls

    checkpoint = tmp_path / "run" / "checkpoint-2"
    final = tmp_path / "final"
    trainer.save_model(str(final))
    for directory in (checkpoint, final):
        files = {p.name for p in directory.iterdir()}
        assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= files
        assert not files & {"model.safetensors", "pytorch_model.bin"}  # never the frozen base
        assert json.loads((directory / "adapter_config.json").read_text())["peft_type"] == "QPEFT"
    saved = load_file(final / "adapter_model.safetensors")
    assert saved.keys() == after.keys() and all(torch.equal(saved[k], after[k]) for k in saved)
    if kind == "deberta-cls":
        assert "classifier.qpeft_modules_to_save.weight" in saved

    factory, _ = MODELS[kind]
    torch.manual_seed(0)
    reloaded = QPeftModel.from_pretrained(factory(), final)
    batch = trainer.data_collator([{k: v for k, v in row.items() if k != "text"} for row in _data(kind, 4)])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits, atol=0, rtol=0)


def test_resume_from_checkpoint_ends_where_an_uninterrupted_run_ends(tmp_path: Path) -> None:
    kind = "deberta-cls"
    full = _model(kind)
    _trainer(full, kind, tmp_path / "full", []).train()
    resumed = _model(kind)  # a fresh adapter: only the checkpoint can bring it to step 2
    checkpoint = str(tmp_path / "full" / "checkpoint-2")
    _trainer(resumed, kind, tmp_path / "resumed", []).train(resume_from_checkpoint=checkpoint)
    expected, got = _adapter(full), _adapter(resumed)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=1e-5, msg=key)


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_trainer_gradient_checkpointing_matches_plain_training(reentrant: bool, tmp_path: Path) -> None:
    kind = "gpt2-lm"
    results = []
    for checkpointing in (False, True):
        factory, kwargs = MODELS[kind]
        torch.manual_seed(0)
        model = get_qpeft_model(factory(dropout=0.0), QPeftConfig(**kwargs))
        overrides = dict(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": reentrant}) \
            if checkpointing else {}
        _trainer(model, kind, tmp_path / str(checkpointing), [], max_steps=2, **overrides).train()
        results.append(_adapter(model))
    for key in results[0]:
        torch.testing.assert_close(results[1][key], results[0][key], atol=1e-6, rtol=1e-5, msg=key)
