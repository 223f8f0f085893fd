r"""Adapter layers: ``y = base(x) + \tfrac{\alpha}{K}\,((x V) \odot \lambda)\,U^\top``.

Tensor networks (``QPeftConfig.network``) change only the factors (built by ``qpeft.unitary.network``) and
the core between them: ``y = base(x) + (α/K)·((x V) Cᵀ) Uᵀ`` with ``C`` diagonal, dense or a ring; with an
outer ``tanh`` the update is dense, ``y = base(x) + x ΔWᵀ``.

One wrapper serves ``nn.Linear``, transformers' GPT-2 ``Conv1D`` (weight stored ``(in, out)``) and
bitsandbytes ``Linear4bit``.  A fused projection (GPT-2 ``c_attn``) can be adapted on some of its
equal output slices only; each slice gets its own ``U``, ``V`` and ``λ``, and the slices are packed
into one block-structured ``U`` so the forward pass is always two skinny matmuls, as in LoRA.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from qpeft.config import QPeftConfig
from qpeft.quantize import GroupCodes, fake_quantize_ste, qat_codes
from qpeft.unitary.base import StiefelMap, build_mapping

ADAPTER_PREFIX = "qpeft_"

MERGE_4BIT_WARNING = ("merging into a 4-bit base re-quantizes W + ΔW of {n} layer(s): the merged model's outputs "
                      "differ from the adapted model's by that rounding (approximate; keep the adapter unmerged "
                      "for exact outputs)")


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
    """``(out_features, in_features)`` of a supported base layer (or of the one a ``QPeftLayer`` wraps)."""
    if isinstance(getattr(module, "base_layer", None), nn.Module):
        module = module.base_layer
    kind = base_layer_kind(module)
    if kind == "conv1d":
        return module.nf, module.weight.shape[0]
    if kind in ("linear", "linear4bit"):
        return module.out_features, module.in_features
    raise TypeError(f"unsupported base layer type {type(module).__name__}")


class FakeQuantize(nn.Module):
    """Parametrization ``θ ↦ θ + sg(Q(θ) − θ)``: B-bit min-max QAT with the straight-through estimator.

    ``gamma > 0`` re-allocates the bits per group from the current ranges (adaptive bit loading, ``rule``
    ``"log"`` or ``"power"``; :func:`qpeft.quantize.adaptive_bits`) at every call.
    """

    def __init__(self, bits: int, group_size: int, gamma: float, rule: str = "log") -> None:
        super().__init__()
        self.bits, self.group_size, self.gamma, self.rule = bits, group_size, gamma, rule

    def codes(self, theta: torch.Tensor) -> GroupCodes:
        """The integer form of ``Q(θ)`` (what a packed adapter stores)."""
        return qat_codes(theta, self.bits, self.group_size, self.gamma, self.rule)

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        if theta.numel() == 0:
            return theta
        return fake_quantize_ste(theta, self.bits, self.group_size, self.gamma, self.rule)


def full_precision(module: nn.Module) -> contextlib.AbstractContextManager:
    """Autocast switched off on the device of ``module``'s parameters: factors are built in their parameters'
    dtype (a U built in bf16 is orthonormal to ~1e-2 only); the adapter casts them to the activations' dtype."""
    ref = next(module.parameters(), None)
    return torch.autocast(ref.device.type if ref is not None else "cpu", enabled=False)


@dataclass(eq=False)
class LayerFactors:
    """The factors the model's batched build made for one layer in one forward pass (``qpeft.batching``).

    ``rebuild`` is set when the layer ran without gradients although the factors carry them: that is a
    reentrant activation checkpoint's first pass, and its recomputation in the backward must then build
    the layer's own factors from the parameters (the batched ones are not part of that inner graph).
    """

    us: list[torch.Tensor]
    vs: list[torch.Tensor]
    rebuild: bool = False

    @property
    def requires_grad(self) -> bool:
        return self.us[0].requires_grad


class QPeftAdapter(nn.Module):
    """One named adapter of one layer: ``qpeft_u[i]``/``qpeft_v[i]`` map the intrinsic parameters of slice ``i``
    to ``U_i``/``V_i``, and the core ``qpeft_lambda`` starts at zero, so the layer equals its base exactly.

    The core is ``config.core``: ``diagonal`` λ (``slices x K``; ttd, cp, htd), ``dense`` G (``slices x K x K``;
    tucker) or ``ring`` λ (``slices x R``, ``K = R²``; trd, expanded to the ``R²`` columns ``(c, a)`` as ``λ_a``).
    ``nonlinearity="tanh"`` gives ``ΔW = (α/K)·tanh(U C Vᵀ)`` and a dense forward ``x ΔWᵀ``.
    """

    def __init__(self, out_features: int, in_features: int, config: QPeftConfig, slices: list[int] | None,
                 rank: int, alpha: float, device: torch.device) -> None:
        super().__init__()
        self.num_parts = config.fused_num_parts if slices else 1
        if out_features % self.num_parts:
            raise ValueError(
                f"fused_num_parts={self.num_parts} does not divide out_features={out_features}"
            )
        self.out_features = out_features
        self.slices = list(slices) if slices else [0]
        self.part_out = out_features // self.num_parts
        self.rank = rank
        self.scaling = alpha / rank
        (_, map_u, opt_u), (_, map_v, opt_v) = config.factor_specs()
        self.qpeft_u = nn.ModuleList(build_mapping(map_u, self.part_out, rank, **opt_u) for _ in self.slices)
        self.qpeft_v = nn.ModuleList(build_mapping(map_v, in_features, rank, **opt_v) for _ in self.slices)
        self.core = config.core  # diagonal | dense | ring (qpeft.config.NETWORK_CORES)
        self.nonlinearity = config.nonlinearity
        self.train_mappings = config.train_mappings  # False: U, V stay at their initial values (qpeft.state)
        # the core starts at zero, so the layer equals its base exactly (tanh(0) = 0 too)
        self.qpeft_lambda = nn.Parameter(torch.zeros(len(self.slices), *config.core_shape(rank)))
        self.qpeft_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        if config.quant_bits is not None:
            self._register_qat(config)
        rows = torch.cat([torch.arange(s * self.part_out, (s + 1) * self.part_out) for s in self.slices])
        self.register_buffer("row_index", rows, persistent=False)
        self.to(device)

    def _register_qat(self, config: QPeftConfig) -> None:
        """Fake-quantize every trainable float parameter of every mapping, nested nodes included (networks)."""
        for mapping in self.mappings():
            targets = [(module, name) for module in mapping.modules()
                       for name, param in module.named_parameters(recurse=False)
                       if param.requires_grad and param.is_floating_point()]
            for module, name in targets:
                fq = FakeQuantize(config.quant_bits, config.quant_group_size, config.quant_gamma, config.quant_rule)
                parametrize.register_parametrization(module, name, fq)

    def mappings(self) -> list[StiefelMap]:
        return [*self.qpeft_u, *self.qpeft_v]

    def adapter_parameters(self) -> list[nn.Parameter]:
        """Every tensor the factors and ``λ`` depend on (the mappings' parameters and ``qpeft_lambda``)."""
        return [p for m in self.mappings() for p in m.parameters()] + [self.qpeft_lambda]

    def build(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``(us, vs)``: every slice's factors, built by its own mappings (autocast off: :func:`full_precision`)."""
        with full_precision(self):
            return [u() for u in self.qpeft_u], [v() for v in self.qpeft_v]

    def assemble(self, us: list[torch.Tensor], vs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(U_big, V_big)``: ``U_big`` is ``out x (S·K)`` (slice ``s`` in its rows), ``V_big`` is ``in x (S·K)``."""
        v_big = vs[0] if len(vs) == 1 else torch.cat(vs, dim=1)
        if len(us) == 1 and self.num_parts == 1:
            return us[0], v_big
        u_big = us[0].new_zeros(self.out_features, len(us) * self.rank)
        blocks = torch.block_diag(*us)  # (S·part_out) x (S·K)
        return u_big.index_copy(0, self.row_index, blocks), v_big

    def column_scale(self) -> torch.Tensor:
        """``(S·K,)``: the diagonal of a diagonal or ring core (ring: ``λ_a`` on columns ``(c, a)``), times ``α/K``
        unless a nonlinearity follows (then unscaled)."""
        lam = self.qpeft_lambda
        if self.core == "ring":  # column (c, a) = c·R + a carries λ_a: λ tiled R times
            lam = lam.repeat(1, lam.shape[-1])
        scale = 1.0 if self.nonlinearity else self.scaling
        return lam.reshape(-1) * scale

    def core_matrix(self) -> torch.Tensor:
        """``(S·K, S·K)``: the block-diagonal dense cores ``G_s`` of the slices, times ``α/K`` unless a nonlinearity
        follows."""
        blocks = self.qpeft_lambda.unbind(0)
        core = blocks[0] if len(blocks) == 1 else torch.block_diag(*blocks)
        return core if self.nonlinearity else core * self.scaling

    def times_core(self, u_big: torch.Tensor) -> torch.Tensor:
        """``U C`` (times ``α/K`` unless a nonlinearity follows): the core applied to ``U``'s columns."""
        return u_big @ self.core_matrix() if self.core == "dense" else u_big * self.column_scale()

    def low_rank_factors(self, u_big: torch.Tensor, v_big: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, A)`` with ``B A = (α/K) U C Vᵀ`` (``B = (α/K) U C``, ``A = Vᵀ``); only without a nonlinearity."""
        if self.nonlinearity:
            raise ValueError(f"nonlinearity={self.nonlinearity!r}: ΔW = (α/K)·{self.nonlinearity}(U C Vᵀ) is not a "
                             "low-rank product, so it has no exact LoRA form (save it without as_lora, or merge it)")
        return self.times_core(u_big), v_big.T

    def update(self, u_big: torch.Tensor, v_big: torch.Tensor) -> torch.Tensor:
        """``ΔW = (α/K) σ(U C Vᵀ)`` (``out x in``) from assembled factors (``C = diag(λ)`` for a diagonal core)."""
        inner = self.times_core(u_big) @ v_big.T
        if self.nonlinearity == "tanh":
            return torch.tanh(inner) * self.scaling
        return inner

    def adapt(self, x: torch.Tensor, u_big: torch.Tensor, v_big: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The adapter's output ``x ΔWᵀ`` (dropout applied to ``x``) in ``dtype``: two skinny matmuls,
        ``(x V)(U C)ᵀ`` with the core (and ``α/K``) folded into ``U`` (``out x S·K``, not ``tokens x S·K``),
        or the dense ``x ΔWᵀ`` when a nonlinearity makes ΔW full rank."""
        x = self.qpeft_dropout(x).to(dtype)
        if self.nonlinearity:
            return x @ self.update(u_big, v_big).to(dtype).T
        return (x @ v_big.to(dtype)) @ self.times_core(u_big).to(dtype).T


def _active(attribute: str) -> property:
    """A read-only view of the active adapter's ``attribute`` (the single-adapter API of the layer)."""
    return property(lambda self: getattr(self.adapter, attribute), doc=f"The active adapter's ``{attribute}``.")


class QPeftLayer(nn.Module):
    """A frozen ``base_layer`` plus named Quantum-PEFT adapters (``qpeft_adapters``), one of them active.

    The forward adds the active adapter's update unless it is merged into ``W`` or the layer is
    ``disabled``; merged adapters stay folded into ``W`` whichever adapter is active (as in peft).
    ``qpeft_u``, ``qpeft_v``, ``qpeft_lambda``, ``rank``, ``scaling`` and ``slices`` are the active adapter's.
    """

    adapter_layer_names = ("qpeft_adapters",)
    qpeft_u = _active("qpeft_u")
    qpeft_v = _active("qpeft_v")
    qpeft_lambda = _active("qpeft_lambda")
    rank = _active("rank")
    scaling = _active("scaling")
    slices = _active("slices")

    def __init__(self, base_layer: nn.Module, config: QPeftConfig, slices: list[int] | None = None,
                 adapter_name: str = "default", rank: int | None = None, alpha: float | None = None) -> None:
        super().__init__()
        self.kind = base_layer_kind(base_layer)
        if self.kind is None:
            raise TypeError(f"cannot adapt a {type(base_layer).__name__}; supported: Linear, GPT-2 Conv1D, bnb Linear4bit")
        self.base_layer = base_layer
        self.out_features, self.in_features = base_layer_shape(base_layer)
        self.fan_in_fan_out = self.kind == "conv1d" or config.fan_in_fan_out
        self.qpeft_adapters = nn.ModuleDict()
        self._active_adapter: str | None = None  # peft's BaseTunerLayer names, so its layer status reads them
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self._cache: tuple[list[torch.Tensor], torch.Tensor, torch.Tensor] | None = None
        self._cache_checked = False  # set by qpeft.batching once it proved the cache fresh for one forward
        self._precomputed: LayerFactors | None = None  # set by qpeft.batching
        self.add_adapter(adapter_name, config, slices, rank, alpha)
        self.set_adapter(adapter_name)

    # ---------------------------------------------------------------- adapters
    def add_adapter(self, name: str, config: QPeftConfig, slices: list[int] | None = None,
                    rank: int | None = None, alpha: float | None = None) -> None:
        """Add adapter ``name`` (rank/alpha default to the config's); it is not made active."""
        if name in self.qpeft_adapters:
            raise ValueError(f"adapter {name!r} already exists on this layer")
        self.qpeft_adapters[name] = QPeftAdapter(
            self.out_features, self.in_features, config, slices, rank or config.rank,
            config.alpha if alpha is None else alpha, self.base_layer.weight.device)

    def set_adapter(self, name: str | None) -> None:
        """Make ``name`` the active adapter; a layer that does not have it computes its base output."""
        self._active_adapter = name if name in self.qpeft_adapters else None
        self._cache = None

    def delete_adapter(self, name: str) -> None:
        if name in self.merged_adapters:
            raise ValueError(f"adapter {name!r} is merged into the base weight; unmerge it before deleting it")
        del self.qpeft_adapters[name]
        if self.active_adapter == name:
            self.set_adapter(next(iter(self.qpeft_adapters), None))

    @property
    def active_adapter(self) -> str | None:
        return self._active_adapter

    @property
    def active_adapters(self) -> list[str]:
        return [] if self._active_adapter is None else [self._active_adapter]

    @property
    def disabled(self) -> bool:
        """Adapters switched off: the layer computes its base output."""
        return self._disable_adapters

    @disabled.setter
    def disabled(self, value: bool) -> None:
        self._disable_adapters = bool(value)

    @property
    def disable_adapters(self) -> bool:
        """peft's name for :attr:`disabled` (read-only, as in peft)."""
        return self._disable_adapters

    @property
    def adapter(self) -> QPeftAdapter:
        """The active adapter."""
        if self.active_adapter is None:
            raise AttributeError("this layer has no active adapter")
        return self.qpeft_adapters[self.active_adapter]

    @property
    def merged(self) -> bool:
        """Whether any adapter is folded into the base weight."""
        return bool(self.merged_adapters)

    @property
    def active(self) -> bool:
        """Whether the forward adds an update on the fly: an active adapter, not merged, layer not disabled."""
        return not self.disabled and self.active_adapter is not None and self.active_adapter not in self.merged_adapters

    def mappings(self) -> list[StiefelMap]:
        return self.adapter.mappings()

    # ---------------------------------------------------------------- factors
    def adapter_parameters(self) -> list[nn.Parameter]:
        """Every tensor the active adapter's factors and ``λ`` depend on."""
        return self.adapter.adapter_parameters()

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
        """``(U_big, V_big)`` of the active adapter (see :meth:`QPeftAdapter.assemble`).

        Taken from the model's batched build (``_precomputed``, see ``qpeft.batching``) while that forward
        pass or its backward runs, else built here; reused while gradients are off and no parameter
        changed (eval mode).  Under a reentrant activation checkpoint the recomputation builds its own.
        """
        adapter, pre, grad = self.adapter, self._precomputed, torch.is_grad_enabled()
        if pre is not None and pre.requires_grad and not grad:
            pre.rebuild = True  # first pass of a reentrant checkpoint: values only, rebuilt in its backward
        if pre is not None and not (pre.rebuild and grad):
            factors = adapter.assemble(pre.us, pre.vs)
            if not grad and not pre.requires_grad:
                self._cache = ([p.detach().clone() for p in adapter.adapter_parameters()], *factors)
            return factors
        if not grad and (self._cache_checked or self.cache_is_valid()):
            return self._cache[1], self._cache[2]
        factors = adapter.assemble(*adapter.build())
        self._cache = ([p.detach().clone() for p in adapter.adapter_parameters()], *factors) if not grad else None
        return factors

    def delta_weight(self, adapter_name: str | None = None) -> torch.Tensor:
        """``ΔW = (α/K) U diag(λ) Vᵀ`` of an adapter (default: the active one) as an ``out x in`` matrix
        (``in x out`` for fan-in-fan-out bases)."""
        if adapter_name in (None, self.active_adapter):
            delta = self.adapter.update(*self.factors())
        else:
            adapter = self.qpeft_adapters[adapter_name]
            delta = adapter.update(*adapter.assemble(*adapter.build()))
        return delta.T if self.fan_in_fan_out else delta

    # ---------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disabled and self.merged:
            self.unmerge()  # as in peft: a disabled adapter must not stay folded into W
        result = self.base_layer(x, *args, **kwargs)
        if not self.active:
            return result
        if self.kind == "linear4bit":
            result = result.clone()  # bnb may return a view of an internal buffer
        u_big, v_big = self.factors()
        dtype = result.dtype if torch.is_floating_point(result) else u_big.dtype
        return result + self.adapter.adapt(x, u_big, v_big, dtype)

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

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None, warn_4bit: bool = True) -> None:
        """``W ← W + ΔW`` for each adapter (default: the active one); with ``safe_merge`` check the result
        is finite before writing. Into a 4-bit base ``W + ΔW`` is re-quantized, so the merge is approximate:
        warned about here unless ``warn_4bit=False`` (the model-level merge warns once for all its layers)."""
        names = [n for n in (adapter_names or [self.active_adapter]) if n is not None]
        unknown = sorted(set(names) - set(self.qpeft_adapters))
        if unknown:
            raise ValueError(f"no adapter(s) {unknown} on this layer; available: {sorted(self.qpeft_adapters)}")
        for name in names:
            if name in self.merged_adapters:
                warnings.warn(f"adapter {name!r} already merged; nothing to do", stacklevel=2)
                continue
            if self.kind == "linear4bit" and warn_4bit:
                warnings.warn(MERGE_4BIT_WARNING.format(n=1), stacklevel=2)
            with torch.no_grad():
                base = self._base_weight()
                dtype = torch.promote_types(base.dtype, torch.float32)  # float32 or wider: float64 bases stay exact
                merged = base.to(dtype) + self.delta_weight(name).to(dtype)
                if safe_merge and not torch.isfinite(merged).all():
                    raise ValueError(f"NaN or inf in the merged weight; adapter {name!r} is broken, not merging")
                self._set_base_weight(merged)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """``W ← W − ΔW`` for every merged adapter, last merged first (exact for float bases, approximate for 4-bit)."""
        if not self.merged:
            warnings.warn("adapter is not merged; nothing to do", stacklevel=2)
            return
        with torch.no_grad():
            while self.merged_adapters:
                name = self.merged_adapters.pop()
                base = self._base_weight()
                dtype = torch.promote_types(base.dtype, torch.float32)
                self._set_base_weight(base.to(dtype) - self.delta_weight(name).to(dtype))

    def extra_repr(self) -> str:
        adapters = {n: f"K={a.rank}, slices={a.slices}/{a.num_parts}, core={a.core}"
                    + (f", nonlinearity={a.nonlinearity}" if a.nonlinearity else "") for n, a in self.qpeft_adapters.items()}
        return f"kind={self.kind}, active={self.active_adapter!r}, adapters={adapters}"


def stale_flags(layers: list[QPeftLayer]) -> list[bool]:
    """``not layer.cache_is_valid()`` for every layer, with all value comparisons in one host sync."""
    verdicts = [layer.cache_changed() for layer in layers]
    pending = [v for v in verdicts if v is not True]
    values = iter(torch.stack([v.to(pending[0].device) for v in pending]).tolist() if pending else [])
    return [True if v is True else bool(next(values)) for v in verdicts]


class ModulesToSave(nn.Module):
    """Fully trained copies of a module (e.g. a classifier head), one per adapter, beside the frozen original.

    The active adapter's copy is used unless the adapters are disabled or the active adapter has no copy;
    only the copies are saved.
    """

    def __init__(self, module: nn.Module, adapter_name: str = "default") -> None:
        super().__init__()
        self.original_module = module
        self.qpeft_modules_to_save = nn.ModuleDict()
        self.active_adapter: str | None = None
        self.disabled = False
        self.add_adapter(adapter_name)
        self.set_adapter(adapter_name)

    def add_adapter(self, name: str) -> None:
        import copy

        self.qpeft_modules_to_save[name] = copy.deepcopy(self.original_module)

    def set_adapter(self, name: str | None) -> None:
        self.active_adapter = name if name in self.qpeft_modules_to_save else None

    def delete_adapter(self, name: str) -> None:
        del self.qpeft_modules_to_save[name]
        if self.active_adapter == name:
            self.set_adapter(next(iter(self.qpeft_modules_to_save), None))

    @property
    def active_module(self) -> nn.Module:
        """The module the forward uses: the active adapter's copy, else the original."""
        if self.disabled or self.active_adapter is None:
            return self.original_module
        return self.qpeft_modules_to_save[self.active_adapter]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.active_module(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or "qpeft_modules_to_save" not in self.__dict__.get("_modules", {}):
                raise
            return getattr(self.active_module, name)
