"""Several named adapters on one model: add, set, delete, disable, merge by name, save and load them all."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from qpeft import QPeftConfig, QPeftLayer, QPeftModel, get_qpeft_model
from qpeft.layers import ModulesToSave
from tests.tiny_models import MLP, randomize_adapters

FIRST = QPeftConfig(target_modules=["lin0", "lin1"], rank=2, mapping="taylor", modules_to_save=["classifier"])
SECOND = QPeftConfig(target_modules=["lin1"], rank=3, mapping="pauli", mapping_v="qsd", alpha=8)  # lin0 not adapted
X = torch.randn(5, 16, generator=torch.Generator().manual_seed(2))


def _out(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(X)


def _single(config: QPeftConfig, state: dict[str, torch.Tensor]) -> QPeftModel:
    """The same base with only this adapter and these tensors: what the named adapter must compute."""
    torch.manual_seed(0)
    model = get_qpeft_model(MLP(), config)
    model.load_adapter_state_dict(state)
    return model.eval()


def _two() -> tuple[QPeftModel, dict[str, dict[str, torch.Tensor]]]:
    torch.manual_seed(0)
    model = randomize_adapters(get_qpeft_model(MLP(), FIRST), seed=1)
    model.add_adapter("second", SECOND)
    model.set_adapter("second")
    randomize_adapters(model, seed=2)  # only the active adapter's tensors are trainable
    model.set_adapter("default")
    return model.eval(), {name: copy.deepcopy(model.adapter_state_dict(name)) for name in ("default", "second")}


def _trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_each_adapter_computes_what_it_computes_alone() -> None:
    model, states = _two()
    first, second = _single(FIRST, states["default"]), _single(SECOND, states["second"])
    assert not torch.allclose(_out(first), _out(second))
    for name, reference in [("default", first), ("second", second), ("default", first)]:
        model.set_adapter(name)
        assert model.active_adapter == name and model.active_adapters == [name]
        torch.testing.assert_close(_out(model), _out(reference), atol=0, rtol=0)
    with model.disable_adapter():
        torch.manual_seed(0)
        torch.testing.assert_close(_out(model), _out(MLP()), atol=1e-6, rtol=1e-6)


def test_only_the_active_adapter_trains() -> None:
    torch.manual_seed(0)
    model = get_qpeft_model(MLP(), FIRST)
    first = _trainable(model)
    model.add_adapter("second", SECOND)
    assert _trainable(model) == first  # added frozen, nothing else changed
    model.set_adapter("second")
    assert _trainable(model) and all(".second." in n for n in _trainable(model))
    model.set_adapter("second", inference_mode=True)
    assert not _trainable(model)
    model.set_requires_grad(["default", "second"])
    assert all(".default." in n or ".second." in n for n in _trainable(model))


def test_merge_by_name() -> None:
    model, states = _two()
    both = _single(SECOND, states["second"])
    model.merge_adapter(["second"])  # folded into W; "default" is still active on top of it
    assert model.get_base_model().lin1.merged_adapters == ["second"]
    model.set_adapter("second")  # merged: nothing more is added
    torch.testing.assert_close(_out(model), _out(both), atol=1e-5, rtol=1e-5)
    model.unmerge_adapter()
    torch.testing.assert_close(_out(model), _out(both), atol=1e-5, rtol=1e-5)
    plain = model.merge_and_unload(adapter_names=["second"])
    assert not any(isinstance(m, (QPeftLayer, ModulesToSave)) for m in plain.modules())
    torch.testing.assert_close(_out(plain), _out(both), atol=1e-5, rtol=1e-5)


def test_delete_adapter_unwraps_what_only_it_adapted() -> None:
    model, states = _two()
    model.set_adapter("second")
    with pytest.warns(UserWarning, match="active adapter is now 'default'"):
        model.delete_adapter("second")
    assert list(model.peft_config) == ["default"] and model.active_adapter == "default"
    assert list(model.get_base_model().lin1.qpeft_adapters) == ["default"]
    torch.testing.assert_close(_out(model), _out(_single(FIRST, states["default"])), atol=0, rtol=0)
    with pytest.raises(ValueError, match="only one; use unload"):
        model.delete_adapter("default")

    torch.manual_seed(0)
    model = get_qpeft_model(MLP(), QPeftConfig(target_modules=["lin0"], rank=2))
    model.add_adapter("other", QPeftConfig(target_modules=["lin1"], rank=2, modules_to_save=["classifier"]))
    model.delete_adapter("other")
    base = model.get_base_model()
    assert type(base.lin1) is nn.Linear and type(base.classifier) is nn.Linear  # nothing left on them


def test_save_and_load_every_adapter(tmp_path: Path) -> None:
    model, states = _two()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").is_file()
    assert (tmp_path / "second" / "adapter_config.json").is_file()
    torch.manual_seed(0)
    loaded = QPeftModel.from_pretrained(MLP(), tmp_path)
    loaded.load_adapter(tmp_path / "second", "second")
    assert sorted(loaded.peft_config) == ["default", "second"] and not loaded.training
    for name, config in [("default", FIRST), ("second", SECOND)]:
        loaded.set_adapter(name)
        torch.testing.assert_close(_out(loaded), _out(_single(config, states[name])), atol=0, rtol=0)


def test_bad_adapter_calls_fail_loudly() -> None:
    model, _ = _two()
    with pytest.raises(ValueError, match="already exists"):
        model.add_adapter("second", SECOND)
    with pytest.raises(ValueError, match="adapter_name='a.b' is invalid"):
        model.add_adapter("a.b", SECOND)
    with pytest.raises(TypeError, match="needs a QPeftConfig"):
        model.add_adapter(SECOND, "third")  # transformers' argument order
    with pytest.raises(ValueError, match="not found; available: \\['default', 'second'\\]"):
        model.set_adapter("third")
    with pytest.raises(ValueError, match="one active adapter at a time"):
        model.set_adapter(["default", "second"])
    model.merge_adapter(["second"])
    with pytest.raises(ValueError, match="unmerge it before deleting"):
        model.delete_adapter("second")


def test_unload_gives_back_the_base_without_merging() -> None:
    model, states = _two()
    plain = model.unload()
    assert not any(isinstance(m, (QPeftLayer, ModulesToSave)) for m in plain.modules())
    torch.manual_seed(0)
    base = MLP()
    for name in ("lin0", "lin1"):  # W untouched: nothing was merged
        assert torch.equal(getattr(plain, name).weight, getattr(base, name).weight)
    assert torch.equal(plain.classifier.weight, states["default"]["classifier.qpeft_modules_to_save.weight"])
