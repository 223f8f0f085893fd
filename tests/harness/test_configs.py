"""Every config composes; every experiment x main method runs 1 train + 1 eval step on the tiny model."""

from __future__ import annotations

import json

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from experiments import apply_debug, run
from tests.harness.conftest import CONF, EXPERIMENTS, fast_overrides

METHODS = ["quantum_peft", "lora", "adalora", "bitfit", "full_ft"]
GLUE_EXPERIMENTS = [e for e in EXPERIMENTS if not e.startswith(("e2e_", "cifar10_"))]  # E2E: tests/e2e/test_task.py; CIFAR: tests/cifar/test_train.py


def test_experiments_exist() -> None:
    assert {"glue_sst2", "glue_cola", "glue_rte", "glue_mrpc", "glue_stsb"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("path", sorted(CONF.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONF)))
def test_yaml_opens_with_comment_header(path) -> None:
    assert path.read_text().startswith("#"), f"{path} must open with a comment header"


@pytest.mark.parametrize("experiment", GLUE_EXPERIMENTS)
@pytest.mark.parametrize("method", METHODS)
def test_experiment_method_runs_one_step(experiment, method, make_cfg, glue_dir, tmp_path) -> None:
    cfg = make_cfg([f"+experiment={experiment}", f"method={method}", *fast_overrides(tmp_path, glue_dir)])
    debugged = apply_debug(cfg)
    assert debugged.trainer.max_steps == 1 and debugged.trainer.max_eval_batches == 1
    info = run(cfg)
    assert info["status"] == "completed" and info["steps"] == 1
    assert 0 < info["trainable_params"] < info["total_params"] or method == "full_ft"
    record = json.loads(next((tmp_path / "results" / "temporary").glob("*.json")).read_text())
    assert record["run_info"]["method"] == method and record["run_info"]["experiment"] == experiment
    assert record["train_info"]["best"] is not None
    ckpt = tmp_path / "logs" / experiment / method / "seed0" / "local" / "checkpoints" / "step_1"
    assert (ckpt / "state.pt").is_file() == (ckpt / "meta.json").is_file() == debugged.trainer.checkpoint


@pytest.mark.parametrize("method", ["quantum_peft", "lora", "adalora"])
def test_protocol_values(method, make_cfg) -> None:
    """Quantum-PEFT gets method.md §12.1, baselines AdaLoRA's SST-2 values (reference.md §4)."""
    cfg = make_cfg(["+experiment=glue_sst2", f"method={method}"])
    expected = (6e-3, 256, 0.1, 0) if method == "quantum_peft" else (8e-4, 32, 0.0, 1000)
    tc = cfg.trainer
    assert (tc.lr, tc.batch_size, tc.warmup_ratio, tc.warmup_steps) == expected
    assert tc.epochs == 24 and cfg.task.max_length == 128 and tc.weight_decay == 0.01
    if method == "adalora":
        assert (cfg.method.init_r, cfg.method.target_r, cfg.method.tinit, cfg.method.lora_alpha) == (2, 1, 6000, 16)
    assert OmegaConf.select(cfg, "trainer.lr") == expected[0]


def test_variants_compose(make_cfg) -> None:
    for name in ["quantum_peft_pauli", "quantum_peft_taylor", "quantum_peft_qsd", "loha", "lokr", "ia3", "vera",
                 "oft", "boft", "head_only"]:
        cfg = make_cfg(["+experiment=glue_rte", f"method={name}"])
        assert cfg.method.name == name
        OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("override, key", [("method.rnak=4", "rnak"), ("trainer.lrr=1e-3", "lrr"),
                                           ("method=lora", None)])
def test_typo_fails_naming_the_key(override, key, make_cfg) -> None:
    if key is None:  # a peft field misspelt inside a method
        with pytest.raises(ConfigCompositionException, match="lora_alfa"):
            make_cfg(["+experiment=glue_sst2", override, "method.lora_alfa=8"])
        return
    with pytest.raises(ConfigCompositionException, match=key):
        make_cfg(["+experiment=glue_sst2", override])


def test_unknown_method_lists_choices(make_cfg) -> None:
    with pytest.raises(ConfigCompositionException, match=r"(?s)Could not find 'method/foo'.*quantum_peft"):
        make_cfg(["+experiment=glue_sst2", "method=foo"])


def test_target_modules_match_six_per_layer(make_cfg, glue_dir) -> None:
    """The model's regex hits Q, K, V, attention output, FFN in and FFN out once per layer, no head."""
    import re

    from experiments.models import build_model
    from experiments.tasks import build_task

    cfg = make_cfg(["+experiment=glue_sst2", "model=tiny_deberta", f"task.data_dir={glue_dir}"])
    model, _ = build_model(cfg.model, build_task(cfg.task))
    hits = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
            and re.fullmatch(cfg.model.target_modules, n)]
    layers = cfg.model.tiny_config.num_hidden_layers
    assert len(hits) == 6 * layers, hits
    assert not any("pooler" in n or "classifier" in n for n in hits)
