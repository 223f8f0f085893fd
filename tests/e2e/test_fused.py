"""``experiments.fused``: splitting GPT-2's fused ``c_attn`` keeps outputs and parameter values, and peft adapters
on the split slices train, save and reload."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from peft import AdaLoraConfig, LoHaConfig, LoKrConfig, LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from experiments.fused import SplitProjection, part_names, split_fused
from experiments.methods import build_method
from tests.tiny_models import tiny_gpt2

FUSED = {"c_attn": [0, 2]}
IDS = torch.randint(1, 97, (2, 11), generator=torch.Generator().manual_seed(3))


def _logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_split_gpt2_keeps_outputs_and_values() -> None:
    model = tiny_gpt2(dropout=0.1)  # dropout on, eval mode
    fused = {n: (m.weight.detach().clone(), m.bias.detach().clone()) for n, m in model.named_modules()
             if n.endswith("c_attn")}
    before = _logits(model)
    targets = split_fused(model, FUSED, 3)
    assert targets == ["c_attn.q", "c_attn.v"]
    for name, (weight, bias) in fused.items():
        split = model.get_submodule(name)
        assert isinstance(split, SplitProjection) and not any(isinstance(m, Conv1D) for m in split.modules())
        assert torch.equal(torch.cat([split.q.weight, split.k.weight, split.v.weight]), weight.T)
        assert torch.equal(torch.cat([split.q.bias, split.k.bias, split.v.bias]), bias)
    after = _logits(model)
    assert (after - before).abs().max() <= 1e-6 * before.abs().max()
    assert sum(1 for n, _ in model.named_modules() if n.endswith(tuple(targets))) == 2 * 2


def test_split_medium_shaped_c_attn_and_linear() -> None:
    torch.manual_seed(0)
    conv = Conv1D(3072, 1024)
    conv.bias.data.normal_()
    conv.requires_grad_(False)
    x = torch.randn(4, 7, 1024)
    split = SplitProjection.from_fused(conv, 3)
    want = conv(x)
    assert (split(x) - want).abs().max() <= 1e-6 * want.abs().max()
    assert not any(p.requires_grad for p in split.parameters())  # frozen stays frozen
    linear = nn.Linear(64, 96, bias=False)
    halves = SplitProjection.from_fused(linear, 2)
    assert halves.names == part_names(2) == ("0", "1") and torch.equal(halves(x[..., :64]), linear(x[..., :64]))


def test_split_refuses_bad_inputs() -> None:
    with pytest.raises(ValueError, match="out of range"):
        split_fused(tiny_gpt2(), {"c_attn": [3]}, 3)
    with pytest.raises(ValueError, match="match no module"):
        split_fused(tiny_gpt2(), {"qkv": [0]}, 3)
    with pytest.raises(ValueError, match="does not divide"):
        SplitProjection.from_fused(nn.Linear(4, 10), 3)
    with pytest.raises(TypeError, match="Embedding"):
        SplitProjection.from_fused(nn.Embedding(4, 3), 3)


def test_split_on_meta_device_gpt2_medium_targets_48() -> None:
    with torch.device("meta"):
        model = GPT2LMHeadModel(GPT2Config(n_embd=1024, n_layer=24, n_head=16))
    targets = split_fused(model, FUSED, 3)
    hits = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.endswith(tuple(targets))]
    assert len(hits) == 48 and all(p.is_meta for p in model.parameters())


@pytest.mark.parametrize("config", [LoraConfig(r=2, lora_alpha=4), LoHaConfig(r=2, alpha=4), LoKrConfig(r=4, alpha=4),
                                    AdaLoraConfig(init_r=3, target_r=2, lora_alpha=4, total_step=10)],
                         ids=["lora", "loha", "lokr", "adalora"])
def test_peft_on_split_slices_trains_saves_reloads(config: object, tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = tiny_gpt2()
    state = {k: v.clone() for k, v in base.state_dict().items()}
    reference = _logits(base)
    config.target_modules = split_fused(base, FUSED, 3)
    model = get_peft_model(base, config)
    torch.testing.assert_close(_logits(model), reference, rtol=0, atol=1e-5)  # ΔW = 0 at init
    trainable = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():  # a visible update (AdaLoRA's E and LoRA's B start at 0)
        for param in trainable:
            param.add_(0.1 * torch.randn_like(param))
    opt = torch.optim.SGD(trainable, lr=0.5)
    model.train()
    for _ in range(2):
        model(input_ids=IDS, labels=IDS).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    trained = _logits(model)
    assert (trained - reference).abs().max() > 1e-4
    changed = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed and all(".c_attn.q." in n or ".c_attn.v." in n for n in changed)
    model.save_pretrained(tmp_path)
    fresh = tiny_gpt2()
    fresh.load_state_dict(state)
    split_fused(fresh, FUSED, 3)
    reloaded = PeftModel.from_pretrained(fresh, tmp_path).eval()
    torch.testing.assert_close(_logits(reloaded), trained, rtol=0, atol=1e-6)


def test_build_method_splits_for_peft_and_explicit_targets_win() -> None:
    model_cfg = OmegaConf.create({"target_modules": ["c_attn", "c_fc"], "fused_modules": FUSED,
                                  "fused_num_parts": 3, "head_modules": []})
    lora = OmegaConf.create({"_target_": "peft.LoraConfig", "name": "lora", "kind": "peft", "protocol": "baseline",
                             "r": 2, "lora_alpha": 4, "target_modules": None})
    method = build_method(lora, tiny_gpt2(), model_cfg, total_steps=4, task_type="CAUSAL_LM")
    assert sorted(method.model.peft_config["default"].target_modules) == ["c_attn.q", "c_attn.v", "c_fc"]
    explicit = build_method(OmegaConf.merge(lora, {"target_modules": ["c_attn.k"]}), tiny_gpt2(), model_cfg,
                            total_steps=4, task_type="CAUSAL_LM")
    trainable = explicit.trainable_parameters()
    assert trainable and all(".c_attn.k.lora_" in n for n in trainable)


def test_adalora_ranknum_stays_frozen_on_a_device_move() -> None:
    with torch.device("meta"):  # peft re-wraps ranknum as a trainable Parameter when the base is elsewhere
        model = tiny_gpt2()
    model_cfg = OmegaConf.create({"target_modules": ["c_attn"], "fused_modules": FUSED, "fused_num_parts": 3,
                                  "head_modules": []})
    adalora = OmegaConf.create({"_target_": "peft.AdaLoraConfig", "name": "adalora", "kind": "peft",
                                "protocol": "baseline", "init_r": 3, "target_r": 2, "target_modules": None,
                                "tinit": 0, "tfinal": 0, "deltaT": 1, "reference_total_step": None})
    method = build_method(adalora, model, model_cfg, total_steps=10, task_type="CAUSAL_LM")
    assert not [n for n in method.trainable_parameters() if "ranknum" in n]
    assert method.counts()[0] == 2 * 2 * 3 * (32 + 32 + 1)
