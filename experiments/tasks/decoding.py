"""Batched beam decoding of prompts (token ids) with HF ``generate``, sharded over processes.

The settings follow microsoft/LoRA's ``gpt2_beam.py`` command for E2E (beam 10, length penalty 0.8,
no-repeat 4-grams, EOS {50256, 628 = "\\n\\n"}, 64 new tokens), with HF's beam search instead of LoRA's
own. Known differences, none of them tunable away:

* Length normalisation: both score a finished hypothesis by ``sum log p / len ** length_penalty``; HF counts
  ``len`` as the generated tokens including the EOS that ended it, LoRA as its step counter, which can
  differ by one token.
* Stopping: LoRA runs all ``eval_len`` steps and keeps the best finished hypothesis (or the best live beam
  if none finished); HF with ``early_stopping="never"`` (used here) stops once no live beam can beat the
  finished ones (under its own normalisation), or at ``max_new_tokens``.
* No-repeat n-grams: HF bans them per hypothesis as fairseq does, like LoRA's ``_calc_banned_ngram_tokens``.
* Batching: LoRA decodes one line at a time (batch 1); here prompts are left-padded into batches (positions
  come from the attention mask, so a prompt decodes the same alone or in a batch, up to float rounding).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class BeamSettings:
    """Beam search options (``task.num_beams`` ...); ``stop_strings`` that are one token also end a beam."""

    num_beams: int = 10
    length_penalty: float = 0.8
    no_repeat_ngram_size: int = 4
    max_new_tokens: int = 64
    stop_strings: list[str] = field(default_factory=lambda: ["\n\n"])
    batch_size: int = 16


def stop_token_ids(tokenizer: Any, stop_strings: list[str]) -> list[int]:
    """The EOS id and every stop string that is a single token (GPT-2: ``[50256, 628]``)."""
    ids = [tokenizer.eos_token_id]
    for text in stop_strings:
        encoded = tokenizer.encode(text, add_special_tokens=False)
        if len(encoded) == 1 and encoded[0] not in ids:
            ids.append(encoded[0])
    return ids


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of prompts padded on the left to the longest."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


@torch.no_grad()
def generate_batch(model: torch.nn.Module, tokenizer: Any, prompts: list[list[int]], settings: BeamSettings,
                   device: torch.device) -> list[str]:
    """Decode one batch of prompts; returns the generated texts (prompt removed, special tokens kept)."""
    from transformers import GenerationConfig

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids, mask = left_pad(prompts, pad)
    config = GenerationConfig(
        do_sample=False, num_beams=settings.num_beams, length_penalty=settings.length_penalty,
        no_repeat_ngram_size=settings.no_repeat_ngram_size, max_new_tokens=settings.max_new_tokens,
        early_stopping="never", eos_token_id=stop_token_ids(tokenizer, settings.stop_strings), pad_token_id=pad,
    )
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
    return [tokenizer.decode(row[ids.shape[1]:].tolist(), skip_special_tokens=False) for row in out.cpu()]


def beam_decode(model: torch.nn.Module, tokenizer: Any, prompts: list[list[int]], settings: BeamSettings,
                accelerator: Any = None) -> list[str]:
    """Every prompt's decoded text, in order; with several processes each decodes every ``n``-th prompt."""
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    net = accelerator.unwrap_model(model) if accelerator is not None else model
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    mine = list(range(rank, len(prompts), world))
    texts: dict[int, str] = {}
    # longest first: batches of similar length pad less, and a memory problem shows at once
    mine.sort(key=lambda i: -len(prompts[i]))
    for start in range(0, len(mine), settings.batch_size):
        chunk = mine[start:start + settings.batch_size]
        for i, text in zip(chunk, generate_batch(net, tokenizer, [prompts[i] for i in chunk], settings, device)):
            texts[i] = text
    net.train(was_training)
    if world > 1:
        from accelerate.utils import gather_object

        merged: dict[int, str] = {}
        for part in gather_object([texts]):
            merged.update(part)
        texts = merged
    return [texts[i] for i in range(len(prompts))]
