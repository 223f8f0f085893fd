"""qpeft inside peft: the ``QPEFT`` adapter type in peft's registries, and qpeft's classes as peft classes.

**Registration.**  ``peft.register_peft_method`` only accepts names that are members of peft's closed
``PeftType`` enum, so it cannot take ``"QPEFT"`` without patching peft.  :func:`register` instead fills the
same three registries that function fills (``PEFT_TYPE_TO_CONFIG_MAPPING``, ``..._TUNER_MAPPING``,
``..._PREFIX_MAPPING``) under the plain string ``"QPEFT"``; peft looks adapter types up by the string read
from ``adapter_config.json``, and its enum members are strings that hash alike, so every lookup finds it.
Nothing of peft or transformers is patched.

**Classes.**  peft and ``transformers.Trainer`` recognise adapters by ``isinstance(model, peft.PeftModel)``.
The classes here are qpeft's own (first in the MRO, with their own ``__init__``) that are *also* peft's:
``QPeftModel`` is a ``peft.PeftModel`` (``qpeft.QPeftModel(...)`` builds this one when peft is installed),
``QPeftTuner`` a ``peft`` ``BaseTuner`` (what ``peft.PeftModel.from_pretrained`` builds from the registry),
``QPeftLayer`` a ``BaseTunerLayer`` (the layers that tuner injects) and ``QPeftConfig`` a ``peft.PeftConfig``
(what ``peft.PeftConfig.from_pretrained`` returns for a qpeft adapter).
Every peft method qpeft does not serve is overridden to raise (``qpeft.model._unsupported``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from peft import PeftConfig, PeftModel
from peft.peft_model import TunerLayerStatus, TunerModelStatus, get_layer_status, get_model_status
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer

from qpeft import config as _config
from qpeft import model as _model
from qpeft import tuner as _tuner
from qpeft import layers as _layers
from qpeft.layers import ADAPTER_PREFIX


@dataclass
class QPeftConfig(_config.QPeftConfig, PeftConfig):
    """:class:`qpeft.QPeftConfig` that is also a ``peft.PeftConfig`` (peft's ``auto_mapping`` and ``peft_version``
    are accepted and not saved)."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(_config.QPeftConfig)}


class QPeftLayer(_layers.QPeftLayer, BaseTunerLayer):
    """:class:`qpeft.QPeftLayer` that is also a peft ``BaseTunerLayer`` (peft's layer and model status read it)."""


class QPeftTuner(_tuner.QPeftTuner, BaseTuner):
    """:class:`qpeft.tuner.QPeftTuner` that is also a peft ``BaseTuner``; it injects with its own code."""

    tuner_layer_cls = QPeftLayer
    layer_class = QPeftLayer
    target_module_mapping: dict[str, list[str]] = {}

    def _create_and_replace(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("qpeft injects its adapters with QPeftTuner.inject_adapter")


class QPeftModel(_model.QPeftModel, PeftModel):
    """:class:`qpeft.QPeftModel` that is also a ``peft.PeftModel``."""

    tuner_class = QPeftTuner

    def get_layer_status(self) -> list[TunerLayerStatus]:
        """peft's status of every adapted layer (qpeft's layers are ``BaseTunerLayer``\ s here)."""
        return get_layer_status(self)

    def get_model_status(self) -> TunerModelStatus:
        """peft's status of the whole model."""
        return get_model_status(self)


def register() -> None:
    """Make peft know the ``QPEFT`` adapter type (idempotent)."""
    PEFT_TYPE_TO_CONFIG_MAPPING[_config.PEFT_TYPE] = QPeftConfig
    PEFT_TYPE_TO_TUNER_MAPPING[_config.PEFT_TYPE] = QPeftTuner
    PEFT_TYPE_TO_PREFIX_MAPPING[_config.PEFT_TYPE] = ADAPTER_PREFIX


register()
