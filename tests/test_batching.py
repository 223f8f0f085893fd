"""Batched factor construction (``qpeft.batching``) equals the per-layer path, value and gradient."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from qpeft import QPeftConfig, QPeftLayer, get_qpeft_model
from qpeft.batching import plan_groups
from qpeft.unitary.lie import TaylorMapping
from tests.tiny_models import tiny_gpt2


class Shapes(nn.Module):
    """Linear layers of several shapes, some repeated, so groups hold one or many mappings."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.a0 = nn.Linear(width, width)
        self.a1 = nn.Linear(width, width)
        self.up = nn.Linear(width, 2 * width)
        self.down = nn.Linear(2 * width, width)
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.a1(torch.tanh(self.a0(x))))
        return self.head(torch.tanh(self.down(torch.tanh(self.up(x)))))


TARGETS = ["a0", "a1", "up", "down"]
CASES = {
    "pauli": (16, dict(mapping="pauli", mapping_options={"layers": 2})),
    "taylor": (24, dict(mapping="taylor", mapping_options={"order": 5})),
    "taylor-intrinsic": (24, dict(mapping="taylor", mapping_options={"intrinsic_rank": 2})),
    "qsd-pauli": (24, dict(mapping="qsd")),
    "qsd-taylor-single": (24, dict(mapping="qsd", mapping_options={"block": "taylor", "angles": "single_angle"})),
    "pad": (24, dict(mapping="pad")),
    "pauli-u-qsd-v": (16, dict(mapping="pauli", mapping_v="qsd")),
    "cayley": (24, dict(mapping="cayley")),
    "householder-fallback": (24, dict(mapping="householder")),
    "taylor-qat": (24, dict(mapping="taylor", quant_bits=4, quant_group_size=8)),
}


def _pair(model: nn.Module, config: QPeftConfig, checkpoint: bool = True) -> tuple[nn.Module, nn.Module]:
    """Two adapted copies with equal parameters: batched and per-layer; λ made nonzero."""
    batched = get_qpeft_model(model, config, checkpoint_factors=checkpoint)
    with torch.no_grad():
        for _, layer in batched.qpeft_layers():
            layer.qpeft_lambda.normal_()
    plain = copy.deepcopy(batched)
    plain.batch_factors = False
    return batched, plain


def _assert_same_step(batched: nn.Module, plain: nn.Module, loss_fn) -> None:
    outs = []
    for model in (batched, plain):
        model.zero_grad(set_to_none=True)
        loss = loss_fn(model)
        loss.backward()
        outs.append(loss.detach())
    torch.testing.assert_close(outs[0], outs[1])
    grads = {n: p.grad for n, p in plain.named_parameters() if p.requires_grad}
    assert any(g is not None for g in grads.values())
    for name, param in batched.named_parameters():
        if param.requires_grad:
            if grads[name] is None:
                assert param.grad is None, name
            else:
                torch.testing.assert_close(param.grad, grads[name], msg=name)
    assert all(layer._precomputed is None for _, layer in batched.qpeft_layers())  # no graph kept


@pytest.mark.parametrize("checkpoint", [True, False], ids=["checkpoint", "keep-activations"])
@pytest.mark.parametrize("name", list(CASES))
def test_batched_equals_per_layer(name: str, checkpoint: bool) -> None:
    width, options = CASES[name]
    torch.manual_seed(0)
    batched, plain = _pair(Shapes(width), QPeftConfig(target_modules=TARGETS, rank=3, **options), checkpoint)
    x = torch.randn(5, width)
    _assert_same_step(batched, plain, lambda m: (m(x) ** 2).sum())
    torch.testing.assert_close(batched(x), plain(x))


def test_groups_share_mapping_and_shape() -> None:
    torch.manual_seed(0)
    model = get_qpeft_model(Shapes(24), QPeftConfig(target_modules=TARGETS, rank=3, mapping="taylor"))
    layers = [layer for _, layer in model.qpeft_layers()]
    groups = plan_groups(layers)
    assert sorted(len(members) for _, members, _ in groups) == [2, 6]  # (24, 3) x6; (48, 3): U of up, V of down


def test_batched_build_calls_each_group_once(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = get_qpeft_model(Shapes(24), QPeftConfig(target_modules=["a0", "a1"], rank=3, mapping="taylor"))
    calls = {"forward": 0, "batched": 0}
    forward, batched = TaylorMapping.forward, TaylorMapping.forward_batched.__func__

    def count_forward(self: TaylorMapping) -> torch.Tensor:
        calls["forward"] += 1
        return forward(self)

    def count_batched(cls: type, mappings: list) -> torch.Tensor:
        calls["batched"] += 1
        return batched(cls, mappings)

    monkeypatch.setattr(TaylorMapping, "forward", count_forward)
    monkeypatch.setattr(TaylorMapping, "forward_batched", classmethod(count_batched))
    model(torch.randn(2, 24)).sum().backward()
    assert calls == {"forward": 0, "batched": 1}  # four (24, 3) factors in one call (default: no rebuild)
    model.base_model._batcher.checkpoint = True
    model(torch.randn(2, 24)).sum().backward()
    assert calls == {"forward": 0, "batched": 3}  # checkpointed: built once more in the backward


def test_eval_cache_is_used_without_grad(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = get_qpeft_model(Shapes(24), QPeftConfig(target_modules=TARGETS, rank=3, mapping="taylor"))
    for _, layer in model.qpeft_layers():
        nn.init.normal_(layer.qpeft_lambda)
    x = torch.randn(4, 24)
    expected = model(x).detach()
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)
        calls = []
        monkeypatch.setattr(TaylorMapping, "forward", lambda self: calls.append(self) or None)
        torch.testing.assert_close(model(x), expected)  # served from the per-layer cache
    assert not calls


def test_fused_gpt2_c_attn_slices() -> None:
    torch.manual_seed(0)
    config = QPeftConfig(
        target_modules=["c_attn", "c_proj"], rank=2, mapping="taylor", mapping_options={"intrinsic_rank": 1},
        fused_modules={"c_attn": [0, 2]},
    )
    batched, plain = _pair(tiny_gpt2().train(), config)
    assert any(len(layer.slices) == 2 for _, layer in batched.qpeft_layers())
    ids = torch.randint(1, 97, (2, 9), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(3)  # dropout masks: same seed for both runs
    state = torch.get_rng_state()

    def loss(model: nn.Module) -> torch.Tensor:
        torch.set_rng_state(state)
        return model(input_ids=ids, labels=ids).loss

    _assert_same_step(batched, plain, loss)


def test_merged_and_disabled_layers_are_skipped() -> None:
    torch.manual_seed(0)
    batched, plain = _pair(Shapes(24), QPeftConfig(target_modules=TARGETS, rank=3, mapping="qsd"))
    for model in (batched, plain):
        model.base_model.a0.merge()
        model.base_model.up.disabled = True
    x = torch.randn(3, 24)
    _assert_same_step(batched, plain, lambda m: m(x).pow(2).sum())
    assert isinstance(batched.base_model.a0, QPeftLayer) and batched.base_model.a0.qpeft_lambda.grad is None
