r"""Packed quantized adapters: the QAT parameters as ``B``-bit integers plus FP16 scale and zero per group.

``QPeftModel.save_pretrained(directory, quantized=True)`` replaces every tensor that QAT fake-quantizes
(the mappings' intrinsic parameters; :class:`qpeft.layers.FakeQuantize`) by its integer codes
(:class:`qpeft.quantize.GroupCodes`); every other adapter tensor (``λ``, trained heads) is written as in the
plain format.  All codes share one bit stream, so the file holds, besides the plain tensors::

    qpeft_packed.codes  uint8   [⌈Σ_t Σ_{g∈t} B_g·|g| / 8⌉]  tensor by tensor, group by group, LSB first
    qpeft_packed.scale  float16 [#groups]
    qpeft_packed.zero   float16 [#groups]
    qpeft_packed.bits   uint8   [⌈#groups / 2⌉]   4-bit width of each group (adaptive bit loading only)
    qpeft_packed.index  uint8   UTF-8 JSON: format version, group size, uniform width, names/shapes/dtypes

That is :math:`B + 32/G` bits per quantized parameter (8.25, 4.25, 3.25, 2.25, 1.25 at G = 128), plus
:math:`4/G` for per-group widths, plus the index and the safetensors header.  A 0-bit group (pruned by
adaptive bit loading) stores no codes, only its zero.  The index is a tensor, not file metadata, so any
loader that hands over the tensors (peft's included) can unpack them.

Loading (:func:`unpack_state`) restores exactly :math:`s\,q + z`, the values the QAT forward used (the
quantizer rounds :math:`s, z` to FP16 in training too).  :func:`freeze_quantization` then swaps each
layer's :class:`~qpeft.layers.FakeQuantize` for :class:`FrozenQuantized`, which passes those values
through unchanged, so the loaded model's outputs are bit-exact; re-saving it writes the same codes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from qpeft.layers import FakeQuantize
from qpeft.quantize import SCALE_DTYPE, GroupCodes, num_groups
from qpeft.state import PEFT_PREFIX, saved_key

PREFIX = "qpeft_packed."
CODES, SCALE, ZERO, BITS, INDEX = (PREFIX + n for n in ("codes", "scale", "zero", "bits", "index"))
FORMAT_VERSION = 1


class FrozenQuantized(FakeQuantize):
    """The quantizer of a loaded packed adapter: passes the restored grid values through unchanged.

    ``codes`` keeps the loaded integers, so saving again writes them as they were (while the values are
    still those codes' values; after a change they are quantized afresh with the same bits and rule).
    """

    def __init__(self, like: FakeQuantize, codes: GroupCodes) -> None:
        super().__init__(like.bits, like.group_size, like.gamma, like.rule)
        self.loaded = codes

    def forward(self, theta: Tensor) -> Tensor:
        return theta

    def codes(self, theta: Tensor) -> GroupCodes:
        loaded = self.loaded
        if loaded.shape == tuple(theta.shape) and torch.equal(loaded.values(theta.dtype), theta.detach().cpu()):
            return loaded
        return super().codes(theta)


def quantizers(model: nn.Module, adapter_name: str, bias: str) -> Iterator[tuple[str, nn.Module, str, FakeQuantize]]:
    """``(saved name, module, parameter name, quantizer)`` of every fake-quantized tensor of ``adapter_name``."""
    for module_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for pname, plist in module.parametrizations.items():
            if isinstance(plist[0], FakeQuantize):
                key = f"{module_name}.parametrizations.{pname}.original"
                saved = saved_key(key, adapter_name, bias)
                if saved is not None:
                    yield saved, module, pname, plist[0]


def element_widths(bits: Tensor, group_size: int, numel: int) -> Tensor:
    """The bit width of each of a tensor's ``numel`` elements (its group's), ``[numel]``."""
    return bits.cpu().repeat_interleave(group_size)[:numel]


def pack_bits(values: Tensor, widths: Tensor) -> Tensor:
    """``uint8`` stream holding ``values[i]`` in ``widths[i]`` bits, least significant bit first."""
    values, widths = values.reshape(-1).long().cpu(), widths.reshape(-1).long().cpu()
    owner = torch.repeat_interleave(torch.arange(values.numel()), widths)  # the element each bit belongs to
    shift = torch.arange(owner.numel()) - (torch.cumsum(widths, 0) - widths)[owner]
    bits = (values[owner] >> shift) & 1
    bits = torch.cat([bits, bits.new_zeros(-bits.numel() % 8)]).view(-1, 8)
    return (bits << torch.arange(8)).sum(1).to(torch.uint8)


def unpack_bits(stream: Tensor, widths: Tensor) -> Tensor:
    """Inverse of :func:`pack_bits`: ``[len(widths)]`` non-negative integers."""
    widths = widths.reshape(-1).long().cpu()
    owner = torch.repeat_interleave(torch.arange(widths.numel()), widths)
    if stream.numel() * 8 < owner.numel():
        raise ValueError(f"packed adapter: {CODES} holds {stream.numel() * 8} bits, the index needs {owner.numel()}")
    shift = torch.arange(owner.numel()) - (torch.cumsum(widths, 0) - widths)[owner]
    bits = ((stream.cpu().long().unsqueeze(1) >> torch.arange(8)) & 1).view(-1)[: owner.numel()]
    return torch.zeros(widths.numel(), dtype=torch.long).index_add_(0, owner, bits << shift)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def pack_state(plain: dict[str, Tensor], packed: dict[str, tuple[GroupCodes, torch.dtype]],
               group_size: int) -> dict[str, Tensor]:
    """The tensors of a packed adapter file: ``plain`` as they are, ``packed`` (saved name -> codes and the
    parameter's dtype) as one bit stream with its scales, zeros, widths and index."""
    clash = sorted(k for k in plain if k.startswith(PREFIX))
    if clash:
        raise ValueError(f"adapter tensor names {clash} use the reserved prefix {PREFIX!r}")
    names = sorted(packed)
    groups = [packed[n][0] for n in names]
    widths = torch.cat([g.bits.cpu() for g in groups]) if groups else torch.zeros(0, dtype=torch.long)
    uniform = int(widths[0]) if widths.numel() and bool((widths == widths[0]).all()) else None
    index = {"format": FORMAT_VERSION, "group_size": group_size, "uniform_bits": uniform,
             "tensors": [[n, list(packed[n][0].shape), _dtype_name(packed[n][1])] for n in names]}
    out = dict(plain)
    out[CODES] = pack_bits(torch.cat([g.codes.cpu().reshape(-1)[: g.numel] for g in groups] or [torch.zeros(0)]),
                           torch.cat([element_widths(g.bits, group_size, g.numel) for g in groups] or [torch.zeros(0)]))
    out[SCALE] = torch.cat([g.scale.cpu() for g in groups] or [torch.zeros(0, dtype=SCALE_DTYPE)])
    out[ZERO] = torch.cat([g.zero.cpu() for g in groups] or [torch.zeros(0, dtype=SCALE_DTYPE)])
    if not (torch.isfinite(out[SCALE]).all() and torch.isfinite(out[ZERO]).all()):
        bad = [n for n, g in zip(names, groups) if not (torch.isfinite(g.scale).all() and torch.isfinite(g.zero).all())]
        raise ValueError(f"cannot pack {bad[:3]}: their values exceed the FP16 range of the scale and zero "
                         f"(|x| > {torch.finfo(SCALE_DTYPE).max:g}) or are not finite")
    if uniform is None:
        out[BITS] = pack_bits(widths, torch.full_like(widths, 4))
    out[INDEX] = torch.frombuffer(bytearray(json.dumps(index, separators=(",", ":")).encode()), dtype=torch.uint8)
    return out


def is_packed(state: dict[str, Any]) -> bool:
    """Whether ``state`` (the tensors of an adapter file) is in the packed format."""
    return any(k.endswith(INDEX) for k in state)


def _read_index(state: dict[str, Tensor], prefix: str) -> dict[str, Any]:
    try:
        index = json.loads(bytes(state[prefix + INDEX].cpu().tolist()).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"packed adapter: {INDEX} is not valid JSON ({err}); the file is damaged") from err
    if index.get("format") != FORMAT_VERSION:
        raise ValueError(f"packed adapter format {index.get('format')!r} is not supported by this qpeft "
                         f"(it reads format {FORMAT_VERSION})")
    return index


def unpack_state(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, GroupCodes]]:
    """``(tensors under their saved names, the codes of the dequantized ones)`` of a packed adapter file.

    Keys may carry a prefix (peft's ``base_model.model.``); the returned names keep it.
    """
    index_key = next(k for k in state if k.endswith(INDEX))
    prefix = index_key.removesuffix(INDEX)
    index = _read_index(state, prefix)
    size, entries = index["group_size"], index["tensors"]
    counts = [num_groups(int(torch.Size(shape).numel()), size) for _, shape, _ in entries]
    total = sum(counts)
    if index["uniform_bits"] is None:
        widths = unpack_bits(state[prefix + BITS], torch.full((total,), 4))
    else:
        widths = torch.full((total,), int(index["uniform_bits"]), dtype=torch.long)
    scale, zero = state[prefix + SCALE].cpu(), state[prefix + ZERO].cpu()
    if scale.numel() != total or zero.numel() != total:
        raise ValueError(f"packed adapter: {total} groups in the index, {scale.numel()} scales and {zero.numel()} zeros")
    numels = [int(torch.Size(shape).numel()) for _, shape, _ in entries]
    per_tensor = list(zip(entries, numels, *(t.split(counts) for t in (widths, scale, zero))))
    element = torch.cat([element_widths(w, size, n) for _, n, w, _, _ in per_tensor]
                        or [torch.zeros(0, dtype=torch.long)])
    flat = unpack_bits(state[prefix + CODES], element).split(numels)
    out = {k: v for k, v in state.items() if not k.startswith(prefix + PREFIX)}
    codes: dict[str, GroupCodes] = {}
    for ((name, shape, dtype), n, w, s, z), values in zip(per_tensor, flat):
        padded = torch.zeros(w.numel() * size, dtype=torch.long)
        padded[:n] = values
        codes[prefix + name] = GroupCodes(padded.view(-1, size), s, z, w, tuple(shape))
        out[prefix + name] = codes[prefix + name].values(getattr(torch, dtype))
    return out, codes


def adapter_codes(model: nn.Module, state: dict[str, Tensor], adapter_name: str,
                  bias: str) -> dict[str, tuple[GroupCodes, torch.dtype]]:
    """Codes of every fake-quantized tensor of ``state`` (saved names), computed by the layer's own quantizer
    on the parameter's device, so they are the codes its forward used."""
    out = {}
    for saved, module, pname, quantizer in quantizers(model, adapter_name, bias):
        if saved in state:
            device = module.parametrizations[pname].original.device
            out[saved] = (quantizer.codes(state[saved].to(device)), state[saved].dtype)
    return out


def freeze_quantization(model: nn.Module, codes: dict[str, GroupCodes], adapter_name: str, bias: str) -> None:
    """Swap the quantizer of every tensor in ``codes`` (saved names) for a :class:`FrozenQuantized`."""
    for saved, module, pname, quantizer in list(quantizers(model, adapter_name, bias)):
        if saved in codes and not isinstance(quantizer, FrozenQuantized):
            module.parametrizations[pname][0] = FrozenQuantized(quantizer, codes[saved])


def unpack_for_load(model: nn.Module, state: dict[str, Tensor], adapter_name: str, bias: str,
                    freeze: bool) -> dict[str, Tensor]:
    """A saved adapter's tensors ready to load: a packed one unpacked (:func:`unpack_state`) and, with ``freeze``
    (inference), its quantizers frozen (:func:`freeze_quantization`); a plain one as it is."""
    if not is_packed(state):
        return state
    state, codes = unpack_state(state)
    if freeze:
        freeze_quantization(model, {k.removeprefix(PEFT_PREFIX): c for k, c in codes.items()}, adapter_name, bias)
    return state
