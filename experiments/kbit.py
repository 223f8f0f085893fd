"""Training on a k-bit (bitsandbytes 4-bit) base, and activation checkpointing as an explicit choice.

* :func:`prepare_kbit` is peft's ``prepare_model_for_kbit_training`` with its checkpointing side effect
  turned off: every base parameter is frozen and every non-quantized fp16/bf16 one (embeddings, norms, the
  new ``score`` head) is cast to fp32, so the hidden states, heads and adapters run in fp32 around the
  ``Linear4bit`` layers (which compute in ``bnb_4bit_compute_dtype`` and return the input's dtype).
* :func:`enable_gradient_checkpointing` (``trainer.gradient_checkpointing``): ``off``, ``reentrant`` or
  ``non_reentrant`` torch checkpointing of the transformer blocks. A reentrant checkpoint only propagates
  to the adapters inside it when its input requires grad, so that mode also makes the embeddings' output
  require grad (``enable_input_require_grads``), as peft does; the non-reentrant one needs nothing more.
"""

from __future__ import annotations

from torch import nn

GRADIENT_CHECKPOINTING = {"off": None, "reentrant": True, "non_reentrant": False}  # mode -> use_reentrant


def prepare_kbit(model: nn.Module) -> nn.Module:
    """Freeze the base and cast its non-quantized parameters to fp32 (peft, without checkpointing)."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def enable_gradient_checkpointing(model: nn.Module, mode: str) -> None:
    """Turn on ``mode`` checkpointing (a key of :data:`GRADIENT_CHECKPOINTING`) on a (wrapped) HF model."""
    if mode not in GRADIENT_CHECKPOINTING:
        raise ValueError(f"trainer.gradient_checkpointing={mode!r} is invalid; allowed: {list(GRADIENT_CHECKPOINTING)}")
    reentrant = GRADIENT_CHECKPOINTING[mode]
    if reentrant is None:
        return
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    if reentrant:
        model.enable_input_require_grads()
