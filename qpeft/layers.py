r"""Adapter layers: ``y = base(x) + \tfrac{\alpha}{K}\,((x V) \odot \lambda)\,U^\top``.

One wrapper serves ``nn.Linear``, transformers' GPT-2 ``Conv1D`` (weight stored ``(in, out)``) and
bitsandbytes ``Linear4bit``.  A fused projection (GPT-2 ``c_attn``) can be adapted on some of its
equal output slices only; each slice gets its own ``U``, ``V`` and ``λ``, and the slices are packed
into one block-structured ``U`` so the forward pass is always two skinny matmuls, as in LoRA.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from qpeft.config import QPeftConfig
from qpeft.unitary.base import StiefelMap, build_mapping

ADAPTER_PREFIX = "qpeft_"


def base_layer_kind(module: nn.Module) -> str | None:
    """``"linear"``, ``"conv1d"`` (GPT-2), ``"linear4bit"`` (bitsandbytes) or ``None`` if unsupported."""
    cls = type(module)
    if cls.__name__ == "Linear4bit" and cls.__module__.startswith("bitsandbytes"):
        return "linear4bit"
    if cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers"):
        return "conv1d"
    if isinstance(module, nn.Linear):
        return "linear"
    return None


def base_layer_shape(module: nn.Module) -> tuple[int, int]:
    """``(out_features, in_features)`` of a supported base layer."""
    kind = base_layer_kind(module)
    if kind == "conv1d":
        return module.nf, module.weight.shape[0]
    if kind in ("linear", "linear4bit"):
        return module.out_features, module.in_features
    raise TypeError(f"unsupported base layer type {type(module).__name__}")


class FakeQuantize(nn.Module):
    """Parametrization ``θ ↦ θ + sg(Q(θ) − θ)``: B-bit min-max QAT with the straight-through estimator."""

    def __init__(self, bits: int, group_size: int, gamma: float) -> None:
        super().__init__()
        self.bits, self.group_size, self.gamma = bits, group_size, gamma

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        from qpeft.quantize import fake_quantize_ste

        return fake_quantize_ste(theta, self.bits, self.group_size, gamma=self.gamma)


class QPeftLayer(nn.Module):
    """A frozen ``base_layer`` plus the Quantum-PEFT update on the chosen output slices.

    Trainable: ``qpeft_u[i]``/``qpeft_v[i]`` (mapping parameters of slice ``i``) and
    ``qpeft_lambda`` (``slices x K``, zero at init so the layer equals its base exactly).
    """

    adapter_layer_names = ("qpeft_u", "qpeft_v", "qpeft_lambda")

    def __init__(self, base_layer: nn.Module, config: QPeftConfig, slices: list[int] | None = None) -> None:
        super().__init__()
        self.kind = base_layer_kind(base_layer)
        if self.kind is None:
            raise TypeError(f"cannot adapt a {type(base_layer).__name__}; supported: Linear, GPT-2 Conv1D, bnb Linear4bit")
        self.base_layer = base_layer
        self.out_features, self.in_features = base_layer_shape(base_layer)
        self.fan_in_fan_out = self.kind == "conv1d" or config.fan_in_fan_out
        self.num_parts = config.fused_num_parts if slices else 1
        if self.out_features % self.num_parts:
            raise ValueError(
                f"fused_num_parts={self.num_parts} does not divide out_features={self.out_features}"
            )
        self.slices = list(slices) if slices else [0]
        self.part_out = self.out_features // self.num_parts
        self.rank = config.rank
        self.scaling = config.scaling
        (_, map_u, opt_u), (_, map_v, opt_v) = config.factor_specs()
        self.qpeft_u = nn.ModuleList(build_mapping(map_u, self.part_out, self.rank, **opt_u) for _ in self.slices)
        self.qpeft_v = nn.ModuleList(build_mapping(map_v, self.in_features, self.rank, **opt_v) for _ in self.slices)
        self.qpeft_lambda = nn.Parameter(torch.zeros(len(self.slices), self.rank, device=base_layer.weight.device))
        self.qpeft_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        if config.quant_bits is not None:
            self._register_qat(config)
        rows = torch.cat([torch.arange(s * self.part_out, (s + 1) * self.part_out) for s in self.slices])
        self.register_buffer("row_index", rows, persistent=False)
        self.merged = False
        self.disabled = False
        self._cache: tuple[list[torch.Tensor], torch.Tensor, torch.Tensor] | None = None
        self._cache_checked = False  # set by qpeft.batching once it proved the cache fresh for one forward
        self._precomputed: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None  # set by qpeft.batching
        self._to_base_device()

    def _register_qat(self, config: QPeftConfig) -> None:
        for mapping in self.mappings():
            for name, param in list(mapping.named_parameters(recurse=False)):
                if param.requires_grad:
                    fq = FakeQuantize(config.quant_bits, config.quant_group_size, config.quant_gamma)
                    parametrize.register_parametrization(mapping, name, fq)

    def _to_base_device(self) -> None:
        device = self.base_layer.weight.device
        for module in (self.qpeft_u, self.qpeft_v):
            module.to(device)

    def mappings(self) -> list[StiefelMap]:
        return [*self.qpeft_u, *self.qpeft_v]

    # ---------------------------------------------------------------- factors
    def adapter_parameters(self) -> list[nn.Parameter]:
        """Every tensor the factors and ``λ`` depend on (the mappings' parameters and ``qpeft_lambda``)."""
        return [p for m in self.mappings() for p in m.parameters()] + [self.qpeft_lambda]

    def cache_changed(self) -> bool | torch.Tensor:
        """``True`` if the eval cache is missing or its parameters differ in shape, dtype or device; else a
        0-dim bool tensor, true iff some value differs (no host sync: see :func:`stale_flags`)."""
        if self._cache is None:
            return True
        snapshot, params = self._cache[0], self.adapter_parameters()
        if len(snapshot) != len(params) or any(
            (s.shape, s.dtype, s.device) != (p.shape, p.dtype, p.device) for s, p in zip(snapshot, params)
        ):
            return True
        return torch.stack([(s != p.detach()).any() for s, p in zip(snapshot, params)]).any()

    def cache_is_valid(self) -> bool:
        """Whether the eval cache holds the factors of the current parameter *values*.

        Compared value by value with the snapshot taken when the cache was built, so no mutation can
        slip through (optimizer steps, ``load_state_dict``, ``vector_to_parameters``, ``p.data = ...``,
        in-place ``.data`` ops, ``.to(dtype/device)``); NaN never matches.  The adapter tensors are tiny.
        """
        changed = self.cache_changed()
        return not (changed is True or bool(changed))

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(U_big, V_big)``: ``U_big`` is ``out x (S·K)`` (slice ``s`` in its rows), ``V_big`` is ``in x (S·K)``.

        Built once per call, or taken from the model's batched build (``_precomputed``, see
        ``qpeft.batching``); reused while gradients are off and no parameter changed (eval mode).
        """
        cacheable = not torch.is_grad_enabled()
        if cacheable and self._precomputed is None and (self._cache_checked or self.cache_is_valid()):
            return self._cache[1], self._cache[2]
        if self._precomputed is not None:
            us, vs = self._precomputed
        else:
            us = [u() for u in self.qpeft_u]
            vs = [v() for v in self.qpeft_v]
        v_big = vs[0] if len(vs) == 1 else torch.cat(vs, dim=1)
        if len(us) == 1 and self.num_parts == 1:
            u_big = us[0]
        else:
            u_big = us[0].new_zeros(self.out_features, len(us) * self.rank)
            blocks = torch.block_diag(*us)  # (S·part_out) x (S·K)
            u_big = u_big.index_copy(0, self.row_index, blocks)
        if cacheable:
            self._cache = ([p.detach().clone() for p in self.adapter_parameters()], u_big, v_big)
        else:
            self._cache = None
        return u_big, v_big

    def delta_weight(self) -> torch.Tensor:
        """``ΔW = (α/K) U diag(λ) Vᵀ`` as an ``out x in`` matrix (``in x out`` for fan-in-fan-out bases)."""
        u_big, v_big = self.factors()
        delta = (u_big * (self.qpeft_lambda.reshape(-1) * self.scaling)) @ v_big.T
        return delta.T if self.fan_in_fan_out else delta

    # ---------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disabled and self.merged:
            self.unmerge()  # as in peft: a disabled adapter must not stay folded into W
        result = self.base_layer(x, *args, **kwargs)
        if self.disabled or self.merged:
            return result
        if self.kind == "linear4bit":
            result = result.clone()  # bnb may return a view of an internal buffer
        u_big, v_big = self.factors()
        dtype = result.dtype if torch.is_floating_point(result) else u_big.dtype
        h = self.qpeft_dropout(x).to(dtype) @ v_big.to(dtype)
        h = h * (self.qpeft_lambda.reshape(-1) * self.scaling).to(dtype)
        return result + h @ u_big.to(dtype).T

    # ---------------------------------------------------------------- merge
    def _base_weight(self) -> torch.Tensor:
        weight = self.base_layer.weight
        if self.kind == "linear4bit":
            import bitsandbytes.functional as bnbF

            if getattr(weight.quant_state, "packing_format_for_cpu", False):
                # bnb repacks W for its CPU inference kernel on first eval use; undo that before dequantizing
                weight.data, weight.quant_state = bnbF._convert_weight_packed_for_cpu_inverse(weight.data, weight.quant_state)
            return bnbF.dequantize_4bit(weight.data, weight.quant_state)
        return weight.data

    def _set_base_weight(self, value: torch.Tensor) -> None:
        weight = self.base_layer.weight
        if self.kind == "linear4bit":
            import bitsandbytes as bnb

            kwargs = {k: getattr(weight, k) for k in ("quant_type", "compress_statistics", "blocksize") if hasattr(weight, k)}
            new = bnb.nn.Params4bit(value.to("cpu"), requires_grad=False, **kwargs)
            self.base_layer.weight = new.to(weight.device)
        else:
            weight.data.copy_(value.to(weight.dtype))

    def merge(self, safe_merge: bool = False) -> None:
        """``W ← W + ΔW``; with ``safe_merge`` check the result is finite before writing."""
        if self.merged:
            warnings.warn("adapter already merged; nothing to do", stacklevel=2)
            return
        if self.kind == "linear4bit":
            warnings.warn("merging into a 4-bit base re-quantizes W: outputs change by rounding", stacklevel=2)
        with torch.no_grad():
            merged = self._base_weight().float() + self.delta_weight().float()
            if safe_merge and not torch.isfinite(merged).all():
                raise ValueError("NaN or inf in the merged weight; the adapter is broken, not merging")
            self._set_base_weight(merged)
        self.merged = True

    def unmerge(self) -> None:
        """``W ← W − ΔW`` (exact for float bases, approximate for 4-bit ones)."""
        if not self.merged:
            warnings.warn("adapter is not merged; nothing to do", stacklevel=2)
            return
        with torch.no_grad():
            self._set_base_weight(self._base_weight().float() - self.delta_weight().float())
        self.merged = False

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scaling={self.scaling:g}, slices={self.slices}/{self.num_parts}, kind={self.kind}"


def stale_flags(layers: list[QPeftLayer]) -> list[bool]:
    """``not layer.cache_is_valid()`` for every layer, with all value comparisons in one host sync."""
    verdicts = [layer.cache_changed() for layer in layers]
    pending = [v for v in verdicts if v is not True]
    values = iter(torch.stack([v.to(pending[0].device) for v in pending]).tolist() if pending else [])
    return [True if v is True else bool(next(values)) for v in verdicts]


class ModulesToSave(nn.Module):
    """A fully trained copy of a module (e.g. a classifier head) beside the frozen original.

    The copy is used unless the adapter is disabled; only the copy is saved.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        import copy

        self.original_module = module
        self.qpeft_modules_to_save = copy.deepcopy(module)
        self.disabled = False

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        target = self.original_module if self.disabled else self.qpeft_modules_to_save
        return target(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or "qpeft_modules_to_save" not in self.__dict__.get("_modules", {}):
                raise
            return getattr(self._modules["qpeft_modules_to_save"], name)
