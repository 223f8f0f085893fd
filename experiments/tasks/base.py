"""The hooks a task plugs into the one training loop (``experiments.loop``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset


Loaded = TypeVar("Loaded")
SOURCES = ("auto", "local", "hub")


def load_from_source(source: str, local_present: bool, load_local: Callable[[], Loaded],
                     load_hub: Callable[[], Loaded], missing: str) -> Loaded:
    """``task.source``: ``local`` (``load_local`` raises where files are absent), ``hub`` (``load_hub`` raises
    ``RuntimeError`` offline), or ``auto``: local files when present, else the Hub, and if that fails too, a
    ``FileNotFoundError`` that says where the files go (``missing``) and why the Hub failed."""
    if source == "local" or (source == "auto" and local_present):
        return load_local()
    if source == "hub":
        return load_hub()
    try:
        return load_hub()
    except RuntimeError as err:
        raise FileNotFoundError(f"{missing} Hub fallback: {err}") from err


class Task(ABC):
    """A benchmark task: data, batching, loss and evaluation.

    Metric names are ``split/metric`` (``val/acc``, ``val/mcc``); ``optimized_metric`` names the one
    used for best-checkpoint selection, and ``greater_is_better`` its direction.
    """

    optimized_metric: str = "val/loss"
    greater_is_better: bool = True
    head: str = "sequence_classification"  # the model head experiments.models builds (see models.HEADS)
    peft_task_type: str | None = "SEQ_CLS"  # peft.TaskType of the baselines' PeftModel (None: the generic one)

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    @property
    def model_head(self) -> dict[str, Any]:
        """Keyword arguments for the model's head, e.g. ``{"num_labels": 2}``."""
        return {}

    def prepare_model(self, model: torch.nn.Module) -> None:
        """Adjust the freshly built model before any method wraps it (e.g. install the task's loss)."""

    @abstractmethod
    def build_datasets(self, tokenizer: Any) -> dict[str, Dataset]:
        """Tokenised datasets keyed by split (``"train"``, ``"val"``)."""

    @abstractmethod
    def collate(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Batch a list of examples (dynamic padding)."""

    def compute_loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Training loss of one batch; by default the model's own ``loss`` output."""
        return model(**batch).loss

    @abstractmethod
    def evaluate(self, model: torch.nn.Module, loader: DataLoader, accelerator: Any, split: str = "val") -> dict[str, float]:
        """Metrics over ``loader`` (gathered across processes), keys ``f"{split}/<metric>"``."""

    def final_evaluate(self, model: torch.nn.Module, accelerator: Any, output_dir: Path) -> dict[str, float]:
        """Metrics of the final model only (e.g. E2E's beam decoding and scoring), merged into the last
        evaluation; ``output_dir`` receives any files they come from."""
        return {}
