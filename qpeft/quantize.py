r"""Group-wise min–max quantization: QAT of adapter parameters (method.md §9) and k-bit bases (§10).

Per contiguous group :math:`g` of :math:`G` elements of the flattened tensor (the last group may be
shorter) and :math:`B` bits:

.. math::
    s = \frac{\max_g\theta - \min_g\theta}{2^B - 1},\quad z = \min_g\theta,\quad
    Q(\theta) = s\,\mathrm{clip}\bigl(\mathrm{round}((\theta - z)/s),\,0,\,2^B - 1\bigr) + z,

so :math:`|Q(\theta) - \theta| \le s/2`.  :math:`s` and :math:`z` are rounded to FP16 *before* they are
used, in training as on disk: the values a QAT model trains with are exactly those a packed adapter
(:mod:`qpeft.packing`) restores, and :math:`|Q(\theta) - \theta|` exceeds :math:`s/2` only by that
rounding (relative :math:`2^{-11}`).  :math:`B = 0` collapses the group to :math:`z` (structural
pruning).  QAT uses the straight-through estimator
:math:`\hat\theta = \theta + \mathrm{sg}(Q(\theta) - \theta)`.  Storage is
:math:`B + 2\cdot16/G` bits per parameter with FP16 :math:`s, z` (8.25, 4.25, … at G = 128).

Adaptive bit loading (A.5) with group ranges :math:`r_g` and exponent :math:`\gamma \ge 0`:

* ``"log"`` (primary): :math:`B_g = \max\bigl(0, B + \gamma\log_2(r_g/\bar r)\bigr)`;
* ``"power"``: :math:`B_g = B\,(r_g/\bar r)^\gamma`;

both capped at 8 bits.  :math:`\bar r` is found by bisection so that the mean of the (capped,
unrounded) :math:`B_g` is :math:`B`, and the rounding to integers uses the largest-remainder rule,
so :math:`\sum_g B_g` equals that budget to within one bit and the mean is :math:`B` up to
:math:`1/\#g`.  :math:`\gamma = 0` gives :math:`B_g = B`; a constant group (:math:`r_g = 0`) gets 0
bits, which is lossless for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from qpeft.unitary.base import check_int

MAX_BITS = 8
ADAPTIVE_RULES = ("log", "power")
INCLUDE_CHOICES = ("all", "linear")
#: dtype of the per-group scale and zero, in QAT and on disk (the paper's "FP16 for scale and zero values")
SCALE_DTYPE = torch.float16
_BISECTION_STEPS = 80


def num_groups(numel: int, group_size: int) -> int:
    """Number of groups of a tensor with ``numel`` elements (the last one may be partial)."""
    return -(-numel // check_int("group_size", group_size, 1))


def _grouped(x: Tensor, group_size: int) -> Tensor:
    """``[num_groups, G]`` view of the flattened ``x``, the last group padded with its last element."""
    flat = x.reshape(-1)
    pad = num_groups(flat.numel(), group_size) * group_size - flat.numel()
    if pad:
        flat = torch.cat([flat, flat[-1:].expand(pad)])
    return flat.view(-1, group_size)


def group_ranges(x: Tensor, group_size: int) -> Tensor:
    """:math:`r_g = \\max_g - \\min_g` per group, shape ``[num_groups]``."""
    g = _grouped(x, group_size)
    return g.amax(-1) - g.amin(-1)


@dataclass(frozen=True)
class GroupCodes:
    """The integer form of a quantized tensor: what a packed adapter stores.

    ``codes[g, i]`` in ``0 .. 2^bits[g] - 1`` (``[num_groups, G]``, the last group padded), FP16 ``scale``
    and ``zero`` per group; :meth:`values` is :math:`Q(\\theta)`.
    """

    codes: Tensor  # [num_groups, G] torch.long
    scale: Tensor  # [num_groups] SCALE_DTYPE
    zero: Tensor  # [num_groups] SCALE_DTYPE
    bits: Tensor  # [num_groups] torch.long, 0..8
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def values(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """:math:`s\\,q + z` in ``dtype`` (the arithmetic QAT's forward uses, so the values are bit-exact)."""
        q = self.codes.to(dtype) * self.scale.to(dtype).unsqueeze(-1) + self.zero.to(dtype).unsqueeze(-1)
        return q.reshape(-1)[: self.numel].view(self.shape)


def _group_bits(num: int, bits: int | Tensor, device: torch.device) -> Tensor:
    if isinstance(bits, Tensor):
        if bits.shape != (num,) or bits.min() < 0 or bits.max() > MAX_BITS:
            raise ValueError(f"bits must have shape ({num},) and values in 0..{MAX_BITS}, got {tuple(bits.shape)}")
        return bits.to(device=device, dtype=torch.long)
    return torch.full((num,), check_int("bits", bits, 1, MAX_BITS), dtype=torch.long, device=device)


def quantize_codes(x: Tensor, bits: int | Tensor, group_size: int) -> GroupCodes:
    """:class:`GroupCodes` of ``x`` (no gradient): :math:`z = \\mathrm{fp16}(\\min_g)`,
    :math:`s = \\mathrm{fp16}((\\max_g - z)/(2^{B_g} - 1))`, :math:`q = \\mathrm{clip}(\\mathrm{round}((\\theta - z)/s), 0, 2^{B_g} - 1)`.

    :param bits: an integer 1..8 for every group, or a ``[num_groups]`` integer tensor with
        values 0..8 (e.g. from :func:`adaptive_bits`; 0 bits collapses a group to its minimum).
    """
    g = _grouped(x.detach(), check_int("group_size", group_size, 1))
    widths = _group_bits(g.shape[0], bits, g.device)
    levels = (2**widths - 1).to(g.dtype).unsqueeze(-1)
    zero = g.amin(-1).to(SCALE_DTYPE)  # beyond the FP16 range this is inf: the packer refuses it (no sync here)
    low = zero.to(g.dtype).unsqueeze(-1)
    scale = ((g.amax(-1, keepdim=True) - low) / levels.clamp_min(1)).squeeze(-1).to(SCALE_DTYPE)
    step = scale.to(g.dtype).unsqueeze(-1)
    safe = torch.where(step > 0, step, torch.ones_like(step))
    codes = torch.minimum(torch.round((g - low) / safe).clamp_min(0), levels).long()
    codes = torch.where(step > 0, codes, torch.zeros_like(codes))  # a step rounded to 0: the group is its zero
    return GroupCodes(codes, scale, zero, widths, tuple(x.shape))


def quantize_groups(x: Tensor, bits: int | Tensor, group_size: int) -> Tensor:
    """Round ``x`` to the min–max grid of each group (:func:`quantize_codes`); same shape and dtype, no gradient."""
    if x.numel() == 0:
        return x.detach().clone()
    return quantize_codes(x, bits, group_size).values(x.dtype)


def fake_quantize_ste(
    x: Tensor, bits: int | Tensor, group_size: int, gamma: float = 0.0, rule: str = "log"
) -> Tensor:
    """:math:`x + \\mathrm{sg}(Q(x) - x)`: the value of :math:`Q(x)`, the gradient of the identity.

    :param bits: as in :func:`quantize_groups`; with ``gamma > 0`` an integer average, re-allocated
        per group by :func:`adaptive_bits` (``rule``) from the current ranges at every call.
    Written as :math:`Q(x) + (x - \\mathrm{sg}(x))` so that the forward value is bit-exactly
    :math:`Q(x)` (``x + (Q(x) - x)`` can differ from ``Q(x)`` in the last bit).
    """
    return qat_codes(x, bits, group_size, gamma, rule).values(x.dtype) + (x - x.detach())


def qat_codes(x: Tensor, bits: int | Tensor, group_size: int, gamma: float = 0.0, rule: str = "log") -> GroupCodes:
    """The :class:`GroupCodes` QAT uses for ``x``: ``bits`` per group, re-allocated by :func:`adaptive_bits`
    (``rule``) from the current ranges when ``gamma > 0``."""
    if gamma:
        bits = adaptive_bits(x, bits, group_size, gamma, rule)
    return quantize_codes(x, bits, group_size)


def adaptive_bits(x: Tensor, bits: int, group_size: int, gamma: float, rule: str = "log") -> Tensor:
    """Per-group bit widths ``[num_groups]`` (``torch.long``, 0..8) averaging ``bits``.

    See the module docstring for the ``"log"`` and ``"power"`` rules and the choice of
    :math:`\\bar r`.  ``gamma = 0`` returns ``bits`` for every group.
    """
    bits = check_int("bits", bits, 1, MAX_BITS)
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or gamma < 0:
        raise ValueError(f"gamma must be a number >= 0, got {gamma!r}")
    if rule not in ADAPTIVE_RULES:
        raise ValueError(f"rule must be one of {list(ADAPTIVE_RULES)}, got {rule!r}")
    ranges = group_ranges(x.detach(), group_size).double()
    if gamma == 0:
        return torch.full(ranges.shape, bits, dtype=torch.long, device=ranges.device)
    log_r = torch.log2(ranges)  # -inf for constant groups (they get 0 bits under both rules)

    def allocate(c: Tensor) -> Tensor:
        if rule == "log":
            raw = bits + gamma * (log_r - c)
        else:
            raw = bits * torch.exp2(gamma * (log_r - c))
        return raw.clamp(0, MAX_BITS)

    # Bisection on c = log2(r̄), on device and without host syncs: the mean allocation falls with c.
    finite = torch.isfinite(log_r)
    margin = 64.0 / gamma + 64.0
    lo = torch.where(finite, log_r, torch.inf).amin().nan_to_num(0.0, 0.0, 0.0) - margin
    hi = torch.where(finite, log_r, -torch.inf).amax().nan_to_num(0.0, 0.0, 0.0) + margin
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        above = allocate(mid).mean() > bits
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    continuous = allocate(0.5 * (lo + hi))
    floor = continuous.floor()
    remainder = continuous - floor
    # largest-remainder rounding: the round(Σ remainder) groups with the largest remainders get +1
    order = torch.argsort(remainder, descending=True)
    positions = torch.arange(remainder.numel(), dtype=remainder.dtype, device=remainder.device)
    rank = torch.empty_like(remainder).scatter_(0, order, positions)
    return (floor + (rank < remainder.sum().round()).to(floor.dtype)).long()


def storage_bits_per_parameter(bits: float, group_size: int, scale_bits: int = 16) -> float:
    """:math:`B + 2\\,b_s/G`: payload bits plus a scale and a zero of ``scale_bits`` per group."""
    return bits + 2 * scale_bits / check_int("group_size", group_size, 1)


def quantized_storage_mib(num_parameters: int, bits: float, group_size: int, scale_bits: int = 16) -> float:
    """MiB of ``num_parameters`` at :func:`storage_bits_per_parameter` bits each."""
    return num_parameters * storage_bits_per_parameter(bits, group_size, scale_bits) / 8 / 2**20


def quantized_view(
    param: Tensor, bits: int | None, group_size: int = 128, gamma: float = 0.0, rule: str = "log"
) -> Tensor:
    """The tensor an adapter should use in its forward under QAT (config ``quant_*`` options).

    ``bits=None`` returns ``param`` unchanged (FP32); otherwise the STE fake-quantized ``param``
    with ``bits`` per group, or adaptive widths (:func:`adaptive_bits`) re-allocated from the
    current group ranges at every call when ``gamma > 0``.
    """
    if bits is None:
        return param
    return fake_quantize_ste(param, check_int("bits", bits, 1, MAX_BITS), group_size, gamma, rule)


def _is_linear_like(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)) or type(module).__name__ == "Conv1D"


@torch.no_grad()
def quantize_model_weights_(
    model: nn.Module,
    bits: int,
    group_size: int = 128,
    include: str | Callable[[str, nn.Module], bool] = "all",
) -> dict[str, Any]:
    """Round a frozen base model's parameters in place to ``bits`` per group (no STE).

    :param include: ``"all"`` (every floating-point weight and bias, the paper's ViT setting, head
        included), ``"linear"`` (parameters of ``Linear``/``Conv1d``/``Conv2d``/HF ``Conv1D``
        modules only), or a predicate ``(parameter_name, owning_module) -> bool``.  Adapter
        parameters (names containing ``qpeft_``) and packed non-float tensors are never touched;
        tied parameters are rounded once.  Each tensor is grouped on its own.
    :returns: ``num_tensors``, ``num_parameters``, ``bits``, ``group_size``,
        ``bits_per_parameter`` (:math:`B + 32/G`), ``fp32_mib`` and ``quantized_mib``.
    """
    check_int("bits", bits, 1, MAX_BITS)
    check_int("group_size", group_size, 1)
    if not callable(include) and include not in INCLUDE_CHOICES:
        raise ValueError(f"include must be one of {list(INCLUDE_CHOICES)} or a callable, got {include!r}")
    seen: set[int] = set()
    count = tensors = 0
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            name = f"{module_name}.{param_name}" if module_name else param_name
            if id(param) in seen or "qpeft_" in name or not param.is_floating_point():
                continue
            if include == "linear" and not _is_linear_like(module):
                continue
            if callable(include) and not include(name, module):
                continue
            seen.add(id(param))
            param.copy_(quantize_groups(param, bits, group_size))
            count += param.numel()
            tensors += 1
    return {
        "num_tensors": tensors,
        "num_parameters": count,
        "bits": bits,
        "group_size": group_size,
        "bits_per_parameter": storage_bits_per_parameter(bits, group_size),
        "fp32_mib": count * 4 / 2**20,
        "quantized_mib": quantized_storage_mib(count, bits, group_size),
    }
