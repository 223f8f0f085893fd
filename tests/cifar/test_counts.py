"""Tables 6 and 8 parameter counts through the harness's own path (Hydra composition, then ``build_method``) on
ViT-B/16 built from its config on the meta device, its head shrunk to the 10 selected rows."""

from __future__ import annotations

import pytest
import torch
from transformers import ViTConfig, ViTForImageClassification

from experiments.methods import build_method
from experiments.paper_values import TABLE8_PARAMS
from experiments.tasks.cifar import shrink_classifier


def meta_vit_b16() -> torch.nn.Module:
    with torch.device("meta"):
        model = ViTForImageClassification(ViTConfig(num_labels=1000))
    shrink_classifier(model, list(range(10)))
    return model


def _trainable(make_cfg, *overrides: str) -> int:
    cfg = make_cfg(["+experiment=cifar10_vit", *overrides])
    built = build_method(cfg.method, meta_vit_b16(), cfg.model, 1000, task_type=None)
    names = list(built.trainable_parameters())
    assert names and all(".q_proj." in n or ".v_proj." in n for n in names)  # query and value only
    return built.counts()[0]


@pytest.mark.parametrize(("rank", "count"), [(1, 36_864), (2, 73_728), (4, 147_456)])
def test_table6_lora(rank: int, count: int, make_cfg) -> None:
    assert _trainable(make_cfg, "method=lora", f"method.r={rank}") == count


@pytest.mark.parametrize("k_prime", sorted(TABLE8_PARAMS))
def test_table8_taylor(k_prime: int, make_cfg) -> None:
    total = _trainable(make_cfg, "method=quantum_peft_taylor", "+sweep=cifar_intrinsic_rank",
                       f"method.mapping_options.intrinsic_rank={k_prime}")
    assert total == 24 * (2 * (768 * k_prime - k_prime * (k_prime + 1) // 2) + 16)
    assert round(total / 1e6, 3) == TABLE8_PARAMS[k_prime]


def test_table6_quantum_peft_rows(make_cfg) -> None:
    """Pauli padded to 1024, K = 1, L = 8 (7,416 -> the printed 0.007M; the construction is [U]); Taylor K = 4, K' = 1."""
    pauli = _trainable(make_cfg, "method=quantum_peft_pad")
    assert pauli == 7_416 and round(pauli / 1e6, 3) == 0.007
    assert _trainable(make_cfg, "method=quantum_peft_taylor") == 24 * (2 * 767 + 4)


def test_full_ft_is_backbone_plus_ten_head_rows() -> None:
    model = meta_vit_b16()
    assert sum(p.numel() for p in model.parameters()) == 85_798_656 + 7_690


@pytest.mark.parametrize("network", ["cp", "trd", "htd", "tucker", "ttd"])
def test_table10_networks_count_what_counting_says(network: str, make_cfg) -> None:
    """Each ``quantum_peft_tn_*`` config injected into ViT-B/16 has exactly ``counting.table10_counts``'s count."""
    from qpeft.counting import TABLE10_METHODS, table10_counts

    expected = {row["network"]: row["count"] for row in table10_counts(settings=TABLE10_METHODS)}
    assert _trainable(make_cfg, "model=vit_b16", f"method=quantum_peft_tn_{network}") == expected[network]
    if network == "ttd":
        assert expected[network] == 110_688
