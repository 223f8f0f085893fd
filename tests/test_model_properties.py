"""peft-style property matrix: every (tiny model × mapping) row is held to the same contract.

Identity at init, only ``qpeft_`` parameters train, save/load round trip under another seed,
merge == unmerged, ``merge_and_unload`` leaves no wrapper, disabling gives the base, bf16 is finite.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from qpeft import QPeftConfig, QPeftLayer, QPeftModel, get_qpeft_model
from qpeft.counting import model_count
from qpeft.layers import ModulesToSave
from tests.tiny_models import DEBERTA_TARGETS, MLP, Linear4bitNet, tiny_deberta, tiny_gpt2


def _mlp_input() -> dict:
    return {"x": torch.randn(5, 16)}


def _bnb_input() -> dict:
    return {"x": torch.randn(5, 16)}


def _ids_input() -> dict:
    g = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(1, 97, (3, 11), generator=g)}


CASES = [
    # name, model factory, input factory, config kwargs
    ("mlp-taylor", MLP, _mlp_input, dict(target_modules=["lin0", "lin1"], rank=3, mapping="taylor", modules_to_save=["classifier"])),
    ("mlp-pauli-qsd", MLP, _mlp_input, dict(target_modules=r"lin\d", rank=2, mapping="pauli", mapping_v="qsd")),
    ("gpt2-taylor-qv", tiny_gpt2, _ids_input,
     dict(target_modules=["c_attn"], rank=2, mapping="taylor", mapping_options={"intrinsic_rank": 1}, fused_modules={"c_attn": [0, 2]})),
    ("gpt2-pauli-mlp", tiny_gpt2, _ids_input, dict(target_modules=["c_fc", "c_proj"], rank=4, mapping="pauli")),
    ("deberta-pauli", tiny_deberta, _ids_input,
     dict(target_modules=DEBERTA_TARGETS, rank=3, mapping="pauli", modules_to_save=["classifier", "pooler"])),
    ("deberta-qsd", tiny_deberta, _ids_input, dict(target_modules=DEBERTA_TARGETS, rank=3, mapping="qsd")),
    ("mlp-pauli-qat", MLP, _mlp_input,
     dict(target_modules=["lin1"], rank=4, mapping="pauli", mapping_v="taylor", quant_bits=3, quant_group_size=8)),
    ("bnb4bit-taylor", Linear4bitNet, _bnb_input, dict(target_modules=["q4"], rank=4, mapping="taylor")),
]
IDS = [c[0] for c in CASES]


def _out(model: nn.Module, inputs: dict) -> torch.Tensor:
    out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out


def _build(case: tuple) -> tuple[nn.Module, QPeftModel, dict, QPeftConfig]:
    _, factory, make_input, kwargs = case
    torch.manual_seed(0)
    base = factory()
    config = QPeftConfig(**kwargs)
    # bnb 4-bit layers pick their CPU kernel by mode and input.requires_grad: freeze the reference alike
    reference = copy.deepcopy(base).eval().requires_grad_(False)
    return reference, get_qpeft_model(base, config).eval(), make_input(), config


def _train(model: QPeftModel, inputs: dict, steps: int = 3, lr: float = 0.05) -> None:
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        _out(model, inputs).pow(2).mean().backward()
        opt.step()
    model.eval()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_identity_at_init(case: tuple) -> None:
    reference, model, inputs, _ = _build(case)
    torch.testing.assert_close(_out(model, inputs), _out(reference, inputs), atol=0, rtol=0)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_only_adapter_parameters_change(case: tuple) -> None:
    _, model, inputs, _ = _build(case)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("qpeft_" in n for n in trainable), sorted(trainable)[:5]
    _train(model, inputs)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "training changed nothing"
    assert all("qpeft_" in k for k in changed), sorted(changed - {k for k in changed if "qpeft_" in k})
    assert any("qpeft_lambda" in k for k in changed)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_trained_adapter_changes_output_and_disable_restores_base(case: tuple) -> None:
    reference, model, inputs, _ = _build(case)
    _train(model, inputs)
    adapted = _out(model, inputs)
    base = _out(reference, inputs)
    assert not torch.allclose(adapted, base, atol=1e-6)
    with model.disable_adapter():
        torch.testing.assert_close(_out(model, inputs), base, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(_out(model, inputs), adapted)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_save_load_round_trip_under_another_seed(case: tuple, tmp_path) -> None:
    reference, model, inputs, _ = _build(case)
    _train(model, inputs)
    expected = _out(model, inputs)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == "QPEFT"
    torch.manual_seed(1234)  # a different seed must not matter: everything needed is in the files
    loaded = QPeftModel.from_pretrained(copy.deepcopy(reference), tmp_path)
    torch.testing.assert_close(_out(loaded, inputs), expected, atol=1e-5, rtol=1e-5)
    n_saved = sum(v.numel() for v in model.adapter_state_dict().values())
    assert n_saved == model.get_nb_trainable_parameters()[0]


@pytest.mark.parametrize("case", [c for c in CASES if "bnb" not in c[0]], ids=[i for i in IDS if "bnb" not in i])
def test_merge_equals_unmerged_and_unload_leaves_no_wrapper(case: tuple) -> None:
    _, model, inputs, _ = _build(case)
    _train(model, inputs)
    expected = _out(model, inputs)
    model.merge_adapter()
    torch.testing.assert_close(_out(model, inputs), expected, atol=1e-4, rtol=1e-4)
    model.unmerge_adapter()
    torch.testing.assert_close(_out(model, inputs), expected, atol=1e-4, rtol=1e-4)
    plain = model.merge_and_unload()
    torch.testing.assert_close(_out(plain, inputs), expected, atol=1e-4, rtol=1e-4)
    assert not any(isinstance(m, (QPeftLayer, ModulesToSave)) for m in plain.modules())
    assert not any("qpeft_" in n for n, _ in plain.named_parameters())


def test_merge_into_4bit_is_approximate_and_warns() -> None:
    """Merging re-quantizes W + ΔW to nf4 (peft #2321): close in relative norm, not elementwise."""
    reference, model, inputs, _ = _build(next(c for c in CASES if "bnb" in c[0]))
    _train(model, inputs, lr=0.2)
    expected, base = _out(model, inputs), _out(reference, inputs)
    with pytest.warns(UserWarning, match="4-bit"):
        model.merge_adapter()
    merged = _out(model, inputs)
    assert (merged - expected).norm() < 0.5 * (base - expected).norm()  # the merge carries the update
    assert (merged - expected).norm() / expected.norm() < 0.05
    model.unmerge_adapter()  # a second re-quantization: up to twice the rounding of one merge
    assert (_out(model, inputs) - expected).norm() / expected.norm() < 0.1


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bf16_forward_is_finite(case: tuple) -> None:
    _, model, inputs, _ = _build(case)
    _train(model, inputs, steps=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _out(model, inputs)
    assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_counting_equals_real_numel(case: tuple) -> None:
    _, factory, _, kwargs = case
    torch.manual_seed(0)
    base = factory()
    config = QPeftConfig(**kwargs)
    predicted = sum(model_count(base, config).values())
    model = get_qpeft_model(base, config)
    real = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "modules_to_save" not in n)
    assert predicted == real


def test_eval_mode_caches_factors_and_invalidates_after_an_update() -> None:
    _, model, inputs, _ = _build(CASES[0])
    layer = next(m for _, m in model.qpeft_layers())
    with torch.no_grad():
        first = layer.factors()
        assert layer.factors()[0] is first[0]  # reused while nothing changed
    _train(model, inputs, steps=2)  # θ gets its first gradient at step 2 (λ = 0 before)
    with torch.no_grad():
        assert not torch.equal(layer.factors()[1], first[1])


def test_unknown_target_and_bad_config_fail_loudly() -> None:
    with pytest.raises(ValueError, match="matched no supported module"):
        get_qpeft_model(MLP(), QPeftConfig(target_modules=["nope"]))
    with pytest.raises(ValueError, match="mapping"):
        QPeftConfig(target_modules=["lin0"], mapping="paulli")
    with pytest.raises(ValueError, match="rank"):
        QPeftConfig(target_modules=["lin0"], rank=0)
    with pytest.raises(ValueError, match="bias"):
        QPeftConfig(target_modules=["lin0"], bias="some")
    with pytest.raises(ValueError, match="layerz"):
        QPeftConfig(target_modules=["lin0"], mapping="pauli", mapping_options={"layerz": 2})
    with pytest.raises(ValueError, match="fused_modules"):
        QPeftConfig(target_modules=["c_attn"], fused_modules={"c_attn": [3]})


def test_qat_forward_sees_quantized_parameters() -> None:
    """With ``quant_bits=B`` the mapping parameters used in the forward take ≤ 2^B values per group."""
    _, model, inputs, config = _build(next(c for c in CASES if "qat" in c[0]))
    _train(model, inputs, steps=3)
    layer = next(m for _, m in model.qpeft_layers())
    for mapping in layer.mappings():
        effective = mapping.theta.detach().flatten()  # the parametrized (fake-quantized) view
        raw = mapping.parametrizations.theta.original.detach().flatten()
        assert not torch.equal(effective, raw)
        for start in range(0, effective.numel(), config.quant_group_size):
            group = effective[start : start + config.quant_group_size]
            assert group.unique().numel() <= 2**config.quant_bits
