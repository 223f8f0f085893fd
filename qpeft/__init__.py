"""qpeft: Quantum-PEFT adapters, ΔW = (α/K)·U·diag(λ)·Vᵀ with U, V from unitary mappings.

Usable alone, like ``peft``::

    from qpeft import QPeftConfig, get_qpeft_model
    model = get_qpeft_model(base, QPeftConfig(target_modules=["query", "value"], rank=4, mapping="pauli"))
"""

from qpeft.config import QPeftConfig
from qpeft.layers import ModulesToSave, QPeftLayer
from qpeft.model import (
    QPeftModel,
    adapter_state_dict,
    count_parameters,
    get_qpeft_model,
    inject,
    mark_only_adapter_trainable,
    unitarity_errors,
)
from qpeft.unitary import MAPPINGS, build_mapping

__all__ = [
    "MAPPINGS",
    "ModulesToSave",
    "QPeftConfig",
    "QPeftLayer",
    "QPeftModel",
    "adapter_state_dict",
    "build_mapping",
    "count_parameters",
    "get_qpeft_model",
    "inject",
    "mark_only_adapter_trainable",
    "unitarity_errors",
]
__version__ = "0.1.0"
