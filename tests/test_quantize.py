"""Group-wise min–max quantization, STE, adaptive bit loading and storage arithmetic."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qpeft.quantize import (
    adaptive_bits,
    fake_quantize_ste,
    group_ranges,
    num_groups,
    quantize_groups,
    quantize_model_weights_,
    quantized_storage_mib,
    quantized_view,
    storage_bits_per_parameter,
)

VIT_B16_PARAMS = 85_798_656 + 769_000


def groups_of(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    return list(x.reshape(-1).split(size))


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("shape, size", [((1000,), 128), ((7, 13), 16), ((3, 4), 128)])
def test_error_bound_and_grid(bits: int, shape: tuple[int, ...], size: int) -> None:
    """The grid is z + k·s with FP16 z = fp16(min) and s = fp16((max − z)/L); the error is s/2 plus that rounding."""
    x = torch.randn(shape, dtype=torch.float64) * torch.rand(shape, dtype=torch.float64) * 3
    q = quantize_groups(x, bits, size)
    assert q.shape == x.shape and q.dtype == x.dtype
    levels = 2**bits - 1
    for xg, qg in zip(groups_of(x, size), groups_of(q, size)):  # the last group is partial
        zero = xg.min().half().double()
        scale = ((xg.max() - zero) / levels).half().double()
        rounding = levels * scale * 2**-10 + (zero - xg.min()).abs()
        assert (qg - xg).abs().max() <= scale / 2 + rounding + 1e-12
        assert qg.unique().numel() <= 2**bits
        assert qg.min() == zero and (qg.max() - xg.max()).abs() <= scale / 2 + rounding + 1e-12
        steps = (qg - zero) / scale
        assert torch.equal(steps, steps.round()) and steps.max() <= levels


def test_zero_bits_prunes_and_constant_groups_are_exact() -> None:
    x = torch.cat([torch.randn(8), torch.full((8,), 2.5), torch.randn(3)])
    q = quantize_groups(x, torch.tensor([0, 4, 4]), 8)
    assert torch.equal(q[:8], torch.full((8,), x[:8].min().half().item()))  # the group collapses to its FP16 zero
    assert torch.equal(q[8:16], x[8:16])
    with pytest.raises(ValueError, match="bits"):
        quantize_groups(x, torch.tensor([1, 2]), 8)
    with pytest.raises(ValueError, match="bits"):
        quantize_groups(x, 0, 8)
    with pytest.raises(ValueError, match="bits"):
        quantize_groups(x, 9, 8)
    with pytest.raises(ValueError, match="group_size"):
        quantize_groups(x, 4, 0)


def test_ste_value_and_identity_gradient() -> None:
    x = torch.randn(300, requires_grad=True)
    y = fake_quantize_ste(x, 3, 128)
    assert torch.equal(y.detach(), quantize_groups(x, 3, 128))
    upstream = torch.randn(300)
    y.backward(upstream)
    assert torch.equal(x.grad, upstream)


def test_quantized_view() -> None:
    p = nn.Parameter(torch.randn(4, 64))
    assert quantized_view(p, None) is p
    y = quantized_view(p, 2, 32)
    assert torch.equal(y.detach(), quantize_groups(p, 2, 32))
    y.sum().backward()
    assert torch.equal(p.grad, torch.ones_like(p))
    ya = quantized_view(p, 4, 32, gamma=1.0, rule="power")
    assert torch.equal(ya.detach(), quantize_groups(p, adaptive_bits(p, 4, 32, 1.0, "power"), 32))
    yf = fake_quantize_ste(p, 4, 32, gamma=1.0)  # the keyword form qpeft.layers.FakeQuantize uses
    assert torch.equal(yf.detach(), quantize_groups(p, adaptive_bits(p, 4, 32, 1.0), 32))


def heteroscedastic(groups: int = 64, size: int = 32) -> torch.Tensor:
    scales = torch.logspace(-3, 1, groups).repeat_interleave(size)
    return torch.randn(groups * size) * scales


@pytest.mark.parametrize("rule", ("log", "power"))
def test_adaptive_gamma_zero_is_uniform(rule: str) -> None:
    x = heteroscedastic()
    bits = adaptive_bits(x, 3, 32, 0.0, rule)
    assert torch.equal(bits, torch.full((64,), 3))
    assert torch.equal(quantize_groups(x, bits, 32), quantize_groups(x, 3, 32))


@pytest.mark.parametrize("rule", ("log", "power"))
@pytest.mark.parametrize("gamma", (0.3, 1.0, 2.0))
@pytest.mark.parametrize("bits", (2, 3, 4))
def test_adaptive_mean_bits(rule: str, gamma: float, bits: int) -> None:
    x = heteroscedastic()
    alloc = adaptive_bits(x, bits, 32, gamma, rule)
    assert alloc.dtype == torch.long and alloc.min() >= 0 and alloc.max() <= 8
    assert abs(alloc.double().mean().item() - bits) <= 1 / 64 + 1e-9
    ranges = group_ranges(x, 32)
    order = torch.argsort(ranges)
    assert alloc[order[-8:]].double().mean() > alloc[order[:8]].double().mean()


def test_adaptive_constant_group_gets_zero_bits() -> None:
    x = torch.cat([torch.zeros(16), torch.randn(48)])
    alloc = adaptive_bits(x, 3, 16, 1.0)
    assert alloc[0] == 0 and alloc.sum() == 12
    assert torch.equal(quantize_groups(x, alloc, 16)[:16], torch.zeros(16))
    assert torch.equal(adaptive_bits(torch.ones(40), 3, 16, 1.0), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="gamma"):
        adaptive_bits(x, 3, 16, -1.0)
    with pytest.raises(ValueError, match="rule"):
        adaptive_bits(x, 3, 16, 1.0, rule="linear")


def test_storage_arithmetic() -> None:
    assert [storage_bits_per_parameter(b, 128) for b in (8, 4, 3, 2, 1)] == [8.25, 4.25, 3.25, 2.25, 1.25]
    assert VIT_B16_PARAMS == 86_567_656
    assert round(VIT_B16_PARAMS * 4 / 2**20, 2) == 330.23
    assert round(quantized_storage_mib(VIT_B16_PARAMS, 3, 128), 2) == 33.54
    assert round(quantized_storage_mib(VIT_B16_PARAMS, 3, 64), 1) == 36.1
    assert round(quantized_storage_mib(VIT_B16_PARAMS, 3, 256), 1) == 32.2
    assert num_groups(1000, 128) == 8


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 16)
        self.norm = nn.LayerNorm(16)
        self.body = nn.Linear(16, 16)
        self.head = nn.Linear(16, 10)
        self.head.weight = self.embed.weight  # tied, counted once
        self.qpeft_lambda = nn.Parameter(torch.randn(4))


def test_quantize_model_weights() -> None:
    model = Tiny()
    adapter = model.qpeft_lambda.detach().clone()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = quantize_model_weights_(model, 3, 128)
    assert report["num_parameters"] == 160 + 32 + 272 + 10 and report["num_tensors"] == 6
    assert report["bits_per_parameter"] == 3.25
    assert report["fp32_mib"] == report["num_parameters"] * 4 / 2**20
    assert torch.equal(model.qpeft_lambda, adapter)
    for name, p in model.named_parameters():
        if name != "qpeft_lambda":
            assert torch.equal(p.detach(), quantize_groups(before[name], 3, 128))
    linear_only = quantize_model_weights_(Tiny(), 2, 64, include="linear")
    assert linear_only["num_parameters"] == 272 + 160 + 10  # body, head weight (tied) and bias
    custom = quantize_model_weights_(Tiny(), 4, 64, include=lambda name, module: name.endswith("bias"))
    assert custom["num_parameters"] == 16 + 16 + 10
    with pytest.raises(ValueError, match="include"):
        quantize_model_weights_(Tiny(), 3, 128, include="heads")
