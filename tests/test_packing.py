"""Packed quantized adapters (``save_pretrained(quantized=True)``): bit-exact reload, file sizes, adaptive widths."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from qpeft import QPeftConfig, QPeftModel, get_qpeft_model
from qpeft.packing import INDEX, FrozenQuantized, pack_bits, unpack_bits
from qpeft.quantize import adaptive_bits

GROUP = 128
N = 384  # an exp (Lie) factor with K' = 8: 384·8 − 36 = 3,036 Lie parameters, 24 groups (the last one partial)


class TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(N, N), nn.Linear(N, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


def config(bits: int | None, gamma: float = 0.0, rule: str = "log") -> QPeftConfig:
    return QPeftConfig(target_modules=["a"], rank=8, alpha=16.0, mapping="exp",
                       mapping_options={"intrinsic_rank": 8}, modules_to_save=["b"], quant_bits=bits,
                       quant_gamma=gamma, quant_rule=rule)


def base() -> TwoLayers:
    torch.manual_seed(0)
    return TwoLayers()


X = torch.randn(16, N, generator=torch.Generator().manual_seed(3))
Y = torch.randint(0, 2, (16,), generator=torch.Generator().manual_seed(4))


def trained(cfg: QPeftConfig, steps: int = 5) -> QPeftModel:
    """QAT for a few Adam steps, so the intrinsic parameters and λ move off their init; the intrinsic parameters then
    get group ranges that differ by 10x along each tensor, as trained ones do (adaptive bit loading has work)."""
    model = get_qpeft_model(base(), cfg)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(X), Y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".original"):
                param.mul_(torch.logspace(-1, 0, param.numel()).view_as(param))
    return model.eval()


def quantized_numel(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n.endswith(".original"))


def header_bytes(path: Path) -> int:
    with open(path, "rb") as f:
        return 8 + struct.unpack("<Q", f.read(8))[0]


@pytest.mark.parametrize("seed", range(3))
def test_bit_stream_round_trip(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    widths = torch.randint(0, 9, (1000,), generator=g)
    values = (torch.rand(1000, generator=g) * 2.0**widths).long().clamp_max(2**widths - 1)
    stream = pack_bits(values, widths)
    assert stream.dtype == torch.uint8 and stream.numel() == -(-int(widths.sum()) // 8)
    assert torch.equal(unpack_bits(stream, widths), values)


@pytest.mark.parametrize("bits, gamma", [(8, 0.0), (4, 0.0), (3, 0.0), (2, 0.0), (1, 0.0), (2, 1.0), (1, 2.0)])
def test_packed_reload_is_bit_exact(tmp_path: Path, bits: int, gamma: float) -> None:
    model = trained(config(bits, gamma))
    with torch.no_grad():
        expected = model(X)
    model.save_pretrained(tmp_path, quantized=True)
    loaded = QPeftModel.from_pretrained(base(), tmp_path)
    assert any(isinstance(m, FrozenQuantized) for m in loaded.modules())
    with torch.no_grad():
        assert torch.equal(loaded(X), expected)
    # the float format of the same model needs 32 bits per parameter; the packed one B + 32/G
    loaded.save_pretrained(tmp_path / "again", quantized=True)  # a loaded packed adapter re-saves its codes
    assert (tmp_path / "again" / "adapter_model.safetensors").read_bytes() == \
        (tmp_path / "adapter_model.safetensors").read_bytes()


def test_peft_loader_opens_a_packed_adapter_bit_exactly(tmp_path: Path) -> None:
    from peft import PeftModel

    model = trained(config(1, 2.0))
    with torch.no_grad():
        expected = model(X)
    model.save_pretrained(tmp_path, quantized=True)
    loaded = PeftModel.from_pretrained(base(), tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(X), expected)


def test_trainable_load_goes_on_with_qat(tmp_path: Path) -> None:
    model = trained(config(3))
    with torch.no_grad():
        expected = model(X)
    model.save_pretrained(tmp_path, quantized=True)
    loaded = QPeftModel.from_pretrained(base(), tmp_path, is_trainable=True)
    assert not any(isinstance(m, FrozenQuantized) for m in loaded.modules())
    assert all(p.requires_grad for n, p in loaded.named_parameters() if n.endswith(".original"))
    with torch.no_grad():  # uniform bits: quantizing the restored grid values again gives them back
        assert torch.equal(loaded.eval()(X), expected)


@pytest.mark.parametrize("bits", [8, 4, 3, 2, 1])
def test_file_size_is_what_the_bits_say(tmp_path: Path, bits: int) -> None:
    """(B + 32/G)·params/8 bytes for the quantized tensors, within 1%, plus a header that does not grow with B."""
    model = trained(config(bits), steps=1)
    model.save_pretrained(tmp_path, quantized=True)
    path = tmp_path / "adapter_model.safetensors"
    tensors = load_file(path)
    plain = sum(v.numel() * v.element_size() for k, v in tensors.items() if not k.startswith("qpeft_packed."))
    fixed = header_bytes(path) + tensors[INDEX].numel()
    params = quantized_numel(model)
    expected = (bits + 32 / GROUP) * params / 8
    payload = path.stat().st_size - plain - fixed
    assert abs(payload - expected) <= 0.01 * expected, (payload, expected)
    assert fixed < 2048  # the safetensors header and the index: names and shapes, independent of the bits
    model.save_pretrained(tmp_path / "float")  # the plain format keeps 32 bits per parameter
    assert (tmp_path / "float" / "adapter_model.safetensors").stat().st_size > 32 / (bits + 0.25) * 0.9 * payload


@pytest.mark.parametrize("rule", ["log", "power"])
def test_adaptive_widths_are_stored_and_keep_the_average(tmp_path: Path, rule: str) -> None:
    model = trained(config(2, 1.5, rule))
    model.save_pretrained(tmp_path, quantized=True)
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    assert "qpeft_packed.bits" in tensors
    for name, param in model.named_parameters():
        if name.endswith(".original"):
            widths = adaptive_bits(param.detach(), 2, GROUP, 1.5, rule)
            assert widths.unique().numel() > 1  # really adaptive here
            assert abs(widths.float().mean().item() - 2) <= 1 / widths.numel() + 1e-9


def test_gamma_zero_is_the_uniform_file(tmp_path: Path) -> None:
    uniform, adaptive_at_zero = trained(config(3)), trained(config(3, 0.0, "power"))
    uniform.save_pretrained(tmp_path / "u", quantized=True)
    adaptive_at_zero.save_pretrained(tmp_path / "a", quantized=True)
    assert (tmp_path / "u" / "adapter_model.safetensors").read_bytes() == \
        (tmp_path / "a" / "adapter_model.safetensors").read_bytes()


def test_pruned_groups_store_only_their_zero(tmp_path: Path) -> None:
    model = trained(config(1, 2.0), steps=0)
    with torch.no_grad():
        theta = next(p for n, p in model.named_parameters() if n.endswith(".original"))
        theta.normal_(0, 0.1)
        theta[:GROUP] = 0.25  # a constant group: 0 bits, restored exactly
    with torch.no_grad():
        expected = model(X)
    model.save_pretrained(tmp_path, quantized=True)
    loaded = QPeftModel.from_pretrained(base(), tmp_path)
    restored = next(p for n, p in loaded.named_parameters() if n.endswith(".original"))
    assert torch.equal(restored[:GROUP], torch.full((GROUP,), 0.25))
    with torch.no_grad():
        assert torch.equal(loaded(X), expected)


def test_values_beyond_fp16_are_refused_when_packing(tmp_path: Path) -> None:
    model = trained(config(4), steps=0)
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if n.endswith(".original"))[0] = 1e6
    with pytest.raises(ValueError, match="FP16 range"):
        model.save_pretrained(tmp_path, quantized=True)
    assert not (tmp_path / "adapter_model.safetensors").exists()


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="quant_bits"):
        get_qpeft_model(base(), config(None)).save_pretrained(tmp_path, quantized=True)
    model = trained(config(2), steps=0)
    with pytest.raises(ValueError, match="as_lora"):
        model.save_pretrained(tmp_path, quantized=True, as_lora=True)
    with pytest.raises(ValueError, match="quant_rule"):
        config(2, 1.0, "cubic")
    with pytest.raises(ValueError, match="quant_gamma"):
        config(2, -1.0)
    model.save_pretrained(tmp_path, quantized=True)
    path = tmp_path / "adapter_model.safetensors"
    tensors = load_file(path)
    tensors[INDEX] = torch.frombuffer(bytearray(b"{not json"), dtype=torch.uint8)
    save_file(tensors, path)
    with pytest.raises(ValueError, match="damaged"):
        QPeftModel.from_pretrained(base(), tmp_path)
