r"""k-bit base of the ViT experiments (method.md §10): every weight and bias, head included, rounded ONCE.

``model.base_bits: B`` rounds each floating-point parameter of the freshly built base in place with the
library's group-wise min–max quantizer (:func:`qpeft.quantize.quantize_model_weights_`, no STE): per group of
``G = model.base_group_size`` elements, :math:`s = (\max - \min)/(2^B - 1)`, :math:`z = \min`,
:math:`Q(w) = s\,\mathrm{round}((w - z)/s) + z`, so :math:`|w - Q(w)| \le s/2` (computed with FP32
:math:`s, z`; stored as FP16 they move each value by at most :math:`2^{-11}(|z| + 2^B s)` more). The base is then frozen by the method
(adapters stay FP32); the rounded FP32 tensors cost nothing extra per step. Storage:
:math:`B + 32/G` bits per parameter (:func:`storage_report`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from qpeft.quantize import MAX_BITS, quantize_model_weights_, quantized_storage_mib


@torch.no_grad()
def quantize_base_(model: nn.Module, bits: int, group_size: int = 128) -> dict[str, Any]:
    """Round every floating-point parameter of ``model`` (head included) to ``bits`` per group of ``group_size``.

    Returns :func:`qpeft.quantize.quantize_model_weights_`'s report (``num_parameters``, ``fp32_mib``,
    ``quantized_mib``, ...). Tied parameters are rounded once.
    """
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= MAX_BITS:
        raise ValueError(f"model.base_bits={bits!r} is invalid; valid: null or an integer 1..{MAX_BITS}")
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"model.base_group_size={group_size!r} is invalid; valid: an integer >= 1")
    return quantize_model_weights_(model, bits, group_size, include="all")


def storage_report(config: Any, bits: int = 3, group_size: int = 128) -> dict[str, Any]:
    """FP32 and ``bits``-bit storage (MiB) of the image classifier of ``config``, counted on the meta device.

    ViT-B/16 with 1000 labels: 86,567,656 parameters, 330.23 MiB → 33.54 MiB at 3 bits, G = 128 (method.md §10).
    """
    from transformers import AutoModelForImageClassification

    with torch.device("meta"):
        model = AutoModelForImageClassification.from_config(config)
    count = sum(p.numel() for p in model.parameters())
    return {"num_parameters": count, "bits": bits, "group_size": group_size, "fp32_mib": count * 4 / 2**20,
            "quantized_mib": quantized_storage_mib(count, bits, group_size)}

