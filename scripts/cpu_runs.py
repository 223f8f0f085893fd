"""What the CPU run scripts (``demo.py``, ``study.py``) share: offline defaults and composing a run config.

``offline_defaults`` must run before torch is imported: PASSIVE stops OpenMP threads spin-waiting, which
made steps 5-7x slower on a busy 2-core machine, and the Hub variables are read when its client is imported.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def offline_defaults() -> None:
    """Offline Hub and datasets, W&B disabled, passive OpenMP waits (each only if not set already)."""
    for key, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled",
                       "TOKENIZERS_PARALLELISM": "false", "OMP_WAIT_POLICY": "PASSIVE", "QPEFT_ROOT": str(ROOT)}.items():
        os.environ.setdefault(key, value)


def compose_run(overrides: list[str], mapping_options: dict[str, Any] | None = None) -> Any:
    """The config ``python run.py <overrides>`` would run; ``mapping_options`` replaces (does not merge into)
    the method's dict."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    if mapping_options is not None:
        with open_dict(cfg):
            cfg.method.mapping_options = mapping_options
    return cfg


def names_arg(parser: Any, text: str, valid: Any, what: str) -> list[str]:
    """The comma-separated ``text`` as a list; ``parser.error`` naming the unknown ones and the valid ``what``."""
    names = [n for n in text.split(",") if n]
    unknown = sorted(set(names) - set(valid))
    if unknown:
        parser.error(f"unknown {what} {unknown}; valid: {list(valid)}")
    return names
