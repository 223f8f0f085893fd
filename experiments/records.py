"""One JSON record per run: ``results/raw/<experiment>--<method>--seed<k>[<tag>].json``.

Runs from a dirty tree, a branch other than ``main`` or a debug config go to ``results/temporary/``
(``record_to: auto``), which ``make tables`` ignores. Records are written atomically. A failed run never
replaces a *completed* record: it is written beside it as ``<name>.failed.json`` (and a completed run
removes a stale ``.failed.json`` of the same name). Schema (design.md): ``run_info``, ``train_info``,
``meta_info``.
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from qpeft.io import atomic_write_text

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
    if mode not in ("auto", "raw", "temporary"):
        raise ValueError(f"record_to={mode!r} is invalid; valid: auto, raw, temporary, none")
    temporary = mode == "temporary" or (mode == "auto" and (git["dirty"] or git["branch"] != "main"))
    name = f"{cfg.experiment_name}--{cfg.method.name}--seed{cfg.seed}{cfg.record_tag or ''}.json"
    return Path(cfg.paths.results_dir) / ("temporary" if temporary else "raw") / name


def _completed(path: Path) -> bool:
    try:
        return json.loads(path.read_text())["train_info"]["status"] == "completed"
    except (OSError, ValueError, KeyError, TypeError):
        return False


def write_record(path: Path, record: dict[str, Any]) -> Path:
    """Write ``record`` atomically; a failed run never overwrites a completed record."""
    failed_path = path.with_suffix(".failed.json")
    if record["train_info"]["status"] != "completed" and _completed(path):
        path = failed_path
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=False, default=str) + "\n")
    if record["train_info"]["status"] == "completed" and failed_path.exists():
        failed_path.unlink()
    return path


def new_record(cfg_resolved: dict[str, Any], experiment: str, method: str, seed: int) -> dict[str, Any]:
    """A record skeleton, filled in as the run goes."""
    return {
        "run_info": {"experiment": experiment, "method": method, "seed": seed, "config": cfg_resolved,
                     "git": git_info(), "start_time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "wall_seconds": None, "error": None},
        "train_info": {"status": "running", "trainable_params": None, "total_params": None, "adapter_bytes": None,
                       "peak_memory_bytes": None, "ms_per_step": None, "steps": 0, "metrics": [],
                       "unitarity_error_max": None,
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


def dir_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) if directory.exists() else 0
