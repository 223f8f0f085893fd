"""Injection and the peft-style model wrapper: ``get_qpeft_model``, save/load, named adapters, merge, disable."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qpeft.batching import FactorBatcher
from qpeft.config import ALL_LINEAR, PEFT_TYPE, QPeftConfig
from qpeft.guard import UnitarityGuard, factor_errors
from qpeft.io import atomic_write
from qpeft.layers import ModulesToSave, QPeftLayer, base_layer_kind, base_layer_shape
from qpeft.peft_hook import peft_installed
from qpeft.state import (
    PEFT_PREFIX,
    adapter_names,
    adapter_state_dict,
    load_adapter_state,
    mark_only_adapter_trainable,
    set_requires_grad,
)
from qpeft.targets import head_names, in_layers, name_matches, rank_and_alpha, suffix_match
from qpeft.tuner import QPeftTuner, check_adapter_name, forward_attribute, set_submodule

WEIGHTS_NAME = "adapter_model.safetensors"
DEFAULT_ADAPTER = "default"


def is_target(name: str, config: QPeftConfig) -> bool:
    """Whether module ``name`` is targeted by its name (peft's rules, see ``qpeft.targets``): ``exclude_modules``
    and ``modules_to_save`` (and everything below them) never are; ``"all-linear"`` leaves it to the module type."""
    if config.exclude_modules and name_matches(name, config.exclude_modules):
        return False
    parts = name.split(".")
    if any(suffix_match(".".join(parts[:i]), s) for s in config.modules_to_save for i in range(1, len(parts) + 1)):
        return False
    if config.target_modules == ALL_LINEAR:
        return True
    return name_matches(name, config.target_modules) and in_layers(name, config)


def fused_slices(name: str, config: QPeftConfig) -> list[int] | None:
    """The output slices to adapt when ``name`` is a fused projection, else ``None`` (whole layer)."""
    for suffix, parts in config.fused_modules.items():
        if suffix_match(name, suffix):
            return sorted(parts)
    return None


def find_targets(model: nn.Module, config: QPeftConfig) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every module the config targets; raises if one is unsupported or none match."""
    targets = []
    heads = head_names(model, config) if config.target_modules == ALL_LINEAR else set()
    for name, module in model.named_modules():
        inside = any(part in name for part in (".base_layer", ".qpeft_", ".original_module"))  # adapter internals
        if not name or inside or name in heads or not is_target(name, config):
            continue
        if isinstance(module, QPeftLayer):  # adapted by another adapter: this one is added beside it
            targets.append((name, module))
            continue
        if base_layer_kind(module) is None:
            if config.target_modules == ALL_LINEAR or any(base_layer_kind(child) for child in module.children()):
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


def _add_adapter(module: nn.Module, config: QPeftConfig, slices: list[int] | None, adapter_name: str,
                 rank: int, alpha: float, layer_class: type[QPeftLayer]) -> QPeftLayer:
    """``module`` (already a ``QPeftLayer``) with adapter ``adapter_name`` added, or a new ``QPeftLayer`` around it."""
    if isinstance(module, QPeftLayer):
        module.add_adapter(adapter_name, config, slices, rank, alpha)
        return module
    return layer_class(module, config, slices, adapter_name, rank, alpha)


def _advice(shape: tuple[int, int], config: QPeftConfig, fused: bool, rank: int | None = None) -> str:
    """What to change when a layer of ``shape`` (out x in) cannot be adapted: the rank, or the mapping."""
    if config.network != "ttd":
        return ""  # a tensor network's own error names its option (rank, fold, factors, ...)
    rank = rank or config.rank
    widths = (shape[0] // (config.fused_num_parts if fused else 1), shape[1])
    if rank > min(widths):
        return (f". QPeftConfig.rank={rank} exceeds the width {min(widths)}: U and V have at most that many "
                f"orthonormal columns; allowed: rank <= {min(widths)}")
    if any(w & (w - 1) for w in widths):
        return ". For widths that are not powers of two use mapping='qsd' (Eq. 4) or 'pad' (see qpeft.unitary)"
    return ""


def inject(model: nn.Module, config: QPeftConfig, adapter_name: str = DEFAULT_ADAPTER,
           layer_class: type[QPeftLayer] = QPeftLayer) -> list[str]:
    """Add adapter ``adapter_name`` to every targeted layer (wrapping it in a ``layer_class`` the first time)
    and to ``modules_to_save``; returns the adapted names.

    The model's first adapter leaves only its own tensors trainable; a later one is added frozen and
    inactive (peft's ``add_adapter``), see :meth:`QPeftModel.set_adapter`.
    """
    if adapter_name in adapter_names(model):
        raise ValueError(f"the model already has an adapter named {adapter_name!r}; use another name, or unload() "
                         "the adapted model first")
    names = []
    for name, module in find_targets(model, config):
        slices = fused_slices(name, config)
        rank, alpha = rank_and_alpha(name, config)
        try:
            layer = _add_adapter(module, config, slices, adapter_name, rank, alpha, layer_class)
        except ValueError as err:
            shape = base_layer_shape(module)
            advice = _advice(shape, config, bool(slices), rank)
            raise ValueError(f"cannot adapt {name!r} (out x in = {shape}): {err}{advice}") from err
        if layer is not module:
            set_submodule(model, name, layer)
        names.append(name)
    for name, module in list(model.named_modules()):
        if any(suffix_match(name, s) for s in config.modules_to_save):
            if isinstance(module, ModulesToSave):
                module.add_adapter(adapter_name)
            elif ".qpeft_modules_to_save" not in name and ".original_module" not in name:
                set_submodule(model, name, ModulesToSave(module, adapter_name))
    if adapter_names(model) == {adapter_name}:
        mark_only_adapter_trainable(model, config.bias)
    else:  # nothing else changes trainability
        set_requires_grad(model, [adapter_name], False)
    return names


def unitarity_errors(model: nn.Module) -> dict[str, float]:
    """``‖UᵀU − I‖_F`` of every adapted factor, keyed ``<module>.u<i>`` / ``<module>.v<i>`` (batched, one sync)."""
    named = [(n, m) for n, m in model.named_modules() if isinstance(m, QPeftLayer) and m.active_adapter is not None]
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


#: The keyword options of :class:`QPeftModel` (those of :class:`QPeftTuner`).
OPTIONS = tuple(p.name for p in inspect.signature(QPeftTuner.__init__).parameters.values() if p.kind is p.KEYWORD_ONLY)


def _on_tuner(name: str, doc: str) -> property:
    """A read/write view of the tuner's attribute ``name`` (where the forward-time state lives)."""
    return property(lambda self: getattr(self.base_model, name),
                    lambda self, value: setattr(self.base_model, name, value), doc=doc)


def _unsupported(name: str, reason: str) -> Any:
    """A method that raises: a peft / transformers API qpeft cannot serve, with the reason."""

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{name}() is not supported by qpeft: {reason}")

    method.__name__ = name
    method.__doc__ = f"Not supported by qpeft: {reason}"
    return method


class QPeftModel(nn.Module):
    """A base model with Quantum-PEFT adapters, with the API of ``peft.PeftModel``.

    Laid out like peft's: ``base_model`` is the :class:`qpeft.tuner.QPeftTuner` (peft's ``LoraModel`` role),
    ``get_base_model()`` the wrapped model.  When peft is installed an instance *is* a ``peft.PeftModel``
    (``QPeftModel(...)`` returns the subclass in ``qpeft.peft_interop``), so ``transformers.Trainer``
    treats it as the adapter it is: signature columns and labels from the base model, adapter-only
    ``save_model`` / checkpoints, ``resume_from_checkpoint`` through :meth:`load_adapter`.

    Several named adapters can live side by side (:meth:`add_adapter`, :meth:`set_adapter`,
    :meth:`delete_adapter`); one is active.  ``adapter_name`` names the first.

    ``batch_factors`` (default on): ``forward`` builds the ``U``/``V`` of all adapter layers together,
    grouped by mapping and shape (``qpeft.batching``), instead of layer by layer (without gradients:
    only stale eval caches); same values and gradients.  ``checkpoint_factors`` (default off) rebuilds
    them in the backward instead of keeping their activations (measured trade-off:
    ``qpeft.batching.FactorBatcher``); ``compile_factors`` wraps the build in ``torch.compile``.

    ``guard`` (:class:`qpeft.guard.UnitarityGuard`) measures ``‖UᵀU − I‖_F`` of the factors every
    ``unitarity_check_every`` training forwards (on the factors that forward built: one host sync) and on
    the first evaluation forward after the parameters changed, and warns once per factor above
    ``unitarity_tolerance`` (``None``: never warn).  ``guard.max_error`` is the worst error seen.
    """

    peft_type = PEFT_TYPE
    tuner_class: type[QPeftTuner] = QPeftTuner

    def __new__(cls, *args: Any, **kwargs: Any) -> QPeftModel:
        if cls is QPeftModel and peft_installed():
            from qpeft.peft_interop import QPeftModel as cls  # the same class, also a peft.PeftModel
        return super().__new__(cls)

    def __init__(self, model: nn.Module, config: QPeftConfig, adapter_name: str = DEFAULT_ADAPTER,
                 **options: Any) -> None:
        nn.Module.__init__(self)  # not super(): the peft flavour also derives from peft.PeftModel
        self.base_model = self.tuner_class(model, {adapter_name: config}, adapter_name, **options)
        self._adapters_disabled = False

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("adapter_names") is not None:
            raise NotImplementedError("forward(adapter_names=...) (mixed adapter batches) is not supported by qpeft")
        kwargs.pop("adapter_names", None)
        return self.base_model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """The base model's ``generate`` with the adapter factors built once for all its steps."""
        with self.base_model._enable_peft_forward_hooks():
            return self.get_base_model().generate(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return forward_attribute(self, name, "base_model")

    # ------------------------------------------------------------ peft's attributes
    @property
    def peft_config(self) -> dict[str, QPeftConfig]:
        """Adapter name -> config."""
        return self.base_model.peft_config

    @peft_config.setter
    def peft_config(self, value: Any) -> None:
        types = {getattr(c, "peft_type", None) for c in dict(value).values()}
        foreign = sorted({str(getattr(t, "value", t)) for t in types} - {PEFT_TYPE})
        raise TypeError(
            f"a QPeftModel cannot be wrapped by another peft tuner ({', '.join(foreign) or 'QPEFT'}): peft freezes "
            "every parameter but its own and has now modified this model; rebuild it. To combine methods, "
            "merge_and_unload() the qpeft adapter first and wrap the plain model; for a second qpeft adapter use "
            "add_adapter()"
        )

    @property
    def active_adapter(self) -> str:
        return self.base_model.active_adapter

    @property
    def active_adapters(self) -> list[str]:
        return self.base_model.active_adapters

    @property
    def active_peft_config(self) -> QPeftConfig:
        return self.peft_config[self.active_adapter]

    @property
    def qpeft_config(self) -> QPeftConfig:
        """The active adapter's config."""
        return self.active_peft_config

    @property
    def has_active_enabled_adapter(self) -> bool:
        return not self._adapters_disabled

    @property
    def modules_to_save(self) -> set[str] | None:
        names = {m for config in self.peft_config.values() for m in config.modules_to_save}
        return names or None

    @property
    def base_model_torch_dtype(self) -> torch.dtype | None:
        return getattr(self.get_base_model(), "dtype", None)

    @property
    def adapted_modules(self) -> list[str]:
        """Names of the layers that carry the active adapter."""
        return [n for n, layer in self.qpeft_layers() if layer.active_adapter == self.active_adapter]

    @property
    def guard(self) -> UnitarityGuard:
        return self.base_model.guard

    _training_forwards = _on_tuner("_training_forwards", "Training forwards so far: the guard's check cadence "
                                   "(the harness saves and restores it on resume).")
    batch_factors = _on_tuner("batch_factors", "Whether forward builds the factors in batched calls.")

    def get_base_model(self) -> nn.Module:
        """The wrapped model (with the adapter layers in it)."""
        return self.base_model.model

    def check_unitarity(self) -> dict[str, float]:
        """Build every factor now (no gradient), feed :attr:`guard` (warns, tracks the maximum), return the errors."""
        return self.base_model.check_unitarity()

    def prepare_model_for_gradient_checkpointing(self, model: nn.Module) -> nn.Module:
        """As peft: with checkpointing on, make the embeddings' output require grad so reentrant checkpoints
        propagate to the adapters of a frozen model."""
        if getattr(model, "is_gradient_checkpointing", False) and hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
        return model

    def supports_lora_conversion(self, adapter_name: str = DEFAULT_ADAPTER) -> bool:
        return self.base_model.supports_lora_conversion(adapter_name)

    get_prompt = _unsupported("get_prompt", "Quantum-PEFT is not a prompt-learning method")
    get_prompt_embedding_to_save = _unsupported("get_prompt_embedding_to_save", "no prompt embeddings")
    get_layer_status = _unsupported("get_layer_status", "it needs peft installed; see qpeft_layers()")
    get_model_status = _unsupported("get_model_status", "it needs peft installed; see qpeft_layers()")
    enable_peft_hotswap = _unsupported("enable_peft_hotswap", "hotswapping is peft's LoRA feature")

    # ------------------------------------------------------------ inspection
    def qpeft_layers(self) -> Iterator[tuple[str, QPeftLayer]]:
        return self.base_model.qpeft_layers()

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        return count_parameters(self)

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")

    # ------------------------------------------------------------ named adapters
    def add_adapter(self, adapter_name: str, peft_config: QPeftConfig, low_cpu_mem_usage: bool = False,
                    autocast_adapter_dtype: bool = True) -> None:
        """Add a new adapter (peft's signature); it is frozen and inactive until :meth:`set_adapter`."""
        if not isinstance(peft_config, QPeftConfig):
            raise TypeError(f"add_adapter(adapter_name, peft_config) needs a QPeftConfig, got "
                            f"{type(peft_config).__name__} (qpeft adapters only; note peft's argument order)")
        if check_adapter_name(adapter_name) in self.peft_config:
            raise ValueError(f"adapter {adapter_name!r} already exists")
        self.peft_config[adapter_name] = peft_config
        try:
            self.base_model.inject_adapter(self.get_base_model(), adapter_name, low_cpu_mem_usage=low_cpu_mem_usage)
        except Exception:
            del self.peft_config[adapter_name]
            raise

    def set_adapter(self, adapter_name: str, inference_mode: bool = False) -> None:
        """Make ``adapter_name`` active (trainable unless ``inference_mode``); every other adapter is frozen."""
        self.base_model.set_adapter(adapter_name, inference_mode=inference_mode)

    def delete_adapter(self, adapter_name: str) -> None:
        self.base_model.delete_adapter(adapter_name)

    def set_requires_grad(self, adapter_names: str | list[str], requires_grad: bool = True) -> None:
        self.base_model.set_requires_grad(adapter_names, requires_grad)

    # ------------------------------------------------------------ state
    def adapter_state_dict(self, adapter_name: str | None = None,
                           state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """One adapter's tensors (default: the active one) under their saved names (``qpeft.state``).

        ``state_dict``: take the values from this full state dict (e.g. the one Trainer gathered) instead."""
        name = adapter_name or self.active_adapter
        if state_dict is not None:
            state_dict = {k.removeprefix("base_model.").removeprefix("model."): v for k, v in state_dict.items()
                          if k.startswith(PEFT_PREFIX)}
        return adapter_state_dict(self.get_base_model(), self.peft_config[name].bias, name, state_dict)

    get_adapter_state_dict = adapter_state_dict  # transformers' name

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor], adapter_name: str | None = None) -> None:
        """Load adapter tensors; every expected key must be present and no unknown key may appear."""
        name = adapter_name or self.active_adapter
        load_adapter_state(self.get_base_model(), state, name, self.peft_config[name].bias)

    def save_pretrained(self, save_directory: str | Path, safe_serialization: bool = True,
                        selected_adapters: list[str] | None = None, is_main_process: bool = True,
                        state_dict: dict[str, torch.Tensor] | None = None, as_lora: bool = False,
                        quantized: bool = False, **kwargs: Any) -> None:
        """Write each adapter as ``adapter_config.json`` + ``adapter_model.safetensors`` + ``README.md`` (the
        ``default`` adapter in ``save_directory``, others in ``save_directory/<name>``, as peft does).

        ``quantized=True`` (adapters trained with QAT, ``quant_bits`` set) stores the fake-quantized tensors as
        packed ``B``-bit integers with FP16 scale and zero per group (:mod:`qpeft.packing`): ``B + 32/G`` bits
        per parameter; :meth:`from_pretrained` restores exactly the values the model trained with.
        ``as_lora=True`` writes an exact peft LoRA adapter instead (``qpeft.lora_export``), which plain peft
        loads without qpeft.  ``state_dict`` (Trainer passes the gathered one) supplies the values.
        """
        from safetensors.torch import save_file

        from qpeft.lora_export import save_as_lora
        from qpeft.packing import adapter_codes, pack_state

        unknown = sorted(k for k, v in kwargs.items() if v not in (None, False, "auto"))
        if unknown or not safe_serialization:
            raise TypeError(f"save_pretrained: {unknown or ['safe_serialization=False']} not supported by qpeft "
                            "(it writes safetensors adapters only)")
        names = list(self.peft_config) if selected_adapters is None else list(selected_adapters)
        missing = sorted(set(names) - set(self.peft_config))
        if missing:
            raise ValueError(f"selected_adapters {missing} not found; available: {sorted(self.peft_config)}")
        if as_lora and quantized:
            raise ValueError("save_pretrained: as_lora=True and quantized=True exclude each other (a LoRA export "
                             "holds float factors)")
        unquantized = sorted(n for n in names if quantized and self.peft_config[n].quant_bits is None)
        if unquantized:
            raise ValueError(f"save_pretrained(quantized=True): adapter(s) {unquantized} have QPeftConfig.quant_bits="
                             "None (no QAT, nothing to pack); train with quant_bits set or save with quantized=False")
        if not is_main_process:
            return
        for name in names:
            directory = Path(save_directory) if name == DEFAULT_ADAPTER else Path(save_directory) / name
            if as_lora:
                save_as_lora(self, directory, name)
                continue
            state = {k: v.detach().cpu().contiguous() for k, v in self.adapter_state_dict(name, state_dict).items()}
            if quantized:
                config = self.peft_config[name]
                codes = adapter_codes(self.get_base_model(), state, name, config.bias)
                state = pack_state({k: v for k, v in state.items() if k not in codes}, codes, config.quant_group_size)
            atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
            saved = QPeftConfig.from_dict({**self.peft_config[name].to_dict(), "inference_mode": True})
            saved.save(directory)
            self.create_or_update_model_card(directory, name, quantized)

    def create_or_update_model_card(self, output_dir: str | Path, adapter_name: str | None = None,
                                    quantized: bool = False) -> None:
        """``README.md`` beside the adapter: method, mapping, rank, targets, size, storage, and how to load it."""
        from qpeft.hub import model_card, write_model_card

        name = adapter_name or self.active_adapter
        config = self.peft_config[name]
        (_, map_u, _), (_, map_v, _) = config._mapping_specs()  # a network's node mappings
        count = sum(v.numel() for v in self.adapter_state_dict(name).values())
        nonlinearity = f", outer nonlinearity `{config.nonlinearity}`" if config.nonlinearity else ""
        if quantized:
            rule = f"adaptive bit loading γ = {config.quant_gamma:g} ({config.quant_rule})" if config.quant_gamma else "uniform"
            storage = (f"packed {config.quant_bits}-bit intrinsic parameters, FP16 scale and zero per group of "
                       f"{config.quant_group_size} ({rule}); `qpeft.packing`")
        else:
            storage = "float tensors" + (" (QAT-trained: the forward quantizes them)" if config.quant_bits else "")
        body = f"""
Quantum-PEFT adapter (Koike-Akino et al., ICLR 2025) trained with `qpeft`:
ΔW = (α/K)·U·diag(λ)·Vᵀ with U, V generated by unitary mappings.

- base model: {config.base_model_name_or_path or "not recorded"}
- mapping: U `{map_u}`, V `{map_v}`; rank K = {config.rank}, alpha = {config.alpha:g}
- tensor network: `{config.network}` (core: {config.core}){nonlinearity}
- target modules: `{config.target_modules}`; modules to save: `{config.modules_to_save}`
- adapter tensors: {count:,d} parameters
- storage: {storage}

Load it with qpeft, or with peft once `qpeft` is imported:

```python
import qpeft  # registers the QPEFT adapter type with peft
from peft import PeftModel

model = PeftModel.from_pretrained(base_model, "<this directory>")  # or qpeft.QPeftModel.from_pretrained
```

`model.save_pretrained(path, as_lora=True)` writes the same update as an exact LoRA adapter for tools
that only know LoRA.
"""
        tags = ["qpeft", "quantum-peft", f"mapping:{map_u}"]
        if config.base_model_name_or_path:
            tags.append(f"base_model:adapter:{config.base_model_name_or_path}")
        write_model_card(output_dir, model_card("Quantum-PEFT", config.base_model_name_or_path, tags, body))

    def push_to_hub(self, repo_id: str, commit_message: str | None = None, private: bool | None = None,
                    token: str | bool | None = None, revision: str | None = None, create_pr: bool = False,
                    selected_adapters: list[str] | None = None, as_lora: bool = False) -> Any:
        """Upload the adapter only (what :meth:`save_pretrained` writes, never the base model) to ``repo_id``."""
        from qpeft.hub import push_folder

        return push_folder(lambda d: self.save_pretrained(d, selected_adapters=selected_adapters, as_lora=as_lora),
                           repo_id, commit_message, private, token, revision, create_pr)

    @classmethod
    def from_pretrained(cls, model: nn.Module, model_id: str | Path, adapter_name: str = DEFAULT_ADAPTER,
                        is_trainable: bool = False, config: QPeftConfig | None = None, subfolder: str | None = None,
                        **kwargs: Any) -> QPeftModel:
        """Inject the saved adapter into ``model`` and load its tensors; in eval mode and frozen unless
        ``is_trainable`` (as peft).  ``model_id``: a directory or a Hub repo; ``kwargs``: the options of
        :class:`QPeftModel` and download options (``revision``, ``token``, ...)."""
        options = {k: kwargs.pop(k) for k in OPTIONS if k in kwargs}
        state = _read_weights(model_id, subfolder, **kwargs)  # before injecting: a damaged file leaves model untouched
        config = config or QPeftConfig.from_pretrained(model_id, subfolder, **kwargs)
        config.inference_mode = not is_trainable
        wrapped = cls(model, config, adapter_name, **options)
        wrapped._load_weights(state, adapter_name, is_trainable, kwargs.get("torch_device"))
        return wrapped

    def load_adapter(self, model_id: str | Path, adapter_name: str, is_trainable: bool = False,
                     torch_device: str | None = None, subfolder: str | None = None, **kwargs: Any) -> None:
        """Load a saved adapter as ``adapter_name`` (added if new, else its tensors are overwritten: Trainer's
        resume); frozen and the model in eval mode unless ``is_trainable``."""
        for option in ("low_cpu_mem_usage", "ephemeral_gpu_offload"):
            if kwargs.pop(option, False):
                raise NotImplementedError(f"load_adapter({option}=True) is not supported by qpeft")
        state = _read_weights(model_id, subfolder, **kwargs)
        if adapter_name not in self.peft_config:
            config = QPeftConfig.from_pretrained(model_id, subfolder, **kwargs)
            config.inference_mode = not is_trainable
            self.add_adapter(adapter_name, config)
        self._load_weights(state, adapter_name, is_trainable, torch_device)

    def _load_weights(self, state: dict[str, torch.Tensor], adapter_name: str, is_trainable: bool,
                      device: str | None) -> None:
        """Load a saved adapter's tensors; a packed one (``save_pretrained(quantized=True)``) is unpacked, and
        unless ``is_trainable`` its quantizers are frozen so that the outputs are bit-exactly the trained ones
        (a trainable load goes on with QAT from the restored values)."""
        from qpeft.packing import unpack_for_load

        state = unpack_for_load(self.get_base_model(), state, adapter_name, self.peft_config[adapter_name].bias,
                                freeze=not is_trainable)
        device = device or next(self.get_base_model().parameters()).device
        self.load_adapter_state_dict({k: v.to(device) for k, v in state.items()}, adapter_name)
        self.set_requires_grad(adapter_name, is_trainable)
        if not is_trainable:
            self.eval()

    # ------------------------------------------------------------ merge / disable
    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        self.base_model.merge_adapter(adapter_names, safe_merge=safe_merge)

    def unmerge_adapter(self) -> None:
        self.base_model.unmerge_adapter()

    def merge_and_unload(self, progressbar: bool = False, safe_merge: bool = False,
                         adapter_names: list[str] | None = None) -> nn.Module:
        """Merge the adapters (default: the active one) into their base weights and return the plain base model."""
        return self.base_model.merge_and_unload(progressbar, safe_merge, adapter_names)

    def unload(self) -> nn.Module:
        """The base model without adapter layers, nothing merged."""
        return self.base_model.unload()

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Context in which the model computes exactly its base output."""
        switches = self.base_model._switches()
        previous = [m.disabled for m in switches]
        self.base_model.disable_adapter_layers()
        self._adapters_disabled = True
        try:
            yield
        finally:
            self._adapters_disabled = False
            for m, state in zip(switches, previous):
                m.disabled = state

    def disable_adapters(self) -> None:
        """transformers' name: switch every adapter off until :meth:`enable_adapters`."""
        self.base_model.disable_adapter_layers()
        self._adapters_disabled = True

    def enable_adapters(self) -> None:
        self.base_model.enable_adapter_layers()
        self._adapters_disabled = False


def _read_weights(model_id: str | Path, subfolder: str | None, **kwargs: Any) -> dict[str, torch.Tensor]:
    """The tensors of a saved adapter; a damaged file is named."""
    from safetensors.torch import load_file

    from qpeft.hub import resolve_file

    weights = resolve_file(model_id, WEIGHTS_NAME, subfolder, **kwargs)
    try:
        return load_file(weights)
    except Exception as err:  # safetensors raises its own SafetensorError on a damaged header
        raise ValueError(f"{weights} is not a readable safetensors file ({type(err).__name__}: {err})") from err


def get_qpeft_model(model: nn.Module, config: QPeftConfig, adapter_name: str = DEFAULT_ADAPTER,
                    **options: Any) -> QPeftModel:
    """Inject Quantum-PEFT adapters into ``model`` as ``config`` says; only adapter tensors stay trainable.

    ``options``: ``batch_factors``, ``checkpoint_factors``, ``compile_factors``, ``unitarity_tolerance``,
    ``unitarity_check_every`` of :class:`QPeftModel`.
    """
    return QPeftModel(model, config, adapter_name, **options)
