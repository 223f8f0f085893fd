"""One JSON record per run: ``results/raw/<experiment>--<method>--seed<k>[<tag>].json``.

Runs from a dirty tree, a branch other than ``main`` or a debug config go to ``results/temporary/``
(``record_to: auto``), which ``make tables`` ignores. Records are strict JSON (a non-finite float is written
as ``null``, never as ``NaN``/``Infinity``) and written atomically. A record is only ever replaced by a better one:

* a completed record is never replaced by a failed or diverged run: that run's record goes beside it, as
  ``<name>.failed.json`` / ``<name>.diverged.json``; a completed run removes these notes of its name;
* in ``raw/`` a completed record is replaced by another completed run only with ``record_replace=true``:
  without it the run is refused before it starts (:func:`check_record_slot`), and one that finds a completed
  record written meanwhile (a concurrent run under another job id) goes beside it as ``<name>.completed.json``.
  In ``temporary/`` the newest completed run replaces the record.

Schema (design.md): ``run_info``, ``train_info``, ``meta_info``.
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from qpeft.io import atomic_write_text

RECORD_TO = ("auto", "raw", "temporary", "none")
FAILURES = ("failed", "diverged")
NOTE_STATUSES = (*FAILURES, "completed")  # <name>.<status>.json: a record that could not replace <name>.json
SELECTION_RULE = "best dev epoch per seed (metric `optimized_metric`, evaluated every epoch or eval_every_steps)"


REPO = Path(__file__).resolve().parents[1]


def _git(*args: str, repo: Path = REPO) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=repo)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_info(repo: Path = REPO) -> dict[str, Any]:
    """SHA (None before the first commit), dirty flag and branch of the repository.

    Changes under ``results/`` do not make the tree dirty: records and tables are outputs of runs,
    so one run writing its record must not send the next run of the same commit to ``temporary/``.
    """
    sha = _git("rev-parse", "HEAD", repo=repo)
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ":/", ":(exclude,top)results", repo=repo)
    return {"sha": sha, "dirty": sha is None or bool(status),
            "branch": _git("rev-parse", "--abbrev-ref", "HEAD", repo=repo)}


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def meta_info() -> dict[str, Any]:
    """Library versions and hardware."""
    cuda = torch.cuda.is_available()
    return {
        **{name: _version(name) for name in ("torch", "transformers", "peft", "bitsandbytes", "accelerate",
                                             "hydra-core", "datasets")},
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "num_gpus": torch.cuda.device_count() if cuda else 0,
        "host": platform.node(),
    }


def record_path(cfg: Any, git: dict[str, Any]) -> Path | None:
    """Where this run's record goes, or ``None`` for ``record_to: none``."""
    mode = cfg.record_to
    if mode == "none":
        return None
    temporary = mode == "temporary" or (mode == "auto" and (git["dirty"] or git["branch"] != "main"))
    name = f"{cfg.experiment_name}--{cfg.method.name}--seed{cfg.seed}{cfg.record_tag or ''}.json"
    return Path(cfg.paths.results_dir) / ("temporary" if temporary else "raw") / name


def may_replace_completed(cfg: Any, path: Path) -> bool:
    """Whether a completed run may replace a completed record at ``path`` (``record_replace``, or ``temporary/``)."""
    return bool(cfg.record_replace) or path.parent.name == "temporary"


def is_note(path: Path) -> bool:
    """Whether ``path`` is a ``<name>.<status>.json`` written beside the record ``<name>.json``."""
    return any(path.name.endswith(f".{status}.json") for status in NOTE_STATUSES)


def _status(path: Path) -> str | None:
    try:
        return json.loads(path.read_text())["train_info"]["status"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_record_slot(path: Path, replace_completed: bool) -> None:
    """Before the run: the record's folder is writable, and a completed record there may be replaced."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path.parent).close()
    except OSError as err:
        raise PermissionError(f"the results folder {path.parent} is not writable ({err}); fix it or set "
                              "paths.results_dir (record_to=none writes no record)") from err
    if not replace_completed and _status(path) == "completed":
        raise FileExistsError(f"{path} already holds a completed run; record_replace=true replaces it, "
                              "another record_tag (or seed) keeps both")


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (strict JSON has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_record(path: Path, record: dict[str, Any], replace_completed: bool) -> Path:
    """Write ``record`` atomically at ``path``, or beside it when it may not replace the record there."""
    status = record["train_info"]["status"]
    if _status(path) == "completed" and not (status == "completed" and replace_completed):
        path = path.with_suffix(f".{status}.json")
    atomic_write_text(path, json.dumps(_finite(record), indent=2, allow_nan=False, default=str) + "\n")
    if status == "completed" and not is_note(path):
        for failure in FAILURES:  # superseded by this run
            path.with_suffix(f".{failure}.json").unlink(missing_ok=True)
    return path


def new_record(cfg_resolved: dict[str, Any], experiment: str, method: str, seed: int) -> dict[str, Any]:
    """A record skeleton, filled in as the run goes."""
    return {
        "run_info": {"experiment": experiment, "method": method, "seed": seed, "config": cfg_resolved,
                     "git": git_info(), "start_time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "wall_seconds": None, "error": None},
        "train_info": {"status": "running", "trainable_params": None, "total_params": None, "adapter_bytes": None,
                       "peak_memory_bytes": None, "ms_per_step": None, "steps": 0, "metrics": [],
                       "unitarity_error_max": None, "diverged_at_step": None,
                       "optimized_metric": None, "best": None, "best_step": None, "final": None,
                       "selection_rule": SELECTION_RULE},
        "meta_info": meta_info(),
    }


def peak_memory_bytes() -> int:
    """Peak CUDA memory if on GPU, else the process's peak resident set size."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


#: Written beside an adapter for people, not needed to load it: not counted in ``adapter_bytes``.
DOCUMENTATION_FILES = ("README.md",)


def dir_bytes(directory: Path) -> int:
    """Bytes of the files under ``directory`` that a loader reads (the model card is left out)."""
    if not directory.exists():
        return 0
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file() and p.name not in DOCUMENTATION_FILES)
