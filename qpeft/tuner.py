"""``QPeftTuner``: a base model with named Quantum-PEFT adapters, the role peft's ``LoraModel`` plays.

It owns the adapted model (``.model``), the configs by adapter name (``.peft_config``), which adapter
is active, and what happens around every forward pass: the batched build of all active layers' ``U``
and ``V`` (``qpeft.batching``, kept for the backward so activation checkpointing recomputes with the
same tensors) and the unitarity guard.  ``QPeftModel`` wraps it with peft's ``PeftModel`` API; peft's own
``PeftModel`` wraps it the same way when it loads a qpeft adapter (``qpeft.peft_interop``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from qpeft.batching import FactorBatcher
from qpeft.config import QPeftConfig
from qpeft.guard import DEFAULT_CHECK_EVERY, DEFAULT_TOLERANCE, UnitarityGuard
from qpeft.layers import ADAPTER_PREFIX, MERGE_4BIT_WARNING, ModulesToSave, QPeftLayer, stale_flags
from qpeft.state import PEFT_PREFIX, remap_for_load, saved_key, set_adapter_trainable, set_requires_grad


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def forward_attribute(module: nn.Module, name: str, child: str) -> Any:
    """``module``'s attribute ``name``, else the one of its submodule ``child`` (a wrapper that reads as what it
    wraps); private names and ``child`` itself are never forwarded, so a half-built wrapper cannot recurse."""
    try:
        return nn.Module.__getattr__(module, name)
    except AttributeError:
        if name.startswith("_") or name == child:
            raise
        return getattr(module._modules[child], name)


def check_adapter_name(name: Any) -> str:
    """A usable adapter name: a non-empty string without dots (it becomes a module name)."""
    if not isinstance(name, str) or not name or "." in name:
        raise ValueError(f"adapter_name={name!r} is invalid; allowed: a non-empty string without '.'")
    return name


class QPeftTuner(nn.Module):
    """The adapted model and its named adapters; ``forward`` runs ``model`` inside :meth:`_enable_peft_forward_hooks`.

    ``peft_config`` maps adapter names to their :class:`QPeftConfig`; exactly one adapter is active.
    ``batch_factors``, ``checkpoint_factors``, ``compile_factors``, ``unitarity_tolerance`` and
    ``unitarity_check_every`` are described in :class:`qpeft.QPeftModel`.
    """

    prefix = ADAPTER_PREFIX
    layer_class: type[QPeftLayer] = QPeftLayer

    def __init__(
        self,
        model: nn.Module,
        peft_config: dict[str, QPeftConfig],
        adapter_name: str = "default",
        low_cpu_mem_usage: bool = False,
        state_dict: dict[str, torch.Tensor] | None = None,
        *,
        batch_factors: bool = True,
        checkpoint_factors: bool = False,
        compile_factors: bool = False,
        unitarity_tolerance: float | None = DEFAULT_TOLERANCE,
        unitarity_check_every: int = DEFAULT_CHECK_EVERY,
    ) -> None:
        nn.Module.__init__(self)  # not super(): the peft flavour (qpeft.peft_interop) also derives from BaseTuner
        if not isinstance(peft_config, dict):
            raise TypeError(
                "qpeft adapters cannot be injected into a bare model (peft.inject_adapter_in_model, transformers' "
                "load_adapter / add_adapter): the batched factor build and the unitarity guard live on the wrapper. "
                "Use qpeft.QPeftModel.from_pretrained(model, path) or peft.PeftModel.from_pretrained(model, path)"
            )
        self.model = model
        self.peft_config: dict[str, QPeftConfig] = {}
        self.active_adapter = check_adapter_name(adapter_name)
        self.batch_factors = batch_factors
        self._batcher = FactorBatcher(checkpoint=checkpoint_factors, compile=compile_factors)
        self.guard = UnitarityGuard(tolerance=unitarity_tolerance, check_every=unitarity_check_every)
        self._training_forwards = 0
        self._in_forward = False
        self._names: list[str] = []
        self._layers: list[QPeftLayer] = []
        for name, config in peft_config.items():
            self.peft_config[check_adapter_name(name)] = config
            self.inject_adapter(model, name, low_cpu_mem_usage=low_cpu_mem_usage, state_dict=state_dict)
        inference_mode = self.peft_config[adapter_name].inference_mode
        self.set_adapter(adapter_name, inference_mode=inference_mode)
        if inference_mode:
            model.requires_grad_(False)  # biases trained with bias="all" too

    def __getattr__(self, name: str) -> Any:
        return forward_attribute(self, name, "model")

    # ------------------------------------------------------------ adapters
    @property
    def active_adapters(self) -> list[str]:
        return [self.active_adapter]

    def inject_adapter(self, model: nn.Module, adapter_name: str, autocast_adapter_dtype: bool = True,
                       low_cpu_mem_usage: bool = False, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Add ``self.peft_config[adapter_name]`` to ``model`` (peft's ``BaseTuner`` contract); it stays inactive
        unless it is the first adapter."""
        from qpeft.model import inject  # qpeft.model imports this module

        if low_cpu_mem_usage or state_dict is not None:
            raise NotImplementedError("qpeft does not support low_cpu_mem_usage=True or injecting from a state_dict")
        config = self.peft_config[adapter_name]
        if config.base_model_name_or_path is None:
            config.base_model_name_or_path = getattr(model, "name_or_path", None) or None
        inject(model, config, adapter_name, self.layer_class)
        self._refresh()

    def _refresh(self) -> None:
        """Walk the model for its adapted layers once per change, not every forward."""
        named = [(n, m) for n, m in self.model.named_modules() if isinstance(m, QPeftLayer)]
        self._names, self._layers = [n for n, _ in named], [m for _, m in named]

    def _wrappers(self) -> list[tuple[str, QPeftLayer | ModulesToSave]]:
        return [(n, m) for n, m in self.model.named_modules() if isinstance(m, (QPeftLayer, ModulesToSave))]

    def _switches(self) -> list[QPeftLayer | ModulesToSave]:
        return [m for _, m in self._wrappers()]

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        """Make ``adapter_name`` the active adapter: trainable unless ``inference_mode``, every other one frozen."""
        if isinstance(adapter_name, (list, tuple)):
            if len(adapter_name) != 1:
                raise ValueError(f"qpeft runs one active adapter at a time, got {list(adapter_name)}")
            adapter_name = adapter_name[0]
        if adapter_name not in self.peft_config:
            raise ValueError(f"adapter {adapter_name!r} not found; available: {sorted(self.peft_config)}")
        for module in self._switches():
            module.set_adapter(adapter_name)
        self.active_adapter = adapter_name
        set_adapter_trainable(self.model, adapter_name, not inference_mode)

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove ``adapter_name`` everywhere; layers and heads left without adapters are unwrapped."""
        if adapter_name not in self.peft_config:
            raise ValueError(f"adapter {adapter_name!r} not found; available: {sorted(self.peft_config)}")
        if len(self.peft_config) == 1:
            raise ValueError(f"adapter {adapter_name!r} is the only one; use unload() to remove it")
        for name, module in self._wrappers():
            adapters = module.qpeft_adapters if isinstance(module, QPeftLayer) else module.qpeft_modules_to_save
            if adapter_name in adapters:
                module.delete_adapter(adapter_name)
            if not len(adapters) and not getattr(module, "merged", False):  # nothing left on it
                plain = module.base_layer if isinstance(module, QPeftLayer) else module.original_module
                set_submodule(self.model, name, plain)
        del self.peft_config[adapter_name]
        self._refresh()
        if self.active_adapter == adapter_name:
            remaining = next(iter(self.peft_config))
            warnings.warn(f"adapter {adapter_name!r} was active and is deleted; active adapter is now {remaining!r}",
                          stacklevel=2)
            self.set_adapter(remaining)

    def set_requires_grad(self, adapter_names: str | list[str], requires_grad: bool = True) -> None:
        """Set ``requires_grad`` of the named adapters' tensors (peft's API)."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        unknown = sorted(set(names) - set(self.peft_config))
        if unknown:
            raise ValueError(f"adapter(s) {unknown} not found; available: {sorted(self.peft_config)}")
        set_requires_grad(self.model, names, requires_grad)

    def enable_adapter_layers(self) -> None:
        for module in self._switches():
            module.disabled = False

    def disable_adapter_layers(self) -> None:
        for module in self._switches():
            module.disabled = True

    # ------------------------------------------------------------ merge / unload
    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        """``W ← W + ΔW`` of the named adapters (default: the active one) in every layer that has them."""
        names = adapter_names or [self.active_adapter]
        unknown = sorted(set(names) - set(self.peft_config))
        if unknown:
            raise ValueError(f"adapter(s) {unknown} not found; available: {sorted(self.peft_config)}")
        todo = [(layer, [n for n in names if n in layer.qpeft_adapters and n not in layer.merged_adapters])
                for layer in self._layers]
        todo = [(layer, present) for layer, present in todo if present]
        quantized = sum(layer.kind == "linear4bit" for layer, _ in todo)
        if quantized:
            warnings.warn(MERGE_4BIT_WARNING.format(n=quantized), stacklevel=2)
        for layer, present in todo:
            layer.merge(safe_merge=safe_merge, adapter_names=present, warn_4bit=False)

    def unmerge_adapter(self) -> None:
        for layer in self._layers:
            if layer.merged:
                layer.unmerge()

    def merge_and_unload(self, progressbar: bool = False, safe_merge: bool = False,
                         adapter_names: list[str] | None = None) -> nn.Module:
        """Merge the named adapters (default: the active one) and return the plain base model (no wrappers left)."""
        self.merge_adapter(adapter_names, safe_merge=safe_merge)
        return self.unload()

    def unload(self) -> nn.Module:
        """The base model without any wrapper (merged updates stay in ``W``; heads keep the active copy, as in peft)."""
        for name, module in self._wrappers():
            module.disabled = False
            plain = module.base_layer if isinstance(module, QPeftLayer) else module.active_module
            set_submodule(self.model, name, plain)
        self._refresh()
        return self.model

    # ------------------------------------------------------------ forward
    def qpeft_layers(self) -> Iterator[tuple[str, QPeftLayer]]:
        return ((n, m) for n, m in self.model.named_modules() if isinstance(m, QPeftLayer))

    def _active_layers(self) -> list[QPeftLayer]:
        return [layer for layer in self._layers if layer.active]

    def check_unitarity(self) -> dict[str, float]:
        """Build every active adapter's factors now (no gradient), feed :attr:`guard`, return the errors."""
        named = [(n, m) for n, m in zip(self._names, self._layers) if m.active_adapter is not None]
        with torch.no_grad():
            built = self._batcher.build([m for _, m in named])
        return self.guard.check([n for n, _ in named], [m for _, m in named], built)

    @contextlib.contextmanager
    def _enable_peft_forward_hooks(self, *args: Any, **kwargs: Any) -> Iterator[None]:
        """Around one forward pass of ``model`` (peft's ``PeftModel`` enters it too): the batched factors of
        every active layer, kept for that pass's backward, and the unitarity guard.  Re-entering is a no-op."""
        if self._in_forward:
            yield
            return
        self._in_forward = True
        try:
            with self._factors_for_one_pass():
                yield
        finally:
            self._in_forward = False

    @contextlib.contextmanager
    def _factors_for_one_pass(self) -> Iterator[None]:
        training = torch.is_grad_enabled()
        due = False
        if training:
            self._training_forwards += 1
            every = self.guard.check_every
            due = bool(every) and self._training_forwards % every == 0
        if not self.batch_factors:
            if due or (not training and any(stale_flags(self._active_layers()))):
                self.check_unitarity()
            yield
            return
        with self._batcher.precomputed(self._layers) as session:
            if session.built and (due or not training):  # eval: only right after a rebuild
                self.guard.check([self._names[i] for i in session.index], session.layers, session.built)
            hook = self.model.register_forward_hook(lambda module, args, output: session.keep_for_backward(output))
            try:
                yield
            finally:
                hook.remove()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with self._enable_peft_forward_hooks(*args, **kwargs):
            return self.model(*args, **kwargs)

    # ------------------------------------------------------------ peft's state-dict hooks
    @classmethod
    def _get_adapter_state_dict(cls, model: nn.Module, config: QPeftConfig, adapter_name: str,
                                state_dict: dict[str, torch.Tensor], unwanted_adapter_names: list[str]
                                ) -> dict[str, torch.Tensor]:
        """peft's hook: the entries of ``state_dict`` that belong to ``adapter_name`` (keys unchanged)."""
        return {k: v for k, v in state_dict.items() if saved_key(k, adapter_name, config.bias) is not None}

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        """peft's hook: the saved name of an adapter key (peft's ``base_model.model.`` prefix kept)."""
        prefix = PEFT_PREFIX if key.startswith(PEFT_PREFIX) else ""
        return prefix + (saved_key(key, adapter_name, "all") or key.removeprefix(prefix))

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model: nn.Module, config: QPeftConfig, adapter_name: str,
                                           state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """peft's hook: saved names -> this model's keys; every adapter tensor must be present and nothing else.
        A packed adapter (``save_pretrained(quantized=True)``) is unpacked to its quantized values first, and for
        inference (peft's ``is_trainable=False``) its quantizers are frozen, as ``QPeftModel.from_pretrained`` does."""
        from qpeft.packing import unpack_for_load

        state_dict = unpack_for_load(model, state_dict, adapter_name, config.bias, freeze=config.inference_mode)
        return remap_for_load(model, state_dict, adapter_name, config.bias)

    def supports_lora_conversion(self, adapter_name: str = "default") -> bool:
        """Yes, exactly: ``QPeftModel.save_pretrained(path, as_lora=True)`` (peft's own ``convert_to_lora`` does
        not know qpeft layers)."""
        return True
