"""Shared helpers for the GLUE tests: task configs on the shipped data and a tiny model config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig, OmegaConf

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = REPO / "data" / "glue"


def task_cfg(subtask: str, **overrides: Any) -> DictConfig:
    """A task config with exactly the agreed fields."""
    base = dict(name=f"glue_{subtask}", family="glue", subtask=subtask, source="local", data_dir=str(DATA_DIR),
                max_length=64, max_train_samples=None, max_eval_samples=None, optimized_metric=None)
    return OmegaConf.create({**base, **overrides})


@pytest.fixture
def tiny_model_cfg() -> DictConfig:
    """Mirrors conf/model/tiny_deberta.yaml (DeBERTa-v3-style relative attention, p2c + c2p)."""
    return OmegaConf.load(REPO / "conf" / "model" / "tiny_deberta.yaml")
