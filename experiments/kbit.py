"""Training on a k-bit (bitsandbytes 4-bit) base, and activation checkpointing as an explicit choice.

* :func:`prepare_kbit` is peft's ``prepare_model_for_kbit_training`` with its checkpointing side effect
  turned off: every base parameter is frozen and every non-quantized fp16/bf16 one (embeddings, norms, the
  new ``score`` head) is cast to fp32, so the hidden states, heads and adapters run in fp32 around the
  ``Linear4bit`` layers (which compute in ``bnb_4bit_compute_dtype`` and return the input's dtype).
* :func:`keep_4bit_layout`: bitsandbytes' CPU path repacks a ``Linear4bit`` for its AVX512-BF16 inference
  kernel at the first eval-mode forward, storing the block scales in bf16 (and un-nesting double
  quantization): from then on the dequantized base differs (by ~1e-3 relative), so training after an
  evaluation, or a resumed run, would see another base than an uninterrupted one. Turned off, the base is
  the same in every mode (eval forwards take the generic dequantize-and-matmul path; no effect on GPUs).
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


def keep_4bit_layout(model: nn.Module) -> int:
    """Disable bitsandbytes' CPU inference repacking on every ``Linear4bit``; returns how many layers."""
    layers = [m for m in model.modules()
              if type(m).__name__ == "Linear4bit" and hasattr(m, "support_avx512bf16_for_cpu")]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def enable_gradient_checkpointing(model: nn.Module, mode: str) -> None:
    """Turn on ``mode`` checkpointing (a key of :data:`GRADIENT_CHECKPOINTING`) on a (wrapped) HF model."""
    if mode not in GRADIENT_CHECKPOINTING:
        allowed = ", ".join(GRADIENT_CHECKPOINTING)
        raise ValueError(f"trainer.gradient_checkpointing={mode!r} is invalid; allowed: {allowed}")
    reentrant = GRADIENT_CHECKPOINTING[mode]
    if reentrant is None:
        return
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    if reentrant:
        model.enable_input_require_grads()
