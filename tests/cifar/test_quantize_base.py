"""The k-bit base (method.md §10): the quantizer's error bound per bit width, every parameter rounded (head
included), and the storage arithmetic 330.23 MiB -> 33.54 MiB of ViT-B/16 from its config alone."""

from __future__ import annotations

import pytest
import torch
from transformers import ViTConfig, ViTForImageClassification

from experiments.base_quant import quantize_base_, storage_report
from qpeft.quantize import quantize_groups

TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32,
            patch_size=8, num_labels=1000)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_error_bound_per_group(bits: int) -> None:
    torch.manual_seed(bits)
    w = torch.randn(1000, 77) * torch.rand(1000, 1)  # groups with very different ranges
    q = quantize_groups(w, bits, 128)
    flat, fq = w.reshape(-1), q.reshape(-1)
    for start in range(0, flat.numel(), 128):
        g, gq = flat[start:start + 128], fq[start:start + 128]
        levels = 2**bits - 1
        # scale and zero are FP16 (in QAT and on disk): z16 = fp16(min), s16 = fp16((max - z16) / L)
        z16 = g.min().half().float()
        s16 = ((g.max() - z16) / levels).half().float()
        assert gq.unique().numel() <= 2**bits  # at most 2^B levels per group
        steps = (gq - z16) / s16
        assert torch.allclose(steps, steps.round(), atol=1e-3) and gq.min() == z16
        # at most |z - z16| + L|s - s16| more than s/2 (the top level's clip)
        step = (g.max() - z16) / levels
        bound = s16 / 2 + (g.min() - z16).abs() + levels * (step - s16).abs()
        assert (g - gq).abs().max() <= bound * (1 + 1e-5) + 1e-7


def test_every_parameter_of_the_base_is_rounded_head_included() -> None:
    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(**TINY))
    report = quantize_base_(model, 3, 128)
    assert report["num_parameters"] == sum(p.numel() for p in model.parameters())
    for name, p in model.named_parameters():
        again = quantize_groups(p.detach(), 3, 128)
        torch.testing.assert_close(again, p.detach(), atol=1e-6, rtol=0, msg=name)  # already on the grid
    assert model.classifier.weight.reshape(-1)[:128].unique().numel() <= 8


def test_bad_base_bits_fail_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"model.base_bits=0 is invalid; valid: null or an integer 1..8"):
        quantize_base_(torch.nn.Linear(2, 2), 0)


def test_vit_b16_storage_from_its_config() -> None:
    report = storage_report(ViTConfig(num_labels=1000), bits=3, group_size=128)
    assert report["num_parameters"] == 86_567_656
    assert f"{report['fp32_mib']:.2f}" == "330.23" and f"{report['quantized_mib']:.2f}" == "33.54"
    assert f"{storage_report(ViTConfig(num_labels=1000), 3, 64)['quantized_mib']:.1f}" == "36.1"
    assert f"{storage_report(ViTConfig(num_labels=1000), 3, 256)['quantized_mib']:.1f}" == "32.2"
