"""Activation checkpointing of the base model: gradients equal those without it, in both torch modes.

The batched factors are built once per forward, outside the checkpointed blocks.  A non-reentrant
recomputation must see those very tensors (a layer rebuilding its own raises ``CheckpointError``:
different saved tensors); a reentrant one must rebuild them (its inner backward cannot run through
the batched build twice).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qpeft import QPeftConfig, get_qpeft_model
from tests.tiny_models import randomize_adapters, tiny_deberta, tiny_gpt2

CASES = {
    "gpt2-fused-taylor": (tiny_gpt2, dict(target_modules=["c_attn", "c_fc"], rank=2, mapping="taylor",
                                          mapping_options={"intrinsic_rank": 1}, fused_modules={"c_attn": [0, 2]})),
    "deberta-qsd": (tiny_deberta, dict(target_modules=["query_proj", "value_proj", "dense"], rank=3, mapping="qsd",
                                       modules_to_save=["classifier"])),
}
MODES = {"none": None, "non-reentrant": False, "reentrant": True}


def _loss_and_grads(case: str, mode: str, batch_factors: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    factory, kwargs = CASES[case]
    torch.manual_seed(0)
    model = randomize_adapters(get_qpeft_model(factory(dropout=0.0), QPeftConfig(**kwargs),
                                               batch_factors=batch_factors)).train()
    if MODES[mode] is not None:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": MODES[mode]})
        assert model.get_base_model().is_gradient_checkpointing
    ids = torch.randint(1, 97, (2, 9), generator=torch.Generator().manual_seed(1))
    labels = ids if case.startswith("gpt2") else torch.tensor([0, 2])
    loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    assert all(layer._precomputed is None for _, layer in model.qpeft_layers())  # nothing kept after the backward
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("batch_factors", [True, False], ids=["batched", "per-layer"])
@pytest.mark.parametrize("mode", ["non-reentrant", "reentrant"])
@pytest.mark.parametrize("case", list(CASES))
def test_checkpointed_gradients_equal_plain_ones(case: str, mode: str, batch_factors: bool) -> None:
    loss, grads = _loss_and_grads(case, mode, batch_factors)
    ref_loss, ref_grads = _loss_and_grads(case, "none", batch_factors)
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-6)
    assert grads.keys() == ref_grads.keys()
    assert all(g is not None and g.abs().sum() > 0 for n, g in ref_grads.items() if "qpeft_adapters" in n)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_factors_are_off_the_layers_between_forward_and_backward() -> None:
    """Outside its forward and backward a layer never sees a pass's factors (no stale values for merge etc.)."""
    torch.manual_seed(0)
    model = randomize_adapters(get_qpeft_model(nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2)),
                                               QPeftConfig(target_modules=["0", "2"], rank=2, mapping="taylor")))
    out = model(torch.randn(3, 8))
    assert all(layer._precomputed is None for _, layer in model.qpeft_layers())
    out.sum().backward()
    assert all(layer._precomputed is None for _, layer in model.qpeft_layers())
