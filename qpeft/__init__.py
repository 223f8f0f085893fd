"""qpeft: Quantum-PEFT adapters, ΔW = (α/K)·U·diag(λ)·Vᵀ with U, V from unitary mappings.

Usable alone, like ``peft``::

    from qpeft import QPeftConfig, get_qpeft_model
    model = get_qpeft_model(base, QPeftConfig(target_modules=["query", "value"], rank=4, mapping="pauli"))

Importing ``qpeft`` registers the ``QPEFT`` adapter type with peft as soon as peft is imported
(``qpeft.peft_hook``; peft itself is never imported here).
"""

from qpeft.config import QPeftConfig
from qpeft.layers import ModulesToSave, QPeftLayer
from qpeft.lora_export import lora_adapter, save_as_lora
from qpeft.model import (
    QPeftModel,
    adapter_state_dict,
    count_parameters,
    get_qpeft_model,
    inject,
    mark_only_adapter_trainable,
    unitarity_errors,
)
from qpeft.peft_hook import register_when_imported
from qpeft.tuner import QPeftTuner
from qpeft.unitary import MAPPINGS, build_mapping

register_when_imported()

__all__ = [
    "MAPPINGS",
    "ModulesToSave",
    "QPeftConfig",
    "QPeftLayer",
    "QPeftModel",
    "QPeftTuner",
    "adapter_state_dict",
    "build_mapping",
    "count_parameters",
    "get_qpeft_model",
    "inject",
    "lora_adapter",
    "mark_only_adapter_trainable",
    "save_as_lora",
    "unitarity_errors",
]
__version__ = "0.1.0"
