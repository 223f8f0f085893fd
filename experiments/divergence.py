"""Divergence: a non-finite loss, gradient norm, parameter or metric stops the run before it is logged or saved.

The per-step check costs no host sync: each micro-batch folds ``isfinite(loss)`` (and each optimizer step
``isfinite(grad norm)`` when ``trainer.max_grad_norm`` computes one) into one device scalar, the first bad
step. The loop reads it where it syncs anyway: every ``trainer.log_every`` steps and before every evaluation.
Before an evaluation (and so before any checkpoint) the trainable parameters are checked too, and after it
the metrics; so a non-finite gradient that no clipping measured is caught at the latest there, and the last
checkpoint on disk is always the last good one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from accelerate import Accelerator

NEVER = torch.iinfo(torch.int64).max


class Diverged(RuntimeError):
    """The run produced a non-finite value at optimizer step ``step``."""

    def __init__(self, step: int, what: str) -> None:
        super().__init__(f"diverged at step {step}: {what}")
        self.step = step


class FiniteWatch:
    """Remembers, on the device, the first optimizer step that saw a non-finite loss or gradient norm."""

    def __init__(self, device: torch.device) -> None:
        self.first_bad = torch.full((), NEVER, dtype=torch.int64, device=device)

    def observe(self, value: torch.Tensor, step: int) -> None:
        """Fold ``value`` (a scalar computed during optimizer step ``step``) in; no host sync."""
        self.first_bad = torch.where(torch.isfinite(value.detach()), self.first_bad, self.first_bad.clamp(max=step))

    def check(self, accelerator: Accelerator) -> None:
        """Raise :class:`Diverged` if any process saw a non-finite value (one host sync)."""
        step = int(accelerator.gather(self.first_bad[None]).min())
        if step != NEVER:
            raise Diverged(step, "the training loss or gradient norm is not finite")


def check_parameters(params: Iterable[torch.Tensor], step: int) -> None:
    """Raise :class:`Diverged` if a parameter holds NaN or inf (one host sync)."""
    finite = [torch.isfinite(p.detach()).all() for p in params]
    if finite and not bool(torch.stack([f.to(finite[0].device) for f in finite]).all()):
        raise Diverged(step, "a trainable parameter is not finite")


def check_metrics(metrics: dict[str, float], step: int) -> None:
    """Raise :class:`Diverged` naming the metrics that are NaN or inf."""
    bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
    if bad:
        raise Diverged(step, f"evaluation gave non-finite {', '.join(bad)}")
