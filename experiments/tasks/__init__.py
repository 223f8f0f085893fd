"""Task registry: ``build_task(cfg.task)`` picks the task class by ``family``."""

from __future__ import annotations

from omegaconf import DictConfig

from experiments.tasks.base import Task

FAMILIES = ("glue", "e2e", "cifar")


def build_task(task_cfg: DictConfig) -> Task:
    """Build the task named by ``task_cfg.family`` (one of ``FAMILIES``)."""
    family = task_cfg.get("family")
    if family == "glue":
        from experiments.tasks.glue import GlueTask

        return GlueTask(task_cfg)
    if family == "e2e":
        from experiments.tasks.e2e import E2ETask

        return E2ETask(task_cfg)
    if family == "cifar":
        from experiments.tasks.cifar import CifarTask

        return CifarTask(task_cfg)
    raise ValueError(f"unknown task family {family!r}; valid families: {list(FAMILIES)}")
