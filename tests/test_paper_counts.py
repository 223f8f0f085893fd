"""Printed parameter counts, reproduced by injecting into models built from their configs (no weights).

Models are built on the ``meta`` device, so the real shapes cost no memory or time.  The counts
that no construction reproduces (Tables 2, 5, 6) are *reported* by ``counting.candidate_report``;
those tests check the report's arithmetic against method.md, never the printed totals.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qpeft import QPeftConfig, get_qpeft_model
from qpeft.counting import (
    UNREPRODUCED,
    candidate_report,
    candidate_total,
    deberta_v3_base_shapes,
    lora_count,
    model_count,
)
from tests.tiny_models import DEBERTA_TARGETS


def _trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def gpt2_medium() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_embd=1024, n_layer=24, n_head=16, vocab_size=50257)
    with torch.device("meta"):
        return GPT2LMHeadModel(cfg)


def vit_b16() -> torch.nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    with torch.device("meta"):
        return ViTForImageClassification(ViTConfig(num_labels=1000))


def deberta_v3_base() -> torch.nn.Module:
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    cfg = DebertaV2Config(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, vocab_size=128100,
        relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=256, max_relative_positions=-1,
        norm_rel_ebd="layer_norm", share_att_key=True, num_labels=2,
    )
    with torch.device("meta"):
        return DebertaV2ForSequenceClassification(cfg)


def test_gpt2_medium_taylor_qv_is_98304() -> None:
    """Table 3: Taylor, K=2, K'=1 on Q and V (slices 0 and 2 of c_attn) × 24 layers → 0.098M."""
    config = QPeftConfig(
        target_modules=["c_attn"], rank=2, mapping="taylor", mapping_options={"intrinsic_rank": 1},
        fused_modules={"c_attn": [0, 2]},
    )
    base = gpt2_medium()
    assert sum(model_count(base, config).values()) == 98_304
    assert _trainable(get_qpeft_model(base, config)) == 98_304


@pytest.mark.parametrize(
    "intrinsic_rank, printed",
    [(1, 0.037), (2, 0.074), (3, 0.111), (4, 0.147), (5, 0.184), (6, 0.221), (7, 0.257), (8, 0.294)],
)
def test_vit_b16_table8(intrinsic_rank: int, printed: float) -> None:
    """Table 8: Taylor, K=16 (method.md §11.3), K'=1..8 on Q and V (``q_proj``/``v_proj`` in transformers 5)."""
    config = QPeftConfig(
        target_modules=r".*attention\.(q_proj|v_proj)", rank=16, mapping="taylor",
        mapping_options={"intrinsic_rank": intrinsic_rank},
    )
    model = get_qpeft_model(vit_b16(), config)
    assert len(model.adapted_modules) == 24
    count = _trainable(model)
    assert count == sum(model_count(vit_b16(), config).values())
    assert round(count / 1e6, 3) == printed


def test_peft_lora_r2_on_deberta_v3_base_is_0_33m() -> None:
    """Table 2's LoRA row: peft LoRA r=2 on the six matrices of every layer → 331,776 (0.33M)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(deberta_v3_base(), LoraConfig(r=2, target_modules=DEBERTA_TARGETS))
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert lora == 331_776 == lora_count(deberta_v3_base_shapes(), 2)
    assert round(lora / 1e6, 2) == 0.33


def test_deberta_six_targets_per_layer() -> None:
    config = QPeftConfig(target_modules=DEBERTA_TARGETS, rank=3, mapping="pad", mapping_options={"block": "pauli"})
    counts = model_count(deberta_v3_base(), config)
    assert len(counts) == 72


def test_table2_pad_candidate_built_equals_formula() -> None:
    """The built ``pad`` construction (Pauli, L=1..4) equals the count-only formula of method.md §11.2."""
    for layers in (1, 2, 3, 4):
        config = QPeftConfig(
            target_modules=DEBERTA_TARGETS, rank=3, mapping="pad",
            mapping_options={"block": "pauli", "block_options": {"layers": layers}},
        )
        built = sum(model_count(deberta_v3_base(), config).values())
        assert built == candidate_total(deberta_v3_base_shapes(), 3, layers, "pad")


def test_candidate_report_matches_method_md() -> None:
    """method.md §11.2's candidate table, cell by cell, and which candidates land in range."""
    rows = {(r["table"], r["construction"], r["L"], r["K"]): r for r in candidate_report()}
    expected = {
        "pad": [4392, 7080, 9768, 12456, 15144],
        "qsd_per_pair": [69624, 78648],
        "qsd_single_angle": [14472, 23496],
        "mixed_radix": [4536, 7224, 9912, 12600, 15288],
        "so3_kron": [3960, 6072, 8184, 10296, 12408],
    }
    for construction, totals in expected.items():
        for L, total in enumerate(totals, start=1):
            assert rows[("Table 2", construction, L, 3)]["total"] == total
    assert [round(rows[("Table 2", "real_log", L, 3)]["total"]) for L in (1, 2, 3, 4, 5)] == [4213, 6781, 9350, 11918, 14487]
    hits = {k for k, r in rows.items() if r["in_range"] and k[0] == "Table 2"}
    assert hits == {("Table 2", "mixed_radix", 4, 3)}
    assert rows[("Table 6", "qsd_single_angle", 2, 1)]["total"] == 7464
    assert all(p.printed for p in UNREPRODUCED)


def test_default_method_config_on_deberta_is_11160() -> None:
    """``method=quantum_peft`` (conf/method/quantum_peft.yaml) on DeBERTaV3-base: the README's 11,160."""
    from omegaconf import OmegaConf

    method = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "method" / "quantum_peft.yaml")
    config = QPeftConfig(
        target_modules=DEBERTA_TARGETS, rank=method.rank, alpha=method.alpha, mapping=method.mapping,
        mapping_options=OmegaConf.to_container(method.mapping_options),
    )
    assert sum(model_count(deberta_v3_base(), config).values()) == 11_160


def _method_config(name: str, **extra: object) -> QPeftConfig:
    from omegaconf import OmegaConf

    method = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "method" / f"{name}.yaml")
    return QPeftConfig(rank=method.rank, alpha=method.alpha, mapping=method.mapping,
                       mapping_options=OmegaConf.to_container(method.mapping_options), **extra)


HEADER_COUNTS = {  # method config -> (DeBERTaV3-base six matrices or None, GPT-2 Medium Q and V)
    "quantum_peft": (11_160, 2_832), "quantum_peft_qsd": (66_312, 2_832), "quantum_peft_pad": (4_392, 2_832),
    "quantum_peft_pauli": (None, 2_832), "quantum_peft_taylor": (165_960, 98_352), "quantum_peft_exp": (165_960, 98_352),
}


@pytest.mark.parametrize("name", sorted(HEADER_COUNTS))
def test_method_configs_give_their_header_counts(name: str) -> None:
    """Every Quantum-PEFT method config states its count on DeBERTaV3-base and GPT-2 Medium; both are true."""
    deberta_count, gpt2_count = HEADER_COUNTS[name]
    header = (Path(__file__).resolve().parents[1] / "conf" / "method" / f"{name}.yaml").read_text()
    assert f"(c_attn slices 0, 2): {gpt2_count:,}" in header
    gpt2 = _method_config(name, target_modules=["c_attn"], fused_modules={"c_attn": [0, 2]}, fused_num_parts=3)
    assert sum(model_count(gpt2_medium(), gpt2).values()) == gpt2_count
    deberta = _method_config(name, target_modules=DEBERTA_TARGETS)
    if deberta_count is None:
        assert "DeBERTaV3-base: not applicable" in header
        with pytest.raises(ValueError, match="power of 2"):
            model_count(deberta_v3_base(), deberta)
        return
    assert f"DeBERTaV3-base, the six matrices: {deberta_count:,}" in header
    assert sum(model_count(deberta_v3_base(), deberta).values()) == deberta_count
