"""Which tensors belong to which adapter, what they are called in a saved adapter, and which train.

In memory an adapter's tensors sit under ``<layer>.qpeft_adapters.<name>.`` (its ``U``, ``V``, ``λ``) and
``<module>.qpeft_modules_to_save.<name>.`` (its trained copy of a head).  A saved adapter drops the name,
so files do not depend on what the adapter was called (as in peft)::

    lin0.qpeft_adapters.default.qpeft_lambda         <->  lin0.qpeft_lambda
    classifier.qpeft_modules_to_save.default.weight  <->  classifier.qpeft_modules_to_save.weight

With ``bias="all"`` the (shared) biases of the base model are adapter state too, saved under their own
names.  Keys may carry peft's ``base_model.model.`` prefix; it is dropped when saving and optional when loading.
"""

from __future__ import annotations

import re

import torch
from torch import nn

PEFT_PREFIX = "base_model.model."
_ADAPTER_KEY = re.compile(r"(^|\.)(qpeft_adapters|qpeft_modules_to_save)\.([^.]+)\.")


def adapter_of(key: str) -> str | None:
    """The adapter a parameter or state-dict key belongs to, or ``None`` for base-model tensors."""
    match = _ADAPTER_KEY.search(key)
    return None if match is None else match.group(3)


def is_trained_bias(key: str, bias: str) -> bool:
    """With ``bias="all"``: every base-model bias except those of frozen originals of ``modules_to_save``."""
    return bias == "all" and key.endswith("bias") and adapter_of(key) is None and ".original_module." not in key


def saved_key(key: str, adapter_name: str, bias: str) -> str | None:
    """The name ``key`` has in a saved ``adapter_name`` (see the module docstring), or ``None`` if it is not
    part of that adapter."""
    key = key.removeprefix(PEFT_PREFIX)
    owner = adapter_of(key)
    if owner is None:
        return key if is_trained_bias(key, bias) else None
    if owner != adapter_name:
        return None

    def drop_name(match: re.Match) -> str:
        return match.group(1) + ("" if match.group(2) == "qpeft_adapters" else "qpeft_modules_to_save.")

    return _ADAPTER_KEY.sub(drop_name, key, count=1)


def load_map(model: nn.Module, adapter_name: str, bias: str) -> dict[str, str]:
    """``saved name -> key in model.state_dict()`` for every tensor of ``adapter_name``."""
    pairs = ((saved_key(key, adapter_name, bias), key) for key in model.state_dict())
    return {saved: key for saved, key in pairs if saved is not None}


def adapter_state_dict(model: nn.Module, bias: str = "none", adapter_name: str | None = None,
                       state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The trainable state of one adapter (default: the only or active one) under its saved names."""
    state = model.state_dict() if state_dict is None else state_dict
    name = adapter_name or active_adapter_name(model)
    pairs = ((saved_key(key, name, bias), value) for key, value in state.items())
    return {saved: value for saved, value in pairs if saved is not None}


def remap_for_load(model: nn.Module, state: dict[str, torch.Tensor], adapter_name: str,
                   bias: str) -> dict[str, torch.Tensor]:
    """A saved adapter's tensors under ``model``'s keys for ``adapter_name``; every expected key must be
    present and no other (``KeyError`` naming the first few)."""
    expected = load_map(model, adapter_name, bias)
    state = {k.removeprefix(PEFT_PREFIX): v for k, v in state.items()}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise KeyError(f"adapter state mismatch: missing {missing[:5]} unexpected {unexpected[:5]}")
    return {expected[k]: v for k, v in state.items()}


def load_adapter_state(model: nn.Module, state: dict[str, torch.Tensor], adapter_name: str, bias: str) -> None:
    """Load a saved adapter's tensors into ``adapter_name`` (see :func:`remap_for_load`)."""
    model.load_state_dict(remap_for_load(model, state, adapter_name, bias), strict=False)


def active_adapter_name(model: nn.Module) -> str | None:
    """The active adapter of the first adapted layer (``None`` when the model has none)."""
    return next((m.active_adapter for m in model.modules() if hasattr(m, "qpeft_adapters")), None)


def adapter_names(model: nn.Module) -> set[str]:
    """Every adapter name present on some layer or head copy of ``model``."""
    return {adapter_of(key) for key, _ in model.named_parameters()} - {None}


def keep_fixed_mappings_frozen(model: nn.Module) -> None:
    """Adapters built with ``train_mappings=False`` keep their U, V mappings frozen whatever was switched on:
    only their ``λ`` (and heads) train (``QPeftConfig.train_mappings``)."""
    for module in model.modules():
        if getattr(module, "train_mappings", True) is False:
            for mapping in module.mappings():
                mapping.requires_grad_(False)


def mark_only_adapter_trainable(model: nn.Module, bias: str = "none", adapter_name: str | None = None) -> None:
    """Freeze everything but the tensors of ``adapter_name`` (any adapter if ``None``) and, with
    ``bias="all"``, the base model's biases."""
    for name, param in model.named_parameters():
        owner = adapter_of(name)
        param.requires_grad = (owner is not None and adapter_name in (None, owner)) or is_trained_bias(name, bias)
    keep_fixed_mappings_frozen(model)


def set_adapter_trainable(model: nn.Module, adapter_name: str, trainable: bool) -> None:
    """Adapter tensors only: ``adapter_name``'s get ``requires_grad=trainable``, every other adapter's are frozen."""
    for name, param in model.named_parameters():
        owner = adapter_of(name)
        if owner is not None:
            param.requires_grad = trainable and owner == adapter_name
    keep_fixed_mappings_frozen(model)


def set_requires_grad(model: nn.Module, names: list[str], requires_grad: bool) -> None:
    """``requires_grad`` of the named adapters' tensors; nothing else changes."""
    for key, param in model.named_parameters():
        if adapter_of(key) in names:
            param.requires_grad = requires_grad
    keep_fixed_mappings_frozen(model)
