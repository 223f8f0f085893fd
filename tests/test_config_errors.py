"""Bad ``QPeftConfig`` values and damaged adapter files fail with a ValueError naming the field or the file."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qpeft import QPeftConfig, QPeftModel, get_qpeft_model


@pytest.mark.parametrize("kwargs, message", [
    ({"rank": True}, r"QPeftConfig\.rank=True is invalid; allowed values: integers >= 1"),
    ({"alpha": float("inf")}, r"QPeftConfig\.alpha=inf is invalid; allowed values: a finite number > 0"),
    ({"alpha": "x"}, r"QPeftConfig\.alpha='x' is invalid; allowed values: a finite number > 0"),
    ({"dropout": "x"}, r"QPeftConfig\.dropout='x' is invalid; allowed values: a number 0 <= dropout < 1"),
    ({"target_modules": [1, 2]}, (r"QPeftConfig\.target_modules=\[1, 2\] is invalid; allowed values: a list of "
                                  r"module-name suffixes \(strings\) or one regex")),
    ({"modules_to_save": "classifier"}, (r"QPeftConfig\.modules_to_save='classifier' is invalid; allowed values: a "
                                         r"list of module-name suffixes \(strings\), e.g. \['classifier'\]")),
])
def test_bad_value_names_field_and_allowed_values(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        QPeftConfig(**{"target_modules": ["0"], **kwargs})


def test_rank_above_a_power_of_two_width_says_rank_not_qsd() -> None:
    with pytest.raises(ValueError, match=r"rank=65 exceeds the width 64.*allowed: rank <= 64") as err:
        get_qpeft_model(nn.Sequential(nn.Linear(64, 64)), QPeftConfig(target_modules=["0"], rank=65, mapping="pauli"))
    assert "qsd" not in str(err.value)
    with pytest.raises(ValueError, match="use mapping='qsd'"):  # a width that is not a power of two
        get_qpeft_model(nn.Sequential(nn.Linear(64, 48)), QPeftConfig(target_modules=["0"], rank=3, mapping="pauli"))


@pytest.mark.parametrize("name, content, message", [
    ("adapter_model.safetensors", b"garbage", "adapter_model.safetensors is not a readable safetensors file"),
    ("adapter_model.safetensors", b"", "adapter_model.safetensors is not a readable safetensors file"),
    ("adapter_config.json", b"{broken", "adapter_config.json is not valid JSON"),
    ("adapter_config.json", b"[1, 2]", "adapter_config.json holds a list"),
    ("adapter_config.json", b'{"rank": 3, "target_modules": ["0"], "bogus": 1}', r"adapter_config.json: unknown"),
])
def test_damaged_adapter_file_is_named(name, content, message, tmp_path) -> None:
    get_qpeft_model(nn.Sequential(nn.Linear(8, 8)), QPeftConfig(target_modules=["0"], mapping="taylor")) \
        .save_pretrained(tmp_path)
    (tmp_path / name).write_bytes(content)
    base = nn.Sequential(nn.Linear(8, 8))
    before = [p.clone() for p in base.parameters()]
    with pytest.raises(ValueError, match=message) as err:
        QPeftModel.from_pretrained(base, tmp_path)
    assert str(tmp_path) in str(err.value)
    assert isinstance(base[0], nn.Linear) and all(torch.equal(a, b) for a, b in zip(before, base.parameters()))
