"""Harness fixtures: synthetic GLUE TSVs (all five Table 2 tasks) and Hydra composition helpers."""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from experiments.schemas import register_configs

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
WORDS = "good bad movie plot actor great awful fun dull long short story film scene music".split()


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))


def write_glue(root: Path, n_train: int = 48, n_dev: int = 24) -> Path:
    """Tiny TSVs in the official GLUE layouts (headers, CoLA header-less, MRPC BOM, STS-B 10 columns)."""
    rng = random.Random(0)
    layouts = {
        "SST-2": ("sentence\tlabel", lambda: f"{_sentence(rng)}\t{rng.randint(0, 1)}"),
        "CoLA": (None, lambda: f"src\t{rng.randint(0, 1)}\t*\t{_sentence(rng)}"),
        "RTE": ("sentence1\tsentence2\tlabel\tidx",
                lambda: f"{_sentence(rng)}\t{_sentence(rng)}\t{rng.choice(['entailment', 'not_entailment'])}\t0"),
        "MRPC": ("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String",
                 lambda: f"{rng.randint(0, 1)}\t1\t2\t{_sentence(rng)}\t{_sentence(rng)}"),
        "STS-B": ("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
                  lambda: f"0\tmain\tf\t2012\t1\tnone\tnone\t{_sentence(rng)}\t{_sentence(rng)}\t{rng.uniform(0, 5):.3f}"),
    }
    for name, (header, row) in layouts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for split, n in (("train", n_train), ("dev", n_dev)):
            lines = ([header] if header else []) + [row() for _ in range(n)]
            (root / name / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def glue_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_glue(tmp_path_factory.mktemp("data") / "glue")


def fast_overrides(root: Path, glue: Path) -> list[str]:
    """Tiny model, 1 step, no tracker, everything under ``root``."""
    return [
        "model=tiny_deberta", "debug=fdr", "logger=none", f"paths.root_dir={root}", f"task.data_dir={glue}",
        "trainer.batch_size=8", "trainer.eval_batch_size=16", "trainer.save_adapter=false",
    ]


@pytest.fixture(scope="session")
def make_cfg() -> Callable[..., DictConfig]:
    """``make_cfg(overrides, hydra=False)`` composes ``conf/config.yaml`` like ``run.py`` does."""
    register_configs()

    def _make(overrides: list[str], hydra: bool = False) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose("config", overrides=overrides, return_hydra_config=hydra)

    return _make


# run.py in one process, and under 2-process DDP on CPU (accelerate launch --multi_gpu = gloo)
RUN_PY_LAUNCHERS = {
    "one": [sys.executable, "run.py"],
    "two": [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "run.py"],
}


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    env.pop("SLURM_JOB_ID", None)
    return env
