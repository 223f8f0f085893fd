"""The benchmark suite: ``run(cfg)`` trains, evaluates and records one run of a Hydra config.

``run.py`` (Hydra) calls :func:`run`; tests call it with a config from Hydra's compose API.
Import ``experiments.schemas`` (and call ``register_configs()``) before composing.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

# bitsandbytes logs "Failed to load CPU gemm_4bit_forward ... kernels" at import on every CPU run; its
# own fallback works (and installing `kernels` would reach for the Hub), so keep only its errors.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

log = logging.getLogger(__name__)


def apply_debug(cfg: DictConfig, overrides: Sequence[str] = ()) -> DictConfig:
    """Merge ``cfg.debug`` (``debug=fdr``) over the config: it must win over ``+experiment``, which Hydra
    appends after the debug group, but not over a value given on the command line (``overrides``, e.g.
    ``trainer.max_steps=5``), which is kept."""
    if not cfg.get("debug"):
        return cfg
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from experiments.validation import flatten

    given = {o.key_or_group for o in OverridesParser.create().parse_overrides(list(overrides)) if not o.is_delete()}
    merged = OmegaConf.merge(cfg, cfg.debug)
    for key in flatten(OmegaConf.to_container(cfg.debug)):
        if key in given:
            OmegaConf.update(merged, key, OmegaConf.select(cfg, key), merge=False)
            log.info("debug: %s=%s from the command line is kept", key, OmegaConf.select(cfg, key))
    return merged


def run(cfg: DictConfig, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Train and evaluate one (experiment, method, seed); write its JSON record.

    ``overrides``: the command-line overrides the config was composed with (``run.py`` passes them), which
    the ``debug`` group does not override. A run is refused before anything is built or written when its
    config is invalid, its record may not be replaced, its output folder is in use or its checkpoint does not
    fit; otherwise its record says how it ended: ``completed``, ``diverged`` or ``failed`` (the error is
    re-raised). Returns the record's ``train_info`` (``best`` is the best value of ``cfg.optimized_metric``).
    """
    from experiments.divergence import Diverged
    from experiments.loop import Trainer
    from experiments.records import check_record_slot, may_replace_completed, new_record, record_path, write_record
    from experiments.validation import validate

    start = time.perf_counter()
    cfg = apply_debug(cfg, overrides)
    validate(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    record = new_record(resolved, cfg.experiment_name, cfg.method.name, cfg.seed)
    path = record_path(cfg, record["run_info"]["git"])
    replace = path is not None and may_replace_completed(cfg, path)
    if path is not None:
        check_record_slot(path, replace)
    trainer = Trainer(cfg)
    trainer.start()  # lock, checkpoint choice and resume checks
    info = record["train_info"]
    info["optimized_metric"] = cfg.optimized_metric
    try:
        trainer.setup()
        trainer.train()
        if trainer.progress.global_step == 0:
            raise RuntimeError("the run trained 0 optimizer steps")
        info["adapter_bytes"] = trainer.save_adapter() if cfg.trainer.save_adapter else None
        info["status"] = "completed"
    except BaseException as err:
        info["status"] = "diverged" if isinstance(err, Diverged) else "failed"
        info["diverged_at_step"] = err.step if isinstance(err, Diverged) else None
        record["run_info"]["error"] = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=8)}"
        raise
    finally:
        try:
            _summarise(record, trainer, cfg.optimized_metric, start)
            if path is not None and trainer.accelerator.is_main_process:
                log.info("record: %s", write_record(path, record, replace))
        except OSError as err:  # never hide the run's own error behind the record's
            log.error("could not write the record %s: %s", path, err)
            if info["status"] == "completed":
                raise
        finally:
            trainer.cleanup()
    return info


def _summarise(record: dict[str, Any], trainer: Any, metric: str, start: float) -> None:
    """Fill the record's counts, metrics and timings from the trainer's state (at any point of the run)."""
    from experiments.records import peak_memory_bytes

    info, progress = record["train_info"], trainer.progress
    info.update({k: trainer.info.get(k) for k in ("trainable_params", "total_params")})
    info.update(
        steps=progress.global_step, metrics=progress.history, best=progress.best, best_step=progress.best_step,
        final=progress.history[-1].get(metric) if progress.history else None,
        ms_per_step=1000 * progress.train_seconds / progress.global_step if progress.global_step else None,
        peak_memory_bytes=peak_memory_bytes(), num_processes=trainer.info.get("num_processes"),
    )
    seen = [h["unitarity_error_max"] for h in progress.history if h.get("unitarity_error_max") is not None]
    if seen:  # Quantum-PEFT: the worst ‖UᵀU − I‖_F of the whole run (resume-safe: kept in the history)
        info["unitarity_error_max"] = max(seen, key=lambda v: float("inf") if v != v else v)
    record["run_info"]["wall_seconds"] = time.perf_counter() - start
