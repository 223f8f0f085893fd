"""The 4-bit base as the builder makes it: NF4 layers, fp32 head and norms, frozen, the same weights in train and
eval mode; gradient checkpointing gives the adapters the same gradients in both torch modes; merging a
Quantum-PEFT adapter into the 4-bit base warns and is approximate (its error measured)."""

from __future__ import annotations

import warnings

import pytest
import torch
from hydra import compose, initialize_config_dir

from experiments.kbit import enable_gradient_checkpointing
from experiments.methods import build_method
from experiments.models import build_model
from experiments.tasks import build_task
from qpeft.layers import MERGE_4BIT_WARNING
from tests.harness.conftest import CONF
from tests.tiny_models import randomize_adapters


def _cfg(glue_dir, *extra: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=["+experiment=mistral_glue_sst2", "model=tiny_mistral_4bit", "logger=none",
                                            f"task.data_dir={glue_dir}", *extra])


def _model(glue_dir, method: str = "quantum_peft"):
    cfg = _cfg(glue_dir, f"method={method}")
    task = build_task(cfg.task)
    torch.manual_seed(0)
    model, tokenizer = build_model(cfg.model, task)
    return cfg, task, model, tokenizer


def _batch(tokenizer) -> dict[str, torch.Tensor]:
    enc = tokenizer(["good movie fun", "awful dull long plot scene"], padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": torch.tensor([1, 0])}


def test_4bit_base_layout(make_cfg, glue_dir) -> None:
    import bitsandbytes.functional as bnbF

    _, _, model, tokenizer = _model(glue_dir)
    q = model.model.layers[0].self_attn.q_proj
    assert type(q).__name__ == "Linear4bit" and q.weight.quant_state.quant_type == "nf4"
    assert q.weight.quant_state.nested and q.compute_dtype == torch.bfloat16  # double quantization, bf16 compute
    assert type(model.score).__name__ == "Linear" and model.score.weight.dtype == torch.float32
    assert all(p.dtype in (torch.float32, torch.uint8) and not p.requires_grad for p in model.parameters())
    before = bnbF.dequantize_4bit(q.weight.data, q.weight.quant_state).clone()
    with torch.no_grad():
        model.eval()(**{k: v for k, v in _batch(tokenizer).items() if k != "labels"})
    assert not getattr(q.weight.quant_state, "packing_format_for_cpu", False)
    torch.testing.assert_close(bnbF.dequantize_4bit(q.weight.data, q.weight.quant_state), before, atol=0, rtol=0)


def test_gradient_checkpointing_mode_is_validated(make_cfg, glue_dir) -> None:
    from experiments.validation import validate

    with pytest.raises(ValueError, match=r"trainer.gradient_checkpointing='on' is invalid; allowed: off, reentrant, non_reentrant"):
        validate(_cfg(glue_dir, "trainer.gradient_checkpointing=on"))
    with pytest.raises(ValueError, match="allowed: off, reentrant, non_reentrant"):
        enable_gradient_checkpointing(torch.nn.Linear(2, 2), "on")


def _grads(glue_dir, mode: str, method: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    cfg, _, model, tokenizer = _model(glue_dir, method)
    method = build_method(cfg.method, model, cfg.model, total_steps=10)
    randomize_adapters(method.model)
    enable_gradient_checkpointing(method.model, mode)
    assert method.model.get_base_model().is_gradient_checkpointing == (mode != "off")
    method.model.train()
    loss = method.model(**_batch(tokenizer)).loss
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in method.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", ["quantum_peft", "lora"])
@pytest.mark.parametrize("mode", ["reentrant", "non_reentrant"])
def test_checkpointed_4bit_gradients_equal_plain_ones(mode: str, method: str, glue_dir) -> None:
    """Quantum-PEFT (QSD/Pauli, batched factors) and LoRA on the NF4 base: same loss and adapter/head gradients."""
    loss, grads = _grads(glue_dir, mode, method)
    ref_loss, ref_grads = _grads(glue_dir, "off", method)
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-6)
    prefix = "qpeft_" if method == "quantum_peft" else "lora_"
    assert grads.keys() == ref_grads.keys() and any(prefix in n for n in grads)
    for name, grad in ref_grads.items():
        assert grad is not None and grads[name] is not None, name
        torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_merging_into_the_4bit_base_warns_and_is_approximate(glue_dir) -> None:
    """W + ΔW is re-quantized to NF4: the merged model's logits move by the rounding of that re-quantization."""
    cfg, _, model, tokenizer = _model(glue_dir)
    method = build_method(cfg.method, model, cfg.model, total_steps=10)
    wrapped = randomize_adapters(method.model).eval()
    batch = {k: v for k, v in _batch(tokenizer).items() if k != "labels"}
    with torch.no_grad():
        adapted = wrapped(**batch).logits
        base = wrapped.get_base_model()
        with wrapped.disable_adapter():
            plain = base(**batch).logits
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            merged_model = wrapped.merge_and_unload()
        merged = merged_model(**batch).logits
    messages = [str(w.message) for w in caught if "4-bit" in str(w.message)]
    assert messages == [MERGE_4BIT_WARNING.format(n=8)]  # once for the model's 8 NF4 layers, naming the count
    error = (merged - adapted).norm() / (adapted - plain).norm()
    assert 0 < error < 0.2, f"merge error {error:.3g} of the adapter's effect"  # measured: 0.058
