"""``save_pretrained(path, as_lora=True)`` writes an exact peft LoRA adapter that plain peft loads without qpeft.

B = (α/K)·U·diag(λ), A = Vᵀ per layer (a fused layer adapted on some slices: full-width B, zero rows for the
others).  The check that matters runs in a fresh process that never imports qpeft.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from transformers import DebertaV2ForSequenceClassification, GPT2LMHeadModel

from qpeft import QPeftConfig, get_qpeft_model
from qpeft.lora_export import lora_factors
from tests.tiny_models import randomize_adapters, tiny_deberta, tiny_gpt2

CASES = {
    "gpt2": (tiny_gpt2, GPT2LMHeadModel, dict(
        target_modules=["c_attn", "c_proj"], rank=2, mapping="taylor", mapping_options={"intrinsic_rank": 1},
        fused_modules={"c_attn": [0, 2]}, rank_pattern={"mlp.c_proj": 3}, alpha_pattern={"mlp.c_proj": 4.0},
        task_type="CAUSAL_LM")),
    "deberta": (tiny_deberta, DebertaV2ForSequenceClassification, dict(
        target_modules=["query_proj", "value_proj"], rank=3, mapping="qsd", modules_to_save=["classifier", "pooler"],
        bias="all", task_type="SEQ_CLS")),
}
IDS = torch.randint(1, 97, (2, 9), generator=torch.Generator().manual_seed(1))

PLAIN_PEFT = r"""
import sys, torch, transformers
from peft import PeftModel
cases = torch.load(sys.argv[1])
out = {}
for name, case in cases.items():
    base = getattr(transformers, case["cls"]).from_pretrained(case["base"]).eval()
    model = PeftModel.from_pretrained(base, case["lora"])
    with torch.no_grad():
        out[name] = model(input_ids=case["ids"]).logits
assert "qpeft" not in sys.modules, "qpeft was imported"
torch.save(out, sys.argv[2])
"""


def _adapted(case: str, base_dir: Path) -> torch.nn.Module:
    factory, cls, kwargs = CASES[case]
    torch.manual_seed(0)
    factory().save_pretrained(base_dir)
    return randomize_adapters(get_qpeft_model(cls.from_pretrained(base_dir), QPeftConfig(**kwargs))).eval()


def test_lora_factors_are_the_update_and_zero_outside_the_adapted_slices(tmp_path: Path) -> None:
    model = _adapted("gpt2", tmp_path).double()
    layer = model.get_base_model().transformer.h[0].attn.c_attn
    a, b = lora_factors(layer, "default")
    k, width = 2, layer.out_features // 3
    assert a.shape == (2 * k, layer.in_features) and b.shape == (layer.out_features, 2 * k)
    assert torch.equal(b[width:2 * width], torch.zeros_like(b[width:2 * width]))  # K rows: not adapted
    assert b.abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close((b @ a).T, layer.delta_weight(), atol=1e-12, rtol=1e-12)  # Conv1D: (in, out)


def test_lora_config_says_what_peft_needs(tmp_path: Path) -> None:
    model = _adapted("gpt2", tmp_path / "base")
    model.save_pretrained(tmp_path / "lora", as_lora=True)
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["fan_in_fan_out"] is True
    assert config["r"] == config["lora_alpha"] == 2  # scaling 1: the α/K is inside B
    assert set(config["rank_pattern"].values()) == {4, 3}  # c_attn: 2 slices x K=2; mlp.c_proj: rank_pattern 3
    assert config["rank_pattern"] == config["alpha_pattern"]
    assert config["base_model_name_or_path"] == str(tmp_path / "base")
    assert "library_name: peft" in (tmp_path / "lora" / "README.md").read_text()


def test_lora_export_loads_in_plain_peft_without_qpeft(tmp_path: Path) -> None:
    cases, expected = {}, {}
    for name, (_, cls, _) in CASES.items():
        model = _adapted(name, tmp_path / name / "base")
        model.save_pretrained(tmp_path / name / "lora", as_lora=True)
        with torch.no_grad():
            expected[name] = model(input_ids=IDS).logits
        cases[name] = {"cls": cls.__name__, "base": str(tmp_path / name / "base"),
                       "lora": str(tmp_path / name / "lora"), "ids": IDS}
    torch.save(cases, tmp_path / "cases.pt")
    result = subprocess.run([sys.executable, "-c", PLAIN_PEFT, str(tmp_path / "cases.pt"), str(tmp_path / "out.pt")],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt")
    for name in CASES:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-5, msg=name)
