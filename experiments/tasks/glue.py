"""GLUE sequence classification/regression: TSV or Hub loading, tokenisation, dynamic padding, metrics.

Local layouts (``data_dir/<DIR>/{train,dev}.tsv``, read with ``csv.QUOTE_NONE``; columns found by header):

======  ======  ==========================================  ==================================
subtask  DIR     text columns                               label
======  ======  ==========================================  ==================================
sst2    SST-2   sentence                                    label (0/1)
cola    CoLA    4th column (raw GLUE has no header)         2nd column (0/1)
mrpc    MRPC    "#1 String", "#2 String" (UTF-8 BOM header)  Quality (0/1)
stsb    STS-B   sentence1, sentence2 (10-column file)       score (float 0-5)
rte     RTE     sentence1, sentence2                        label: 0/1 (HF export) or strings (raw)
qqp     QQP     question1, question2                        is_duplicate (0/1)
mnli    MNLI    sentence1, sentence2 (dev_matched.tsv)      gold_label (strings)
qnli    QNLI    question, sentence                          label (strings)
======  ======  ==========================================  ==================================

String labels map to the Hub's ids (entailment=0, not_entailment=1; MNLI neutral=1, contradiction=2).
``optimized_metric`` defaults: CoLA ``val/mcc``, STS-B ``val/pearson``, all others ``val/acc``
(MRPC/QQP also report ``val/f1``, STS-B ``val/spearman``); a config value overrides it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from experiments.metrics.glue import SUBTASK_METRICS, glue_metrics
from experiments.tasks.base import SOURCES, Task, load_from_source
from experiments.tasks.sampling import LengthGroupedBatchSampler

NLI2 = {"entailment": 0, "not_entailment": 1}
NLI3 = {"entailment": 0, "neutral": 1, "contradiction": 2}


@dataclass(frozen=True)
class SubtaskSpec:
    """Where a GLUE subtask lives locally and on the Hub, and how to read it."""

    dirname: str
    text_cols: tuple[str, ...]
    label_col: str
    hub_cols: tuple[str, ...]
    num_labels: int = 2
    string_labels: dict[str, int] | None = None
    columns: tuple[str, ...] | None = None  # names for a header-less file
    dev_file: str = "dev.tsv"
    hub_dev: str = "validation"


SUBTASKS: dict[str, SubtaskSpec] = {
    "sst2": SubtaskSpec("SST-2", ("sentence",), "label", ("sentence",)),
    "cola": SubtaskSpec("CoLA", ("sentence",), "label", ("sentence",),
                        columns=("source", "label", "original_label", "sentence")),
    "mrpc": SubtaskSpec("MRPC", ("#1 String", "#2 String"), "Quality", ("sentence1", "sentence2")),
    "stsb": SubtaskSpec("STS-B", ("sentence1", "sentence2"), "score", ("sentence1", "sentence2"), num_labels=1),
    "rte": SubtaskSpec("RTE", ("sentence1", "sentence2"), "label", ("sentence1", "sentence2"), string_labels=NLI2),
    "qqp": SubtaskSpec("QQP", ("question1", "question2"), "is_duplicate", ("question1", "question2")),
    "mnli": SubtaskSpec("MNLI", ("sentence1", "sentence2"), "gold_label", ("premise", "hypothesis"), num_labels=3,
                        string_labels=NLI3, dev_file="dev_matched.tsv", hub_dev="validation_matched"),
    "qnli": SubtaskSpec("QNLI", ("question", "sentence"), "label", ("question", "sentence"), string_labels=NLI2),
}

Example = tuple[tuple[str, ...], float]  # (texts, label)


def _parse_label(raw: str, spec: SubtaskSpec, where: str) -> float:
    if spec.num_labels == 1:
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{where}: score {raw!r} is not a number") from None
    if spec.string_labels and raw in spec.string_labels:
        return spec.string_labels[raw]
    if raw.strip().isdigit() and int(raw) < spec.num_labels:
        return int(raw)
    allowed = list(range(spec.num_labels)) + list(spec.string_labels or [])
    raise ValueError(f"{where}: label {raw!r} is not one of {allowed}")


def read_tsv(path: Path, spec: SubtaskSpec) -> list[Example]:
    """Read one GLUE TSV into ``(texts, label)`` pairs; a malformed row raises ``ValueError`` with its line."""
    with open(path, encoding="utf-8-sig", newline="") as handle:  # utf-8-sig strips MRPC's BOM
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = list(spec.columns) if spec.columns else next(reader, [])
        missing = [c for c in (*spec.text_cols, spec.label_col) if c not in header]
        if missing:
            raise ValueError(f"{path}, line 1: header {header} lacks column(s) {missing}")
        idx = [header.index(c) for c in spec.text_cols]
        label_idx = header.index(spec.label_col)
        rows: list[Example] = []
        for row in reader:
            where = f"{path}, line {reader.line_num}"
            if len(row) != len(header):
                raise ValueError(f"{where}: expected {len(header)} tab-separated fields, found {len(row)}")
            rows.append((tuple(row[i] for i in idx), _parse_label(row[label_idx], spec, where)))
    if not rows:
        raise ValueError(f"{path}: no data rows" + ("" if spec.columns else " (only the header)"))
    return rows


class TokenizedDataset(Dataset):
    """Tokenised examples (lists of ids, no padding) plus their ``lengths`` for length grouping."""

    def __init__(self, features: dict[str, list[list[int]]], labels: list[float]) -> None:
        self.features = features
        self.labels = labels
        self.lengths = [len(ids) for ids in features["input_ids"]]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**{k: v[i] for k, v in self.features.items()}, "labels": self.labels[i]}


class GlueTask(Task):
    """One GLUE subtask (``cfg.subtask``) with the fields of ``conf/task/glue_*.yaml``."""

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        if cfg.subtask not in SUBTASKS:
            raise ValueError(f"unknown GLUE subtask {cfg.subtask!r}; valid: {sorted(SUBTASKS)}")
        if cfg.source not in SOURCES:
            raise ValueError(f"task.source={cfg.source!r} is invalid; valid: {sorted(SOURCES)}")
        self.subtask: str = cfg.subtask
        self.spec = SUBTASKS[cfg.subtask]
        self.optimized_metric = cfg.get("optimized_metric") or f"val/{SUBTASK_METRICS[cfg.subtask][0]}"
        self.greater_is_better = not self.optimized_metric.endswith("/loss")
        self.pad_token_id = 0
        self._splits: dict[str, list[Example]] | None = None

    @property
    def is_regression(self) -> bool:
        return self.spec.num_labels == 1

    @property
    def model_head(self) -> dict[str, Any]:
        problem = "regression" if self.is_regression else "single_label_classification"
        return {"num_labels": self.spec.num_labels, "problem_type": problem}

    # ---- loading -------------------------------------------------------------------------------
    def local_dir(self) -> Path:
        return Path(self.cfg.data_dir) / self.spec.dirname

    def _missing(self, absent: list[str]) -> str:
        return (
            f"GLUE {self.subtask} data not found: missing {absent}. Put the official GLUE files "
            f"(https://gluebenchmark.com/tasks) at {self.local_dir()}/, or use task.source=hub with internet "
            f"(datasets.load_dataset('nyu-mll/glue', '{self.subtask}')). data/glue/SOURCE.md lists what ships."
        )

    def _load_local(self) -> dict[str, list[Example]]:
        files = {"train": self.local_dir() / "train.tsv", "val": self.local_dir() / self.spec.dev_file}
        absent = [str(p) for p in files.values() if not p.is_file()]
        if absent:
            raise FileNotFoundError(self._missing(absent))
        return {split: read_tsv(path, self.spec) for split, path in files.items()}

    def _load_hub(self) -> dict[str, list[Example]]:
        import datasets

        try:
            ds = datasets.load_dataset("nyu-mll/glue", self.subtask)
        except Exception as err:  # offline: ConnectionError / FileNotFoundError / OfflineModeIsEnabled ...
            raise RuntimeError(
                f"could not load nyu-mll/glue/{self.subtask} from the Hugging Face Hub ({type(err).__name__}: {err}). "
                f"Offline (HF_DATASETS_OFFLINE=1)? Use task.source=local with the TSVs under task.data_dir."
            ) from err
        out = {}
        for split, name in (("train", "train"), ("val", self.spec.hub_dev)):
            part = ds[name]
            texts = zip(*(part[c] for c in self.spec.hub_cols))
            out[split] = [(tuple(t), float(y) if self.is_regression else int(y)) for t, y in zip(texts, part["label"])]
        return out

    def load_splits(self) -> dict[str, list[Example]]:
        """Raw ``{"train", "val"}`` examples (cached), truncated to ``max_*_samples`` (first N rows)."""
        if self._splits is None:
            splits = load_from_source(self.cfg.source, self.local_dir().is_dir(), self._load_local, self._load_hub,
                                      self._missing([str(self.local_dir())]))
            limits = {"train": self.cfg.get("max_train_samples"), "val": self.cfg.get("max_eval_samples")}
            self._splits = {k: v[: limits[k]] if limits[k] else v for k, v in splits.items()}
        return self._splits

    def train_texts(self) -> list[str]:
        """All training texts (both sentences of a pair), e.g. to fit a tiny tokenizer."""
        return [t for texts, _ in self.load_splits()["train"] for t in texts]

    # ---- Task hooks ----------------------------------------------------------------------------
    def build_datasets(self, tokenizer: Any) -> dict[str, Dataset]:
        """Tokenise (pairs for two-text tasks), truncate to ``max_length``, no padding."""
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token (models.build_model does)")
        self.pad_token_id = tokenizer.pad_token_id
        out: dict[str, Dataset] = {}
        for split, rows in self.load_splits().items():
            columns = [list(col) for col in zip(*(texts for texts, _ in rows))]
            enc = tokenizer(*columns, truncation=True, max_length=self.cfg.max_length, padding=False)
            keep = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
            out[split] = TokenizedDataset({k: enc[k] for k in keep}, [y for _, y in rows])
        return out

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Pad to the longest example of the batch (right padding)."""
        width = max(len(e["input_ids"]) for e in examples)
        pads = {"input_ids": self.pad_token_id, "attention_mask": 0, "token_type_ids": 0}
        batch = {
            key: torch.tensor([e[key] + [pad] * (width - len(e[key])) for e in examples], dtype=torch.long)
            for key, pad in pads.items() if key in examples[0]
        }
        dtype = torch.float32 if self.is_regression else torch.long
        batch["labels"] = torch.tensor([e["labels"] for e in examples], dtype=dtype)
        return batch

    def train_batch_sampler(self, dataset: TokenizedDataset, batch_size: int, seed: int,
                            drop_last: bool = False) -> LengthGroupedBatchSampler:
        """Length-grouped, seeded batches for ``DataLoader(batch_sampler=...)`` (see ``tasks.sampling``)."""
        return LengthGroupedBatchSampler(dataset.lengths, batch_size, seed=seed, drop_last=drop_last)

    def _per_example_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.is_regression:
            return F.mse_loss(logits.squeeze(-1).float(), labels.float(), reduction="none")
        return F.cross_entropy(logits.float(), labels, reduction="none")

    @torch.no_grad()
    def evaluate(
        self, model: torch.nn.Module, loader: DataLoader, accelerator: Any, split: str = "val"
    ) -> dict[str, float]:
        """Loss and GLUE metrics over ``loader``; ``accelerator=None`` skips the cross-process gather."""
        was_training = model.training
        model.eval()
        preds, labels, losses = [], [], []
        for batch in loader:
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
            pred = logits.squeeze(-1).float() if self.is_regression else logits.argmax(-1)
            loss = self._per_example_loss(logits, batch["labels"])
            if accelerator is not None:
                pred, label, loss = accelerator.gather_for_metrics((pred, batch["labels"], loss))
            else:
                label = batch["labels"]
            preds.append(pred.cpu())
            labels.append(label.cpu())
            losses.append(loss.cpu())
        model.train(was_training)
        metrics = glue_metrics(self.subtask, torch.cat(preds).tolist(), torch.cat(labels).tolist())
        out = {f"{split}/{name}": value for name, value in metrics.items()}
        out[f"{split}/loss"] = float(torch.cat(losses).mean())
        return out
