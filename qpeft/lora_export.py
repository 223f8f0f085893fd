r"""The exact LoRA form of a Quantum-PEFT adapter, for peft without qpeft and tools that only know LoRA.

Per adapted layer, with the slices' factors packed as in the forward pass (``U_big``: ``out x S·K``,
``V_big``: ``in x S·K``, see ``qpeft.layers``):

.. math:: \Delta W = \tfrac{\alpha}{K}\, U\,\mathrm{diag}(\lambda)\, V^\top = B A,\qquad
          B = \tfrac{\alpha}{K}\, U_{big}\,\mathrm{diag}(\lambda) \;(out \times S K),\quad
          A = V_{big}^\top \;(S K \times in),

a peft LoRA of rank ``r = S·K`` with ``lora_alpha = r`` (scaling 1; per-layer values go to ``rank_pattern`` /
``alpha_pattern``).  A tensor-network core ``C`` (``QPeftConfig.network``) replaces ``diag(λ)``:
``B = (α/K)·U_big·C`` is still exact; an adapter with a ``nonlinearity`` has no LoRA form and is refused.  peft's LoRA cannot target some output slices of a fused layer, so a fused GPT-2
``c_attn`` adapted on Q and V becomes a full-width LoRA of rank ``2K`` whose ``B`` is zero in the K rows
(exact all the same).  GPT-2 ``Conv1D`` bases keep ``A``/``B`` in this layout with ``fan_in_fan_out=True``:
peft transposes ``BA`` itself.  Trained heads (``modules_to_save``) and, with ``bias="all"``, biases are
saved under the names peft uses.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from qpeft.io import atomic_write, atomic_write_text
from qpeft.layers import ModulesToSave, QPeftLayer
from qpeft.state import PEFT_PREFIX, is_trained_bias

if TYPE_CHECKING:
    from qpeft.model import QPeftModel


@torch.no_grad()
def lora_factors(layer: QPeftLayer, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` of one layer's adapter: ``A = V_bigᵀ`` (``S·K x in``), ``B = (α/K)·U_big·C`` (``out x S·K``; ``C`` the
    core: ``diag(λ)``, the ring's expanded ``diag(λ_a)`` or the block-diagonal dense ``G``).  ``ValueError`` for an
    adapter with a nonlinearity (its ΔW is not a low-rank product)."""
    adapter = layer.qpeft_adapters[adapter_name]
    u_big, v_big = adapter.assemble(*adapter.build())
    b, a = adapter.low_rank_factors(u_big, v_big)
    return a.contiguous(), b.contiguous()


def lora_adapter(model: QPeftModel, adapter_name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(adapter_config.json contents, state dict)`` of the peft LoRA adapter equal to ``adapter_name``."""
    config = model.peft_config[adapter_name]
    base = model.get_base_model()
    state: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    fan_in_fan_out = False
    heads = []
    for name, module in base.named_modules():
        if isinstance(module, QPeftLayer) and adapter_name in module.qpeft_adapters:
            a, b = lora_factors(module, adapter_name)
            state[f"{PEFT_PREFIX}{name}.lora_A.weight"] = a
            state[f"{PEFT_PREFIX}{name}.lora_B.weight"] = b
            ranks[name] = a.shape[0]
            fan_in_fan_out |= module.kind == "conv1d"
        elif isinstance(module, ModulesToSave) and adapter_name in module.qpeft_modules_to_save:
            heads.append(name)
            for key, value in module.qpeft_modules_to_save[adapter_name].state_dict().items():
                state[f"{PEFT_PREFIX}{name}.{key}"] = value
    for key, value in base.state_dict().items():
        if is_trained_bias(key, config.bias):
            state[PEFT_PREFIX + key] = value
    if not ranks:
        raise ValueError(f"adapter {adapter_name!r} adapts no layer; nothing to export")
    rank = config.rank
    pattern = {re.escape(name): r for name, r in ranks.items() if r != rank}
    lora = {
        "peft_type": "LORA", "r": rank, "lora_alpha": rank, "rank_pattern": pattern, "alpha_pattern": dict(pattern),
        "target_modules": sorted(ranks), "fan_in_fan_out": fan_in_fan_out, "lora_dropout": config.dropout,
        "bias": config.bias, "modules_to_save": heads or None, "use_rslora": False, "use_dora": False,
        "init_lora_weights": True, "inference_mode": True, "task_type": config.task_type,
        "base_model_name_or_path": config.base_model_name_or_path, "revision": config.revision,
    }
    return lora, {k: v.detach().cpu().contiguous() for k, v in state.items()}


def save_as_lora(model: QPeftModel, directory: str | Path, adapter_name: str) -> None:
    """Write ``adapter_config.json``, ``adapter_model.safetensors`` and ``README.md`` of the exact LoRA adapter."""
    from safetensors.torch import save_file

    from qpeft.hub import model_card, write_model_card

    lora, state = lora_adapter(model, adapter_name)
    directory = Path(directory)
    atomic_write(directory / "adapter_model.safetensors", lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    atomic_write_text(directory / "adapter_config.json", json.dumps(lora, indent=2, sort_keys=True))
    body = (f"An exact LoRA form (B = (α/K)·U·diag(λ), A = Vᵀ) of the Quantum-PEFT adapter {adapter_name!r}, "
            "written by `qpeft`; plain peft loads it, qpeft is not needed:\n\n"
            "```python\nfrom peft import PeftModel\nmodel = PeftModel.from_pretrained(base_model, "
            "\"<this directory>\")\n```\n")
    base = lora["base_model_name_or_path"]
    tags = ["lora", "qpeft"] + ([f"base_model:adapter:{base}"] if base else [])
    write_model_card(directory, model_card("LoRA (from Quantum-PEFT)", base, tags, body))
