"""The benchmark suite: ``run(cfg)`` trains, evaluates and records one run of a Hydra config.

``run.py`` (Hydra) calls :func:`run`; tests call it with a config from Hydra's compose API.
Import ``experiments.schemas`` (and call ``register_configs()``) before composing.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any

from omegaconf import DictConfig, OmegaConf

# bitsandbytes logs "Failed to load CPU gemm_4bit_forward ... kernels" at import on every CPU run; its
# own fallback works (and installing `kernels` would reach for the Hub), so keep only its errors.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

log = logging.getLogger(__name__)


def apply_debug(cfg: DictConfig) -> DictConfig:
    """Merge ``cfg.debug`` (``debug=fdr``) over the config: it must win over ``+experiment``, which Hydra
    appends after the debug group."""
    return OmegaConf.merge(cfg, cfg.debug) if cfg.get("debug") else cfg


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and evaluate one (experiment, method, seed); write its JSON record, success or failure.

    Returns the record's ``train_info`` (``best`` is the best value of ``cfg.optimized_metric``).
    """
    from experiments.loop import Trainer
    from experiments.records import new_record, peak_memory_bytes, record_path, write_record

    cfg = apply_debug(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    record = new_record(resolved, cfg.experiment_name, cfg.method.name, cfg.seed)
    path = record_path(cfg, record["run_info"]["git"])
    info = record["train_info"]
    info["optimized_metric"] = cfg.optimized_metric
    start = time.perf_counter()
    trainer = Trainer(cfg)
    main = True
    try:
        trainer.setup()
        main = trainer.accelerator.is_main_process
        trainer.train()
        info["adapter_bytes"] = trainer.save_adapter() if cfg.trainer.save_adapter else None
        info["status"] = "completed"
    except BaseException as err:
        info["status"] = "failed"
        record["run_info"]["error"] = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=8)}"
        raise
    finally:
        progress = trainer.progress
        info.update({k: trainer.info.get(k) for k in ("trainable_params", "total_params")})
        info.update(
            steps=progress.global_step, metrics=progress.history, best=progress.best, best_step=progress.best_step,
            final=progress.history[-1].get(cfg.optimized_metric) if progress.history else None,
            ms_per_step=1000 * progress.train_seconds / progress.global_step if progress.global_step else None,
            peak_memory_bytes=peak_memory_bytes(), num_processes=trainer.info.get("num_processes"),
        )
        seen = [h["unitarity_error_max"] for h in progress.history if h.get("unitarity_error_max") is not None]
        if seen:  # Quantum-PEFT: the worst ‖UᵀU − I‖_F of the whole run (resume-safe: kept in the history)
            info["unitarity_error_max"] = max(seen, key=lambda v: float("inf") if v != v else v)
        record["run_info"]["wall_seconds"] = time.perf_counter() - start
        trainer.cleanup()
        if path is not None and main:
            written = write_record(path, record)
            log.info("record: %s", written)
    return info
