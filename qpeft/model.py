"""Injection and the peft-style model wrapper: ``get_qpeft_model``, save/load, merge, disable."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qpeft.batching import FactorBatcher
from qpeft.config import CONFIG_NAME, QPeftConfig
from qpeft.guard import DEFAULT_CHECK_EVERY, DEFAULT_TOLERANCE, UnitarityGuard, factor_errors
from qpeft.io import atomic_write
from qpeft.layers import ADAPTER_PREFIX, ModulesToSave, QPeftLayer, base_layer_kind, base_layer_shape, stale_flags

WEIGHTS_NAME = "adapter_model.safetensors"


def _suffix_match(name: str, suffix: str) -> bool:
    return name == suffix or name.endswith("." + suffix)


def is_target(name: str, config: QPeftConfig) -> bool:
    """Whether module ``name`` is targeted: a regex is matched in full, a list entry as a name suffix."""
    if isinstance(config.target_modules, str):
        return re.fullmatch(config.target_modules, name) is not None
    return any(_suffix_match(name, t) for t in config.target_modules)


def fused_slices(name: str, config: QPeftConfig) -> list[int] | None:
    """The output slices to adapt when ``name`` is a fused projection, else ``None`` (whole layer)."""
    for suffix, parts in config.fused_modules.items():
        if _suffix_match(name, suffix):
            return sorted(parts)
    return None


def find_targets(model: nn.Module, config: QPeftConfig) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every module the config targets; raises if one is unsupported or none match."""
    targets = []
    for name, module in model.named_modules():
        if not name or isinstance(module, QPeftLayer) or ".base_layer" in name or not is_target(name, config):
            continue
        if base_layer_kind(module) is None:
            if any(base_layer_kind(child) for child in module.children()):
                continue  # a container whose name matches; its children are checked on their own
            raise ValueError(
                f"target module {name!r} is a {type(module).__name__}; supported: Linear, GPT-2 Conv1D, bnb Linear4bit"
            )
        targets.append((name, module))
    if not targets:
        sample = [n for n, m in model.named_modules() if base_layer_kind(m)][:8]
        raise ValueError(
            f"QPeftConfig.target_modules={config.target_modules!r} matched no supported module; "
            f"some adaptable module names: {sample}"
        )
    return targets


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _advice(shape: tuple[int, int], config: QPeftConfig, fused: bool) -> str:
    """What to change when a layer of ``shape`` (out x in) cannot be adapted: the rank, or the mapping."""
    widths = (shape[0] // (config.fused_num_parts if fused else 1), shape[1])
    if config.rank > min(widths):
        return (f". QPeftConfig.rank={config.rank} exceeds the width {min(widths)}: U and V have at most that many "
                f"orthonormal columns; allowed: rank <= {min(widths)}")
    if any(w & (w - 1) for w in widths):
        return ". For widths that are not powers of two use mapping='qsd' (Eq. 4) or 'pad' (see qpeft.unitary)"
    return ""


def inject(model: nn.Module, config: QPeftConfig) -> list[str]:
    """Replace every targeted layer by a ``QPeftLayer`` and wrap ``modules_to_save``; returns the adapted names."""
    names = []
    for name, module in find_targets(model, config):
        slices = fused_slices(name, config)
        try:
            layer = QPeftLayer(module, config, slices)
        except ValueError as err:
            shape = base_layer_shape(module)
            advice = _advice(shape, config, bool(slices))
            raise ValueError(f"cannot adapt {name!r} (out x in = {shape}): {err}{advice}") from err
        _set_submodule(model, name, layer)
        names.append(name)
    for name, module in list(model.named_modules()):
        if any(_suffix_match(name, s) for s in config.modules_to_save) and not isinstance(module, ModulesToSave):
            if ".qpeft_modules_to_save" in name or ".original_module" in name:
                continue
            _set_submodule(model, name, ModulesToSave(module))
    mark_only_adapter_trainable(model, config.bias)
    return names


def mark_only_adapter_trainable(model: nn.Module, bias: str = "none") -> None:
    """Freeze everything but ``qpeft_*`` parameters (and biases when ``bias="all"``)."""
    for name, param in model.named_parameters():
        param.requires_grad = ADAPTER_PREFIX in name or (bias == "all" and name.endswith("bias"))


def adapter_state_dict(model: nn.Module, bias: str = "none") -> dict[str, torch.Tensor]:
    """The trainable state only: ``qpeft_*`` tensors (and biases when ``bias="all"``)."""
    return {
        k: v
        for k, v in model.state_dict().items()
        if ADAPTER_PREFIX in k or (bias == "all" and k.endswith("bias") and ".original_module." not in k)
    }


def unitarity_errors(model: nn.Module) -> dict[str, float]:
    """``‖UᵀU − I‖_F`` of every adapted factor, keyed ``<module>.u<i>`` / ``<module>.v<i>`` (batched, one sync)."""
    named = [(n, m) for n, m in model.named_modules() if isinstance(m, QPeftLayer)]
    if not named:
        return {}
    names, layers = zip(*named)
    with torch.no_grad():
        built = FactorBatcher(checkpoint=False).build(list(layers))
    return factor_errors(names, layers, built)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)``; packed 4-bit weights count as the number of weights they hold."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel() * (2 if type(param).__name__ == "Params4bit" else 1)
        total += n
        trainable += n if param.requires_grad else 0
    return trainable, total


class QPeftModel(nn.Module):
    """A base model with Quantum-PEFT adapters, with the ergonomics of ``peft.PeftModel``.

    ``batch_factors`` (default on): ``forward`` builds the ``U``/``V`` of all adapter layers together,
    grouped by mapping and shape (``qpeft.batching``), instead of layer by layer (without gradients:
    only stale eval caches); same values and gradients.  ``checkpoint_factors`` (default on) rebuilds
    them in the backward instead of keeping their activations; ``compile_factors`` wraps the build in
    ``torch.compile``.

    ``guard`` (:class:`qpeft.guard.UnitarityGuard`) measures ``‖UᵀU − I‖_F`` of the factors every
    ``unitarity_check_every`` training forwards (on the factors that forward built: one host sync) and on
    the first evaluation forward after the parameters changed, and warns once per factor above
    ``unitarity_tolerance`` (``None``: never warn).  ``guard.max_error`` is the worst error seen.
    """

    def __init__(
        self,
        model: nn.Module,
        config: QPeftConfig,
        batch_factors: bool = True,
        checkpoint_factors: bool = True,
        compile_factors: bool = False,
        unitarity_tolerance: float | None = DEFAULT_TOLERANCE,
        unitarity_check_every: int = DEFAULT_CHECK_EVERY,
    ) -> None:
        super().__init__()
        self.base_model = model
        self.qpeft_config = config
        self.adapted_modules = inject(model, config)
        named = list(self.qpeft_layers())  # walked once, not every forward
        self._names = [name for name, _ in named]
        self._layers = [layer for _, layer in named]
        self.batch_factors = batch_factors
        self._batcher = FactorBatcher(checkpoint=checkpoint_factors, compile=compile_factors)
        self.guard = UnitarityGuard(tolerance=unitarity_tolerance, check_every=unitarity_check_every)
        self._training_forwards = 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        training = torch.is_grad_enabled()
        due = False
        if training:
            self._training_forwards += 1
            every = self.guard.check_every
            due = bool(every) and self._training_forwards % every == 0
        if not self.batch_factors:
            if due or (not training and any(stale_flags(self._active_layers()))):
                self.check_unitarity()
            return self.base_model(*args, **kwargs)
        with self._batcher.precomputed(self._layers) as built:
            if built and (due or not training):  # eval: only right after a rebuild
                index = [i for i, _ in built]
                self.guard.check([self._names[i] for i in index], [self._layers[i] for i in index],
                                 [factors for _, factors in built])
            return self.base_model(*args, **kwargs)

    def _active_layers(self) -> list[QPeftLayer]:
        return [layer for layer in self._layers if not (layer.merged or layer.disabled)]

    def check_unitarity(self) -> dict[str, float]:
        """Build every factor now (no gradient), feed :attr:`guard` (warns, tracks the maximum), return the errors."""
        with torch.no_grad():
            built = self._batcher.build(self._layers)
        return self.guard.check(self._names, self._layers, built)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or name == "base_model":
                raise
            return getattr(self._modules["base_model"], name)

    # ------------------------------------------------------------ inspection
    def qpeft_layers(self) -> Iterator[tuple[str, QPeftLayer]]:
        return ((n, m) for n, m in self.base_model.named_modules() if isinstance(m, QPeftLayer))

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        return count_parameters(self)

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")

    # ------------------------------------------------------------ state
    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        return adapter_state_dict(self.base_model, self.qpeft_config.bias)

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load adapter tensors; every expected key must be present and no unknown key may appear."""
        expected = set(self.adapter_state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise KeyError(f"adapter state mismatch: missing {missing[:5]} unexpected {unexpected[:5]}")
        self.base_model.load_state_dict(state, strict=False)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``adapter_config.json`` and ``adapter_model.safetensors`` (trainable tensors only, atomically)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        state = {k: v.detach().cpu().contiguous() for k, v in self.adapter_state_dict().items()}
        atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
        self.qpeft_config.save(directory)

    @classmethod
    def from_pretrained(cls, model: nn.Module, directory: str | Path, is_trainable: bool = False) -> QPeftModel:
        """Inject the saved config into ``model`` and load the saved adapter tensors."""
        from safetensors.torch import load_file

        weights = Path(directory) / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"no {WEIGHTS_NAME} in {directory} (expected beside {CONFIG_NAME})")
        config = QPeftConfig.from_pretrained(directory)
        try:  # before injecting, so that a damaged file leaves ``model`` untouched
            state = load_file(weights)
        except Exception as err:  # safetensors raises its own SafetensorError on a damaged header
            raise ValueError(f"{weights} is not a readable safetensors file ({type(err).__name__}: {err})") from err
        wrapped = cls(model, config)
        device = next(model.parameters()).device
        wrapped.load_adapter_state_dict({k: v.to(device) for k, v in state.items()})
        if not is_trainable:
            for param in wrapped.parameters():
                param.requires_grad = False
        return wrapped

    # ------------------------------------------------------------ merge / disable
    def merge_adapter(self, safe_merge: bool = False) -> None:
        for _, layer in self.qpeft_layers():
            layer.merge(safe_merge=safe_merge)

    def unmerge_adapter(self) -> None:
        for _, layer in self.qpeft_layers():
            layer.unmerge()

    def merge_and_unload(self, safe_merge: bool = False) -> nn.Module:
        """Merge every adapter into its base weight and return the plain base model (no wrappers left)."""
        for name, layer in list(self.qpeft_layers()):
            if not layer.merged:
                layer.merge(safe_merge=safe_merge)
            _set_submodule(self.base_model, name, layer.base_layer)
        for name, module in list(self.base_model.named_modules()):
            if isinstance(module, ModulesToSave):
                _set_submodule(self.base_model, name, module.qpeft_modules_to_save)
        return self.base_model

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Context in which the model computes exactly its base output."""
        switches = [m for m in self.base_model.modules() if isinstance(m, (QPeftLayer, ModulesToSave))]
        previous = [m.disabled for m in switches]
        for m in switches:
            m.disabled = True
        try:
            yield
        finally:
            for m, state in zip(switches, previous):
                m.disabled = state


def get_qpeft_model(model: nn.Module, config: QPeftConfig, **options: Any) -> QPeftModel:
    """Inject Quantum-PEFT adapters into ``model`` as ``config`` says; only adapter tensors stay trainable.

    ``options``: ``batch_factors``, ``checkpoint_factors``, ``compile_factors``, ``unitarity_tolerance``,
    ``unitarity_check_every`` of :class:`QPeftModel`.
    """
    return QPeftModel(model, config, **options)
