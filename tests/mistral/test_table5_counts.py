"""Table 5 parameter counts by injection, through the harness's own path (Hydra composition of
``+experiment=mistral_glue_sst2``, then ``build_method``) into Mistral-7B's config on the meta device.

bitsandbytes cannot quantize meta tensors, so the counts are taken on the unquantized meta model: 4-bit
quantization replaces each Linear's weight but never adds or removes an adapter parameter (the trainable
counts of the NF4 tiny model equal those of its float twin, checked below on ``tiny_mistral_4bit``).
The trained ``score`` head (4096 x 2, no bias) is counted apart: Table 5 counts the adapters only.
"""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from transformers import MistralConfig, MistralForSequenceClassification

from experiments.methods import build_method
from qpeft.counting import lora_count, mistral_7b_shapes, table5_candidates
from tests.harness.conftest import CONF

HEAD = 4096 * 2
LORA = 32 * 3 * (8192 + 5120 + 5120 + 18432)  # 3,538,944 (method.md §11.4)
ADALORA_TRAINED = 32 * 4 * (8192 + 5120 + 5120 + 18432) + 128 * 4  # init_r = 4: 4,719,104
ADALORA_PRUNED = 32 * 3 * (8192 + 5120 + 5120 + 18432) + 128 * 3  # target_r = 3: 3,539,328 (3.54M)
CANDIDATES = {row["method"]: row["total"] for row in table5_candidates() if row["method"]}


def _compose(method: str, model: str = "mistral_7b_4bit"):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=["+experiment=mistral_glue_sst2", f"method={method}", f"model={model}"])


def meta_mistral_7b() -> torch.nn.Module:
    config = MistralConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                           num_key_value_heads=8, num_labels=2, pad_token_id=2)
    with torch.device("meta"):
        return MistralForSequenceClassification(config)


def _adapter_count(method: str) -> int:
    cfg = _compose(method)
    built = build_method(cfg.method, meta_mistral_7b(), cfg.model, total_steps=1000)
    trainable = built.trainable_parameters()
    assert sum(p.numel() for n, p in trainable.items() if "score" in n) == HEAD
    projections = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj", "o_proj")
    adapted = {name.split(".")[-1] for name, module in built.model.named_modules()
               if name.endswith(projections) and any(p.requires_grad for p in module.parameters())}
    assert adapted == {"q_proj", "k_proj", "v_proj", "gate_proj"}
    return built.counts()[0] - HEAD


def test_lora_is_3538944() -> None:
    assert lora_count(mistral_7b_shapes(), 3) == LORA == 3_538_944
    assert _adapter_count("lora") == LORA
    assert f"{LORA / 1e6:.2f}M" == "3.54M"


def test_adalora_trains_init_r_and_keeps_lora_budget() -> None:
    assert _adapter_count("adalora") == ADALORA_TRAINED
    assert f"{ADALORA_PRUNED / 1e6:.2f}M" == "3.54M"


@pytest.mark.parametrize("method", sorted(CANDIDATES))
def test_quantum_peft_candidates_equal_injection(method: str) -> None:
    """Each built candidate of ``counting.table5_candidates``; none reproduces 0.758M [U] (method.md §11.4)."""
    assert _adapter_count(method) == CANDIDATES[method]


def test_table5_report() -> None:
    rows = {row["construction"]: row for row in table5_candidates()}
    assert rows["qsd_single_angle"]["method"] == "quantum_peft"  # the config the Table 5 row runs
    assert rows["mixed_taylor_pauli (coincidence)"]["total"] == 758_080  # method.md §11.4's coincidental fit
    assert [c for c, row in rows.items() if row["in_range"]] == ["mixed_taylor_pauli (coincidence)"]


@pytest.mark.parametrize("method", ["quantum_peft", "lora"])
def test_quantization_changes_no_trainable_count(method: str, glue_dir) -> None:
    from experiments.models import build_model
    from experiments.tasks import build_task

    counts = []
    for bits in ("true", "false"):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=["+experiment=mistral_glue_sst2", f"method={method}",
                                               "model=tiny_mistral_4bit", f"model.load_in_4bit={bits}",
                                               f"task.data_dir={glue_dir}"])
        model, _ = build_model(cfg.model, build_task(cfg.task))
        counts.append(build_method(cfg.method, model, cfg.model, total_steps=10).counts()[0])
    assert counts[0] == counts[1] > 0


@pytest.mark.parametrize("n", [14336, 1024, 4096])
def test_mistral_widths_give_orthonormal_factors(n: int) -> None:
    """The gate's 14336 = 8192 + 4096 + 2048 goes through the QSD recursion (Eq. 4), 1024 and 4096 are Pauli
    circuits; each K = 3 factor of ``method=quantum_peft`` has orthonormal columns and its counted parameters."""
    from qpeft.counting import TABLE5_BUILT
    from qpeft.unitary.base import build_mapping, count_mapping_parameters

    _, _, mapping, options = TABLE5_BUILT[0]
    factor = build_mapping(mapping, n, 3, **options)
    with torch.no_grad():
        for param in factor.parameters():
            param.uniform_(0.0, 1.5)
        u = factor()
    assert u.shape == (n, 3)
    torch.testing.assert_close(u.T @ u, torch.eye(3), atol=1e-5, rtol=0)
    assert sum(p.numel() for p in factor.parameters()) == count_mapping_parameters(mapping, n, 3, **options)
