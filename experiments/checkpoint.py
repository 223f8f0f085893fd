"""Adapter-only checkpoints ``<output_dir>/checkpoints/step_<N>/``: verified on load, the newest few kept.

A checkpoint folder holds ``state.pt``: the trainable tensors (never the frozen base), optimizer, scheduler,
method state, the RNG states of every process (python, numpy, torch, cuda) and the loop's progress (data
position, best so far, metric history); and ``meta.json``: the step, whether the run had finished, the
process count, the resolved config, and the size and SHA-256 of ``state.pt``.

Writing is atomic: ``checkpoints/.tmp-<N>/`` gets ``state.pt`` (flushed to disk), then ``meta.json``, then is
renamed to ``step_<N>``; so a ``step_<N>`` folder is always complete, and the ``trainer.keep_checkpoints``
newest are kept. :func:`find_checkpoint` checks the newest against its ``meta.json`` and falls back to the
previous one with a warning naming the damaged file; :func:`recover_leftovers` renames a complete leftover
``.tmp-<N>`` (a run died between writing and renaming it) and removes an incomplete one, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qpeft.io import atomic_write_text

log = logging.getLogger(__name__)
STATE_FILE, META_FILE = "state.pt", "meta.json"
STEP_PREFIX, TMP_PREFIX = "step_", ".tmp-"


class CheckpointError(RuntimeError):
    """A checkpoint is damaged or unusable; the message names the file."""


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
    loss_sum: float = 0.0  # training losses since the last log line, and how many (the logged mean resumes exactly)
    loss_count: int = 0


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


def _step(path: Path, prefix: str) -> int | None:
    tail = path.name[len(prefix):]
    return int(tail) if path.name.startswith(prefix) and tail.isdigit() else None


def checkpoints(output_dir: str | Path) -> list[Path]:
    """The ``step_<N>`` folders, newest first."""
    root = checkpoint_root(output_dir)
    found = [p for p in root.iterdir() if _step(p, STEP_PREFIX) is not None] if root.is_dir() else []
    return sorted(found, key=lambda p: _step(p, STEP_PREFIX), reverse=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(output_dir: str | Path, state: dict[str, Any], meta: dict[str, Any], keep: int) -> Path:
    """Write ``state`` and ``meta`` (``meta["step"]`` names the folder) atomically, then keep the newest ``keep``.

    Call on the main process only.
    """
    root = checkpoint_root(output_dir)
    tmp, final = root / f"{TMP_PREFIX}{meta['step']}", root / f"{STEP_PREFIX}{meta['step']}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with open(tmp / STATE_FILE, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())  # on disk before meta.json vouches for it
    meta = {**meta, "size": (tmp / STATE_FILE).stat().st_size, "sha256": _sha256(tmp / STATE_FILE)}
    atomic_write_text(tmp / META_FILE, json.dumps(meta, indent=2) + "\n")
    if final.exists():  # the same step again (a resume past a damaged copy); the older checkpoints stay meanwhile
        shutil.rmtree(final)
    tmp.rename(final)
    for old in checkpoints(output_dir)[keep:]:
        shutil.rmtree(old)
    return final


def read_meta(path: Path) -> dict[str, Any]:
    """``meta.json`` of the checkpoint folder ``path`` once ``state.pt`` matches it; else :class:`CheckpointError`."""
    meta_file, state_file = path / META_FILE, path / STATE_FILE
    try:
        meta = json.loads(meta_file.read_text())
        size = state_file.stat().st_size
        intact = size == meta.get("size") and _sha256(state_file) == meta.get("sha256")
    except (OSError, ValueError, AttributeError) as err:  # AttributeError: meta.json holds no object
        raise CheckpointError(f"{meta_file.parent}: {type(err).__name__}: {err}") from err
    if not intact:
        raise CheckpointError(f"{state_file} is damaged: {size} bytes whose SHA-256 does not match {meta_file} "
                              f"({meta.get('size')} bytes expected)")
    return meta


def recover_leftovers(output_dir: str | Path) -> None:
    """Rename each complete ``.tmp-<N>`` to ``step_<N>``, remove incomplete ones, warn about anything else.

    Call on the main process only, while holding the folder's lock (no other run is writing).
    """
    root = checkpoint_root(output_dir)
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        step = _step(path, TMP_PREFIX)
        if step is None:
            if _step(path, STEP_PREFIX) is None:
                log.warning("%s is not a checkpoint of this version (expected %s<N>/); ignored", path, STEP_PREFIX)
            continue
        final = root / f"{STEP_PREFIX}{step}"
        try:
            read_meta(path)
        except CheckpointError as err:
            log.warning("removing the incomplete checkpoint %s (a run died while writing it): %s", path, err)
            shutil.rmtree(path)
            continue
        if final.exists():
            log.warning("removing %s: a complete copy of %s", path, final)
            shutil.rmtree(path)
        else:
            path.rename(final)
            log.warning("recovered the checkpoint %s from %s (a run died before renaming it)", final, path)


def find_checkpoint(output_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that verifies, with its meta; each damaged one is skipped with a warning.

    ``None`` when there is none; :class:`CheckpointError` listing the files when there are some but all are damaged.
    """
    problems = []
    for path in checkpoints(output_dir):
        try:
            meta = read_meta(path)
        except CheckpointError as err:
            log.warning("skipping checkpoint %s: %s", path, err)
            problems.append(str(err))
            continue
        if problems:
            log.warning("falling back to the previous good checkpoint %s (step %d)", path, meta["step"])
        return path, meta
    if problems:
        raise CheckpointError(f"no usable checkpoint in {checkpoint_root(output_dir)}: " + "; ".join(problems))
    return None


def load_checkpoint(path: Path, *, method: Any, optimizer: Any, scheduler: Any) -> tuple[Progress, list[dict]]:
    """Restore model, optimizer and scheduler from ``path``; return the progress and each process's RNG state
    (the loop restores the RNG once the data loader is positioned)."""
    state_file = path / STATE_FILE
    try:
        state = torch.load(state_file, map_location="cpu", weights_only=False)
    except Exception as err:  # unpickling raises many types
        raise CheckpointError(f"{state_file} could not be loaded ({type(err).__name__}: {err})") from err
    method.load_adapter_state_dict(state["adapter"])
    method.load_extra_state(state["method_extra"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return Progress(**state["progress"]), state["rng"]
