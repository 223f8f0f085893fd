"""Build any method (Quantum-PEFT, the peft baselines, BitFit, full FT, head only) behind one interface.

The loop only talks to :class:`Method`: ``model``, ``param_groups``, ``on_step_end`` (AdaLoRA's rank
allocator), ``diagnostics`` (Quantum-PEFT unitarity errors), adapter state for checkpoints, ``save_adapter``.
AdaLoRA's orthogonality regulariser (``extra_loss`` in design.md) needs no hook: ``peft.AdaLoraModel.forward``
adds ``orth_reg_weight * R(P, Q)`` to ``outputs.loss`` whenever ``labels`` are passed, which the GLUE
task's ``compute_loss`` does; :meth:`Method.extra_state` checkpoints the allocator's running statistics.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from torch import nn

if TYPE_CHECKING:
    from qpeft import QPeftConfig

log = logging.getLogger(__name__)
METHOD_KINDS = ("quantum_peft", "peft", "bitfit", "head_only", "full_ft")
NO_DECAY = re.compile(r"(bias|norm\.weight)$", re.IGNORECASE)  # biases, LayerNorm/RMSNorm weights


def _is_head(name: str, heads: list[str]) -> bool:
    return any(name == h or name.startswith(h + ".") or f".{h}." in f".{name}" for h in heads)


class Method:
    """A model with its trainable parameters chosen; subclasses add method-specific hooks."""

    name: str = "method"

    def __init__(self, model: nn.Module, cfg: DictConfig) -> None:
        self.model = model
        self.cfg = cfg

    # ---- training hooks -------------------------------------------------------------------------
    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Trainable parameters by name (on the unwrapped model)."""
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups: no decay on biases and normalisation weights."""
        decay, no_decay = [], []
        for name, param in self.trainable_parameters().items():
            (no_decay if NO_DECAY.search(name) else decay).append(param)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    def on_step_end(self, global_step: int) -> None:
        """Called after ``optimizer.step()`` and before ``zero_grad()``; ``global_step`` is 0-based."""

    def diagnostics(self) -> dict[str, float]:
        """Scalars to log at evaluation time."""
        return {}

    def summary(self) -> dict[str, Any]:
        """The few diagnostics kept in each evaluation's history entry (and so in the run record)."""
        return {}

    # ---- state ----------------------------------------------------------------------------------
    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Trainable tensors only (never the frozen base)."""
        return {n: p.detach().cpu().clone() for n, p in self.trainable_parameters().items()}

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        params = self.trainable_parameters()
        missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        if missing or unexpected:
            raise KeyError(f"adapter state mismatch: missing {missing[:5]} unexpected {unexpected[:5]}")
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)

    def extra_state(self) -> dict[str, Any]:
        """Method state beyond parameters (e.g. AdaLoRA's importance EMAs) for checkpoints."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`extra_state`."""

    def save_adapter(self, directory: str | Path) -> None:
        """Save what is needed to rebuild the fine-tuned model on top of the base."""
        from safetensors.torch import save_file

        from qpeft.io import atomic_write

        state = {k: v.contiguous() for k, v in self.adapter_state_dict().items()}
        atomic_write(Path(directory) / "adapter_model.safetensors", lambda tmp: save_file(state, tmp))

    def counts(self) -> tuple[int, int]:
        """``(trainable, total)`` parameters."""
        total = sum(p.numel() for p in self.model.parameters())
        return sum(p.numel() for p in self.trainable_parameters().values()), total


class QuantumPeftMethod(Method):
    """Quantum-PEFT through the ``qpeft`` library."""

    def __init__(self, model: nn.Module, cfg: DictConfig) -> None:
        super().__init__(model, cfg)
        self._logged: set[str] = set()  # guard warnings already written to the run log

    def diagnostics(self) -> dict[str, float]:
        """Every factor's ``‖UᵀU − I‖_F`` now, through the model's guard (``method.unitarity_tolerance``):
        a factor above the tolerance is warned about once, by name, here and in the log."""
        guard = self.model.guard
        errors = self.model.check_unitarity()
        for name in sorted(guard.warned - self._logged):  # warned here or by a training-time check
            self._logged.add(name)
            factor = name.split(":")[0]
            log.warning("adapter factor %s: ‖UᵀU − I‖_F = %.3g now (tolerance method.unitarity_tolerance=%g); "
                        "it left the Stiefel manifold during this run (see its ManifoldWarning)", factor,
                        errors.get(factor, float("nan")), guard.tolerance)
        if not errors:
            return {}
        return {"qpeft/unitarity_error_max": max(errors.values()),
                **{f"qpeft/unitarity_error/{k}": v for k, v in errors.items()}}

    def summary(self) -> dict[str, Any]:
        """``unitarity_error_max``: the worst ``‖UᵀU − I‖_F`` the guard has seen so far (training and eval)."""
        guard = self.model.guard
        return {"unitarity_error_max": guard.max_error, "unitarity_error_worst": guard.worst}

    def extra_state(self) -> dict[str, Any]:
        """The unitarity guard's state, so that a resumed run checks and reports exactly as an uninterrupted one."""
        guard = self.model.guard
        return {"max_error": guard.max_error, "worst": guard.worst, "warned": sorted(guard.warned),
                "training_forwards": self.model._training_forwards}  # its check cadence counter

    def load_extra_state(self, state: dict[str, Any]) -> None:
        guard = self.model.guard
        guard.max_error, guard.worst, guard.warned = state["max_error"], state["worst"], set(state["warned"])
        self.model._training_forwards = state["training_forwards"]
        self._logged = set(guard.warned)  # warned (and logged) before the interruption

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.model.adapter_state_dict().items()}

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_adapter_state_dict(state)

    def save_adapter(self, directory: str | Path) -> None:
        """The adapter as ``save_pretrained`` writes it; packed integers with ``method.save_quantized``."""
        self.model.save_pretrained(directory, quantized=self.cfg.save_quantized)

    def counts(self) -> tuple[int, int]:
        return self.model.get_nb_trainable_parameters()


class PeftMethod(Method):
    """Any peft tuner; AdaLoRA gets its rank allocator called every optimizer step."""

    def on_step_end(self, global_step: int) -> None:
        if self.cfg.name == "adalora" or "AdaLora" in str(self.cfg.get("_target_")):
            self.model.base_model.update_and_allocate(global_step)

    def extra_state(self) -> dict[str, Any]:
        alloc = getattr(self.model.base_model, "rankallocator", None)
        if alloc is None:
            return {}
        config = self.model.peft_config[self.model.active_adapter]
        return {"ipt": alloc.ipt, "exp_avg_ipt": alloc.exp_avg_ipt, "exp_avg_unc": alloc.exp_avg_unc,
                "rank_pattern": config.rank_pattern}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        alloc = getattr(self.model.base_model, "rankallocator", None)
        if alloc is None or not state:
            return
        alloc.ipt, alloc.exp_avg_ipt, alloc.exp_avg_unc = state["ipt"], state["exp_avg_ipt"], state["exp_avg_unc"]
        self.model.peft_config[self.model.active_adapter].rank_pattern = state["rank_pattern"]

    def save_adapter(self, directory: str | Path) -> None:
        self.model.save_pretrained(str(directory))

    def counts(self) -> tuple[int, int]:
        return self.model.get_nb_trainable_parameters()


def _freeze_except(model: nn.Module, keep: Any) -> None:
    for name, param in model.named_parameters():
        param.requires_grad = bool(keep(name))


def _adalora_schedule(kwargs: dict[str, Any], total_steps: int) -> None:
    """Scale tinit/tfinal/deltaT written for ``reference_total_step`` to this run's ``total_steps``."""
    reference = kwargs.pop("reference_total_step", None)
    kwargs["total_step"] = total_steps
    if reference and reference != total_steps:
        scale = total_steps / reference
        for key in ("tinit", "tfinal", "deltaT"):
            kwargs[key] = max(int(kwargs[key] * scale), 1 if key == "deltaT" else 0)
        log.info("AdaLoRA schedule scaled x%.4g to %d steps: tinit=%d tfinal=%d deltaT=%d",
                 scale, total_steps, kwargs["tinit"], kwargs["tfinal"], kwargs["deltaT"])
    if kwargs["tinit"] >= total_steps - kwargs["tfinal"]:
        kwargs["tinit"], kwargs["tfinal"] = 0, 0
        log.warning("AdaLoRA: tinit >= total_step - tfinal for %d steps; using tinit=tfinal=0", total_steps)


def _targets(model_cfg: DictConfig) -> Any:
    return OmegaConf.to_container(model_cfg.target_modules, resolve=True) \
        if OmegaConf.is_config(model_cfg.target_modules) else model_cfg.target_modules


def _peft_targets(model: nn.Module, model_cfg: DictConfig) -> Any:
    """peft targets from the model config. With ``fused_modules`` (GPT-2 ``c_attn``), those modules are first split
    into one ``nn.Linear`` per output slice (:func:`experiments.fused.split_fused`, outputs unchanged) and the chosen
    slices replace them in the list, e.g. ``[c_attn] -> [c_attn.q, c_attn.v]``. The split happens for every peft
    method on such a model (an explicit ``method.target_modules`` names split children, e.g. ``c_attn.k``), so a
    saved adapter always loads into ``split_fused(fresh model)``; ``model.fused_modules={}`` keeps ``c_attn`` whole."""
    targets = _targets(model_cfg)
    fused = OmegaConf.to_container(model_cfg.fused_modules, resolve=True)
    if not fused:
        return targets
    if isinstance(targets, str):
        raise ValueError("model.target_modules must be a list of suffixes when model.fused_modules is set "
                         f"(got the regex {targets!r}); or set method.target_modules")
    from experiments.fused import split_fused

    slices = split_fused(model, fused, model_cfg.fused_num_parts)
    return [t for t in targets if t not in fused] + slices


def qpeft_config(method_cfg: DictConfig, model_cfg: DictConfig) -> QPeftConfig:
    """The ``QPeftConfig`` of a ``kind: quantum_peft`` method (validated on construction; no model needed)."""
    from qpeft import QPeftConfig

    opts = OmegaConf.to_container(method_cfg, resolve=True)
    return QPeftConfig(
        target_modules=_targets(model_cfg), rank=opts["rank"], alpha=opts["alpha"], mapping=opts["mapping"],
        mapping_options=opts["mapping_options"], mapping_v=opts["mapping_v"],
        mapping_options_v=opts["mapping_options_v"], dropout=opts["dropout"],
        fused_modules=OmegaConf.to_container(model_cfg.fused_modules, resolve=True),
        fused_num_parts=model_cfg.fused_num_parts,
        modules_to_save=OmegaConf.to_container(model_cfg.head_modules, resolve=True), bias=opts["bias"],
        quant_bits=opts["quant_bits"], quant_group_size=opts["quant_group_size"], quant_gamma=opts["quant_gamma"],
        quant_rule=opts["quant_rule"], train_mappings=opts["train_mappings"],
        network=opts["network"], network_options=opts["network_options"], nonlinearity=opts["nonlinearity"],
    )


def build_method(method_cfg: DictConfig, model: nn.Module, model_cfg: DictConfig, total_steps: int,
                 task_type: str | None = "SEQ_CLS") -> Method:
    """Wrap/freeze ``model`` as ``method_cfg.kind`` says; ``total_steps`` = optimizer steps of the run,
    ``task_type`` the ``peft.TaskType`` name of the task (``SEQ_CLS``, ``CAUSAL_LM``; ``None``: peft's generic
    ``PeftModel``, e.g. for image classifiers)."""
    kind = method_cfg.kind
    heads = list(model_cfg.head_modules)
    if kind == "quantum_peft":
        from qpeft import get_qpeft_model

        qcfg = qpeft_config(method_cfg, model_cfg)
        return QuantumPeftMethod(get_qpeft_model(model, qcfg, unitarity_tolerance=method_cfg.unitarity_tolerance,
                                                 unitarity_check_every=method_cfg.unitarity_check_every), method_cfg)
    if kind == "peft":
        from peft import TaskType, get_peft_model

        kwargs = OmegaConf.to_container(method_cfg, resolve=True)
        config_class = get_class(kwargs.pop("_target_"))
        for key in ("name", "kind", "protocol"):
            kwargs.pop(key)
        targets = _peft_targets(model, model_cfg)  # splits fused modules whatever the method targets
        kwargs["target_modules"] = kwargs["target_modules"] or targets
        if "reference_total_step" in kwargs:
            _adalora_schedule(kwargs, total_steps)
        peft_cfg = config_class(task_type=TaskType[task_type] if task_type else None, modules_to_save=heads or None, **kwargs)
        peft_model = get_peft_model(model, peft_cfg)
        for name, param in peft_model.named_parameters():
            if ".ranknum." in name:  # AdaLoRA's constant r: peft re-wraps it as trainable when it moves devices
                param.requires_grad_(False)
        return PeftMethod(peft_model, method_cfg)
    if kind == "bitfit":
        _freeze_except(model, lambda n: n.endswith("bias") or _is_head(n, heads))
    elif kind == "head_only":
        _freeze_except(model, lambda n: _is_head(n, heads))
    elif kind == "full_ft":
        _freeze_except(model, lambda n: True)
    else:
        raise ValueError(f"method.kind={kind!r} is invalid; valid: {list(METHOD_KINDS)}")
    return Method(model, method_cfg)
