"""peft knows qpeft once ``qpeft`` is imported: its loaders open qpeft adapters, its classes recognise qpeft's.

The ``QPEFT`` type lives in peft's registries (``qpeft.peft_interop``); ``QPeftModel`` is a ``peft.PeftModel``
whose every peft method is qpeft's own (served or refused with a message), never peft's code running on
structures it does not know.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import peft
import pytest
import torch
from peft import LoraConfig, PeftConfig, PeftModel
from transformers import GPT2LMHeadModel
from transformers.integrations.peft import PeftAdapterMixin
from transformers.trainer_utils import _is_peft_model

import qpeft
from qpeft import QPeftConfig, QPeftModel, get_qpeft_model
from tests.tiny_models import randomize_adapters, tiny_gpt2

CONFIG = dict(target_modules=["c_attn", "c_fc"], rank=2, mapping="taylor", mapping_options={"intrinsic_rank": 1},
              fused_modules={"c_attn": [0, 2]}, task_type="CAUSAL_LM")
IDS = torch.randint(1, 97, (2, 9), generator=torch.Generator().manual_seed(1))
REPO = Path(qpeft.__file__).parents[1]  # subprocesses import this checkout's qpeft


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 saved like a Hub checkpoint, so adapters record where their base model is."""
    directory = tmp_path_factory.mktemp("base")
    torch.manual_seed(0)
    tiny_gpt2().save_pretrained(directory)
    return directory


def _base(base_dir: Path) -> GPT2LMHeadModel:
    return GPT2LMHeadModel.from_pretrained(base_dir).eval()


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.fixture(scope="module")
def adapter(base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    """A saved qpeft adapter with a visible update, and the logits qpeft computes with it."""
    model = randomize_adapters(get_qpeft_model(_base(base_dir), QPeftConfig(**CONFIG))).eval()
    directory = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(directory)
    return directory, _logits(model)


@pytest.mark.parametrize("order", ["qpeft-first", "peft-first"])
def test_import_qpeft_registers_qpeft_with_peft(order: str) -> None:
    imports = "import qpeft, sys; assert 'peft' not in sys.modules; import peft" if order == "qpeft-first" \
        else "import peft, qpeft"
    code = f"{imports}\nfrom peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING as C, PEFT_TYPE_TO_TUNER_MAPPING as T\n" \
           "assert C['QPEFT'].__module__ == T['QPEFT'].__module__ == 'qpeft.peft_interop', (C, T)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]


WITHOUT_HF = r"""
import sys, tempfile, warnings
warnings.simplefilter("error")
for name in ("transformers", "peft", "huggingface_hub"):
    sys.modules[name] = None  # importing any of them raises ImportError
import torch
from torch import nn
from qpeft import QPeftConfig, QPeftModel, get_qpeft_model

def base():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))

model = get_qpeft_model(base(), QPeftConfig(target_modules=["0", "2"], rank=2, mapping="taylor"))
assert type(model) is QPeftModel
with torch.no_grad():
    for p in model.parameters():
        if p.requires_grad:
            p.normal_()
directory = tempfile.mkdtemp()
model.save_pretrained(directory)
model.save_pretrained(directory + "/lora", as_lora=True)
x = torch.randn(3, 8)
assert torch.equal(QPeftModel.from_pretrained(base(), directory)(x), model.eval()(x))
"""


def test_qpeft_works_without_transformers_and_peft() -> None:
    result = subprocess.run([sys.executable, "-c", WITHOUT_HF], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]


def test_peft_loads_a_qpeft_adapter_with_qpeft_s_outputs(base_dir: Path, adapter: tuple[Path, torch.Tensor],
                                                          tmp_path: Path) -> None:
    directory, expected = adapter
    config = PeftConfig.from_pretrained(directory)
    assert isinstance(config, QPeftConfig) and isinstance(config, PeftConfig)
    assert config.base_model_name_or_path == str(base_dir)

    loaded = PeftModel.from_pretrained(_base(base_dir), directory)
    assert not isinstance(loaded, QPeftModel) and isinstance(loaded.base_model, qpeft.QPeftTuner)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    torch.testing.assert_close(_logits(loaded), expected, atol=0, rtol=0)

    auto = peft.AutoPeftModelForCausalLM.from_pretrained(directory)  # finds the base from the adapter config
    torch.testing.assert_close(_logits(auto), expected, atol=0, rtol=0)

    loaded.save_pretrained(tmp_path)  # peft's own save path, through qpeft's state-dict hooks
    again = QPeftModel.from_pretrained(_base(base_dir), tmp_path)
    torch.testing.assert_close(_logits(again), expected, atol=0, rtol=0)

    base = _logits(_base(base_dir))
    with loaded.disable_adapter():
        torch.testing.assert_close(_logits(loaded), base, atol=1e-6, rtol=1e-6)
    merged = loaded.merge_and_unload()
    assert not any("qpeft_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged), expected, atol=1e-5, rtol=1e-5)


def test_peft_get_peft_model_builds_the_same_adapter(base_dir: Path) -> None:
    torch.manual_seed(3)
    ours = randomize_adapters(get_qpeft_model(_base(base_dir), QPeftConfig(**CONFIG))).eval()
    torch.manual_seed(3)
    theirs = randomize_adapters(peft.get_peft_model(_base(base_dir), QPeftConfig(**CONFIG))).eval()
    assert type(theirs).__name__ == "PeftModelForCausalLM"
    torch.testing.assert_close(_logits(theirs), _logits(ours), atol=0, rtol=0)


def test_trainer_and_peft_see_a_peft_model(base_dir: Path) -> None:
    model = get_qpeft_model(_base(base_dir), QPeftConfig(**CONFIG))
    assert isinstance(model, PeftModel) and _is_peft_model(model)
    status = model.get_model_status()
    assert status.num_adapter_layers == 4 and status.active_adapters == ["default"] and status.enabled is True
    assert model.get_base_model().__class__ is GPT2LMHeadModel
    assert model.base_model.model is model.get_base_model()  # peft's layout: base_model.model
    clone = copy.deepcopy(model)
    torch.testing.assert_close(_logits(clone), _logits(model))


def _owner(cls: type, name: str) -> type:
    return next(c for c in cls.__mro__ if name in c.__dict__)


def test_every_peft_and_transformers_adapter_method_is_qpeft_s_own(base_dir: Path) -> None:
    """No method of peft's PeftModel or transformers' adapter mixin runs peft/transformers code on a qpeft model."""
    cls = type(get_qpeft_model(_base(base_dir), QPeftConfig(**CONFIG)))
    names = {n for n in dir(PeftModel) if not n.startswith("_")} - set(dir(torch.nn.Module))
    names |= {n for n in dir(PeftAdapterMixin) if not n.startswith("_")}
    foreign = sorted(n for n in names if not _owner(cls, n).__module__.startswith("qpeft"))
    assert not foreign, foreign


def test_calls_qpeft_cannot_serve_say_so(base_dir: Path, adapter: tuple[Path, torch.Tensor]) -> None:
    directory, _ = adapter
    with pytest.raises(TypeError, match="cannot be injected into a bare model"):
        _base(base_dir).load_adapter(str(directory))  # transformers' adapter mixin
    with pytest.raises(TypeError, match="cannot be injected into a bare model"):
        peft.inject_adapter_in_model(QPeftConfig(**CONFIG), _base(base_dir))
    model = get_qpeft_model(_base(base_dir), QPeftConfig(**CONFIG))
    with pytest.raises(TypeError, match="cannot be wrapped by another peft tuner \\(LORA\\)"):
        peft.get_peft_model(model, LoraConfig(target_modules=["c_proj"]))
    model = get_qpeft_model(_base(base_dir), QPeftConfig(**CONFIG))
    for call, match in [(model.get_prompt, "prompt-learning"), (model.enable_peft_hotswap, "hotswapping"),
                        (lambda: model.load_adapter(directory, "x", low_cpu_mem_usage=True), "low_cpu_mem_usage")]:
        with pytest.raises(NotImplementedError, match=match):
            call()
    with pytest.raises(NotImplementedError, match="mixed adapter batches"):
        model(input_ids=IDS, adapter_names=["default", "default"])
    with pytest.raises(TypeError, match="safetensors"):
        model.save_pretrained(directory, safe_serialization=False)
    with pytest.raises(TypeError, match="save_embedding_layers"):
        model.save_pretrained(directory, save_embedding_layers=True)
