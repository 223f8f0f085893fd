"""Tiny models built from configs (no downloads) for the adapter property tests."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """Linear 16→32→8 with a classifier head: the smallest Linear-only model."""

    def __init__(self) -> None:
        super().__init__()
        self.lin0 = nn.Linear(16, 32)
        self.lin1 = nn.Linear(32, 32)
        self.classifier = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.relu(self.lin1(torch.relu(self.lin0(x)))))


class Linear4bitNet(nn.Module):
    """A bitsandbytes nf4 ``Linear4bit`` (64→32) between two float layers."""

    def __init__(self) -> None:
        super().__init__()
        import bitsandbytes as bnb

        self.inp = nn.Linear(16, 64)
        dense = nn.Linear(64, 32)
        q = bnb.nn.Linear4bit(64, 32, bias=True, quant_type="nf4", compute_dtype=torch.float32)
        q.weight = bnb.nn.Params4bit(dense.weight.data.clone(), requires_grad=False, quant_type="nf4")
        q.bias = nn.Parameter(dense.bias.data.clone())
        self.q4 = q.to("cpu")  # quantization happens on .to()
        self.classifier = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.relu(self.q4(torch.relu(self.inp(x)))))


def tiny_gpt2(dropout: float = 0.1) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0,
                     resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    return GPT2LMHeadModel(cfg).eval()


def tiny_deberta(dropout: float = 0.1) -> nn.Module:
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    cfg = DebertaV2Config(
        vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=16,
        max_relative_positions=32, num_labels=3, pad_token_id=0, hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    return DebertaV2ForSequenceClassification(cfg).eval()


def randomize_adapters(model: nn.Module, seed: int = 5, scale: float = 0.3) -> nn.Module:
    """Every trainable tensor (λ, the mapping parameters, heads) set to seeded random values: a visible update."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in model.named_parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=g) * scale)
    return model


DEBERTA_TARGETS = r".*layer\.\d+\.(attention\.self\.(query|key|value)_proj|attention\.output\.dense|intermediate\.dense|output\.dense)"
