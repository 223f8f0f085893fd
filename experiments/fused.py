"""Split fused projections (GPT-2's ``c_attn`` = [Q | K | V]) into one ``nn.Linear`` per output slice.

peft's LoRA/AdaLoRA/LoHa/LoKr adapt whole modules: they cannot adapt only the Q and V slices of a fused
projection, and LoHa/LoKr cannot wrap transformers' GPT-2 ``Conv1D`` at all (reference.md §1.6).
:func:`split_fused` replaces each fused module ``f`` (``y = x W + b`` with ``W ∈ R^{in×out}`` for a
``Conv1D``, ``y = x Wᵀ + b`` for an ``nn.Linear``) by a :class:`SplitProjection` whose children
``q, k, v`` (``3`` parts; otherwise ``0 … n-1``) are ``nn.Linear(in, out/n)`` holding the slices
``W[:, i·s:(i+1)·s]ᵀ``, ``b[i·s:(i+1)·s]`` (``s = out/n``), so that ``concat_i(child_i(x)) = f(x)``.
peft then targets the chosen children, e.g. ``c_attn.q`` and ``c_attn.v`` (48 modules in GPT-2 Medium).

Memory: the slices are **copies** (a ``Linear`` stores ``(out, in)``, the ``Conv1D`` ``(in, out)``); each fused
module is dropped right after its copy, so the peak is one fused layer above the model, never a second model.
Parameters keep their ``requires_grad`` (frozen stays frozen), dtype and device (``meta`` included).

A saved peft adapter names the split children (``...c_attn.q.lora_A...``): load it into a model split the same
way (``split_fused`` then ``PeftModel.from_pretrained``).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

QKV = ("q", "k", "v")


def part_names(num_parts: int) -> tuple[str, ...]:
    """Child names of a split projection: ``q, k, v`` for 3 parts, else ``0 … num_parts-1``."""
    return QKV if num_parts == 3 else tuple(str(i) for i in range(num_parts))


class SplitProjection(nn.Module):
    """``y = concat_i(part_i(x))`` over ``num_parts`` ``nn.Linear`` children, in order (see module docstring)."""

    def __init__(self, parts: list[nn.Linear]) -> None:
        super().__init__()
        self.names = part_names(len(parts))
        for name, part in zip(self.names, parts):
            self.add_module(name, part)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([getattr(self, name)(x) for name in self.names], dim=-1)

    @classmethod
    def from_fused(cls, fused: nn.Module, num_parts: int) -> SplitProjection:
        """Copy a ``Conv1D`` (weight ``(in, out)``) or ``nn.Linear`` (weight ``(out, in)``) into ``num_parts`` slices."""
        if isinstance(fused, Conv1D):
            weight = fused.weight.T  # (out, in), a view
        elif isinstance(fused, nn.Linear):
            weight = fused.weight
        else:
            raise TypeError(f"cannot split {type(fused).__name__}: only transformers Conv1D and nn.Linear")
        out_features, in_features = weight.shape
        if out_features % num_parts:
            raise ValueError(f"fused_num_parts={num_parts} does not divide the {out_features} output features")
        size = out_features // num_parts
        parts = []
        with torch.no_grad():
            for i in range(num_parts):
                rows = slice(i * size, (i + 1) * size)
                part = nn.Linear(in_features, size, bias=fused.bias is not None, device="meta")
                part.weight = nn.Parameter(weight[rows].contiguous(), requires_grad=fused.weight.requires_grad)
                if fused.bias is not None:
                    part.bias = nn.Parameter(fused.bias[rows].clone(), requires_grad=fused.bias.requires_grad)
                parts.append(part)
        return cls(parts)


def split_fused(model: nn.Module, fused_modules: dict[str, list[int]], num_parts: int) -> list[str]:
    """Replace every module whose name ends with a key of ``fused_modules`` by a :class:`SplitProjection`;
    return the peft target suffixes of the chosen slices, e.g. ``{"c_attn": [0, 2]} -> ["c_attn.q", "c_attn.v"]``."""
    names = part_names(num_parts)
    for key, slices in fused_modules.items():
        bad = [i for i in slices if not 0 <= i < num_parts]
        if bad:
            raise ValueError(f"fused_modules.{key}: slices {bad} are out of range for fused_num_parts={num_parts}")
    matched = [(name, key) for name, _ in model.named_modules() for key in fused_modules
               if name == key or name.endswith("." + key)]
    if not matched:
        raise ValueError(f"fused_modules {sorted(fused_modules)} match no module of {type(model).__name__}")
    for name, _ in matched:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, SplitProjection.from_fused(getattr(parent, child), num_parts))
    return [f"{key}.{names[i]}" for key, slices in fused_modules.items() for i in slices]
