"""Which checkpoint a run starts from, and whether it fits the run (``trainer.resume``).

* ``trainer.resume=true``: the newest checkpoint that verifies (``experiments.checkpoint`` falls back past
  damaged ones). Its config must equal this run's in everything but :data:`HARMLESS` (logging, paths,
  checkpoint bookkeeping, diagnostics); any other difference (optimizer, schedule, method, model, data,
  evaluation, length of the run) is refused before the model is built, naming the fields. So is another
  process count: every process restores its own RNG state.
* ``trainer.resume=false``: a fresh start. The checkpoints of a *finished* run in the folder are removed; those
  of an unfinished run are kept and the run is refused (resume it, or delete the folder to start over).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from experiments.checkpoint import CheckpointError, checkpoint_root, checkpoints, find_checkpoint, recover_leftovers
from experiments.validation import flatten

log = logging.getLogger(__name__)

# Config keys (and sub-trees) that never change what a run computes.
HARMLESS = (
    "logger", "tags", "paths", "run_id", "record_to", "record_tag", "record_replace", "debug",
    "protocols",  # read through the resolved trainer values, which are compared
    "trainer.resume", "trainer.stop_after_steps", "trainer.save_adapter", "trainer.log_every", "trainer.num_workers",
    "trainer.checkpoint", "trainer.keep_checkpoints", "method.unitarity_tolerance", "method.unitarity_check_every",
)
_ABSENT = "<absent>"


class ResumeRefused(ValueError):
    """The checkpoint does not fit this run, or a fresh start would discard an unfinished run."""


def _harmless(key: str) -> bool:
    return any(key == h or key.startswith(h + ".") for h in HARMLESS)


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key (checkpoint X, now Y)`` for every leaf that differs and alters the run (lists compare whole)."""
    old, new = flatten(saved), flatten(json.loads(json.dumps(current)))  # the JSON round trip meta.json made
    return [f"{key} (checkpoint {old.get(key, _ABSENT)!r}, now {new.get(key, _ABSENT)!r})"
            for key in sorted(set(old) | set(new))
            if not _harmless(key) and old.get(key, _ABSENT) != new.get(key, _ABSENT)]


def choose_checkpoint(output_dir: Path, config: dict[str, Any], resume: bool, num_processes: int, is_main: bool,
                      barrier: Callable[[], None]) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint to resume from (``None``: start at step 0), after the checks of the module docstring.

    ``barrier`` synchronises the processes around the main process's clean-up of the folder.
    """
    if is_main:
        recover_leftovers(output_dir)
    barrier()
    existing = checkpoints(output_dir)
    try:
        found = find_checkpoint(output_dir)
    except CheckpointError:
        if resume:
            raise
        found = None  # a fresh start over damaged checkpoints only: nothing worth keeping
    root = checkpoint_root(output_dir)
    if not resume:
        if found is not None and not found[1]["finished"]:
            raise ResumeRefused(
                f"{root} holds an unfinished run (step {found[1]['step']}); continue it with trainer.resume=true, "
                f"or delete {root} to start over")
        if existing:
            barrier()  # every process has read them
            if is_main:
                log.warning("starting fresh (trainer.resume=false): removing the checkpoints of an earlier run in %s "
                            "(%s)", root, "finished" if found else "all damaged")
                shutil.rmtree(root)
            barrier()
        return None
    if found is None:
        log.warning("trainer.resume=true but %s has no checkpoint: starting at step 0", root)
        return None
    path, meta = found
    changes = config_changes(meta["config"], config)
    if changes:
        raise ResumeRefused(
            f"trainer.resume=true: {path} was written with other settings that alter the run: {'; '.join(changes)}. "
            "Resume with the checkpoint's values, or start a new run in another folder (e.g. record_tag=...).")
    if meta["num_processes"] != num_processes:
        raise ResumeRefused(f"trainer.resume=true: {path} was written by {meta['num_processes']} process(es), this "
                            f"run has {num_processes}; resume with the same number (each restores its RNG state)")
    return found
