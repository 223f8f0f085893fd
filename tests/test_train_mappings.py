"""``train_mappings=False`` (the λ-only ablation): U and V stay at their initial values while λ and the head train."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qpeft import QPeftConfig, QPeftModel, get_qpeft_model
from qpeft.counting import model_count
from tests.tiny_models import MLP


def _config(train_mappings: bool, mapping: str = "qsd") -> QPeftConfig:
    options = {"block": "pauli", "block_options": {"layers": 1}} if mapping == "qsd" else {"intrinsic_rank": 2}
    return QPeftConfig(target_modules=["lin0", "lin1"], rank=2, mapping=mapping, mapping_options=options,
                       dropout=0.1, train_mappings=train_mappings)


def _mapping_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if ".qpeft_u." in n or ".qpeft_v." in n}


@pytest.mark.parametrize("mapping", ["qsd", "exp"])
def test_only_lambda_trains(mapping: str) -> None:
    torch.manual_seed(0)
    model = get_qpeft_model(MLP(), _config(False, mapping))
    before = _mapping_params(model)
    assert before and not any(p.requires_grad for n, p in model.named_parameters() if n in before)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith("qpeft_lambda") for n in trainable)
    assert model.get_nb_trainable_parameters()[0] == sum(model_count(model.get_base_model(), _config(False, mapping)).values())
    model.set_requires_grad("default", True)  # switching the adapter on again keeps its mappings frozen
    model.set_adapter("default")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    x, y = torch.randn(32, 16), torch.randn(32, 8)
    model.train()
    losses = []
    for _ in range(20):
        loss = nn.functional.mse_loss(torch.tanh(model(x)), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    after = _mapping_params(model)
    assert all(torch.equal(before[n], after[n]) for n in before)  # bit-identical
    assert losses[-1] < losses[0]  # λ learned
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if n.endswith("qpeft_lambda"))


def test_the_trained_default_moves_the_mappings_and_counts_them() -> None:
    torch.manual_seed(0)
    model = get_qpeft_model(MLP(), _config(True))
    before = _mapping_params(model)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("qpeft_lambda"):
                p.fill_(0.5)  # so that the mappings get gradients
    x, y = torch.randn(32, 16), torch.randn(32, 8)
    for _ in range(3):
        loss = nn.functional.mse_loss(torch.tanh(model(x)), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert any(not torch.equal(before[n], p.detach()) for n, p in model.named_parameters() if n in before)
    frozen = get_qpeft_model(MLP(), _config(False)).get_nb_trainable_parameters()[0]
    assert model.get_nb_trainable_parameters()[0] > frozen


def test_save_and_reload_keep_the_fixed_mappings(tmp_path) -> None:
    torch.manual_seed(0)
    model = get_qpeft_model(MLP(), _config(False))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("qpeft_lambda"):
                p.normal_()
    x = torch.randn(4, 16)
    model.eval()
    expected = model(x)
    model.save_pretrained(tmp_path)
    torch.manual_seed(0)
    base = MLP()  # the same base weights
    torch.manual_seed(1)  # another adapter init: the saved U, V must come from the file
    loaded = QPeftModel.from_pretrained(base, tmp_path, is_trainable=True)
    assert torch.equal(loaded.eval()(x), expected)
    assert all(not p.requires_grad for n, p in loaded.named_parameters() if ".qpeft_u." in n or ".qpeft_v." in n)


def test_bad_value_is_named() -> None:
    with pytest.raises(ValueError, match="train_mappings"):
        QPeftConfig(target_modules=["fc1"], train_mappings="no")
