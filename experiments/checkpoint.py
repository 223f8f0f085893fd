"""Adapter-only checkpoints at ``<output_dir>/checkpoints/last/``, written atomically.

A checkpoint holds the trainable tensors (never the frozen base), optimizer, scheduler, RNG states
(python, numpy, torch, cuda), the data position (epoch, batches consumed in it, global step), the
loop's progress (best so far, metric history) and the resolved config. Atomicity: the new state is
written to ``checkpoints/.tmp-<step>/``, then ``last`` is moved to ``.old`` and the new folder renamed
to ``last``; a crash between the renames leaves ``.old`` which :func:`find_checkpoint` falls back to.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "state.pt"


@dataclass
class Progress:
    """Where the loop is and what it has seen so far."""

    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of ``epoch`` already consumed
    global_step: int = 0  # optimizer steps
    best: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def save_checkpoint(output_dir: str | Path, *, method: Any, optimizer: Any, scheduler: Any,
                    progress: Progress, config: dict[str, Any]) -> Path:
    """Write ``checkpoints/last`` atomically; call on the main process only."""
    root = checkpoint_root(output_dir)
    tmp, last, old = root / f".tmp-{progress.global_step}", root / "last", root / ".old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({
        "adapter": method.adapter_state_dict(),
        "method_extra": method.extra_state(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        "progress": asdict(progress),
        "config": config,
    }, tmp / STATE_FILE)
    shutil.rmtree(old, ignore_errors=True)
    if last.exists():
        last.rename(old)
    tmp.rename(last)
    shutil.rmtree(old, ignore_errors=True)
    return last


def find_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder, or ``None``."""
    root = checkpoint_root(output_dir)
    for name in ("last", ".old"):
        if (root / name / STATE_FILE).is_file():
            return root / name
    return None


def load_checkpoint(path: Path, *, method: Any, optimizer: Any, scheduler: Any) -> Progress:
    """Restore everything :func:`save_checkpoint` wrote (RNG included) and return the progress."""
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
    method.load_adapter_state_dict(state["adapter"])
    method.load_extra_state(state["method_extra"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return Progress(**state["progress"])
