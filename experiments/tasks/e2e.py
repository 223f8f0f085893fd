"""E2E NLG (Novikova et al. 2017) as microsoft/LoRA's ``examples/NLG`` runs it: causal-LM fine-tuning on
(MR, reference) pairs, beam decoding of each unique test MR, e2e-metrics scores.

Data (``task.format``):

* ``lora``: microsoft/LoRA's ``{train,valid,test}.txt``, one ``MR||reference`` pair per line, an MR repeated
  once per reference, the text pre-tokenised (``family - friendly``, ``£ 30``). ``data/e2e/`` ships
  ``valid.txt`` and ``test.txt``; ``train.txt`` (42,061 lines) does not ship: give its path
  (``task.train_file=/path/to/train.txt``) or, online, ``task.source=hub``.
* ``csv``: the official ``mr,ref`` CSVs (``data/e2e/original_csv/``: ``devset.csv``, ``testset_w_refs.csv``),
  MRs written ``name[Alimentum], area[city centre]`` and untokenised references. The Hub
  (``tuetschek/e2e_nlg``) gives the same texts as the CSVs.

Encoding (LoRA's ``gpt2_encode.py --add_bos --add_eos`` and ``FT_Dataset``): ``ids(MR) + [SEP] + ids(' ' + ref)
+ [EOS]``, SEP and EOS both the tokenizer's EOS (GPT-2: 50256). The loss covers the completion and its EOS
only, with label smoothing ``task.label_smoothing`` (0.1), averaged over those tokens of the batch.

Evaluation: every epoch the token-averaged cross entropy (no smoothing) on ``val_file`` (``val/loss``,
``val/ppl``); after the last step (:meth:`E2ETask.final_evaluate`) beam decoding of the first
``max_test_mrs`` unique MRs of ``test_file`` (all 630 by default), written as the official script's input
files (``<output_dir>/e2e/test_references.txt``, ``test_predictions.txt``) and scored by
``experiments.metrics.e2e`` (``test/bleu``, ``test/nist``, ``test/meteor``, ``test/rouge_l``, ``test/cider``,
raw as ``measure_scores.py`` prints them).
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from experiments.metrics.e2e import METRICS as E2E_METRICS
from experiments.tasks.base import SOURCES, Task, load_from_source
from experiments.tasks.decoding import BeamSettings, beam_decode

log = logging.getLogger(__name__)
FORMATS = ("lora", "csv")
HUB_DATASET = "tuetschek/e2e_nlg"
HUB_SPLITS = {"train_file": "train", "val_file": "validation", "test_file": "test"}
IGNORE = -100
Pair = tuple[str, str]  # (MR, reference)


def read_lora_pairs(path: Path) -> list[Pair]:
    """``MR||reference`` lines; a line without exactly one ``||`` raises ``ValueError`` naming it."""
    pairs = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            parts = line.strip().split("||")
            if len(parts) != 2:
                raise ValueError(f"{path}, line {number}: expected 'MR||reference', found {len(parts) - 1} '||'")
            pairs.append((parts[0].strip(), parts[1].strip()))
    if not pairs:
        raise ValueError(f"{path}: no MR||reference lines")
    return pairs


def read_csv_pairs(path: Path) -> list[Pair]:
    """The official ``mr,ref`` CSV (header ``mr,ref``; ``testset.csv`` has no references and is refused)."""
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = {f.lower(): f for f in reader.fieldnames or []}
        if "mr" not in columns or "ref" not in columns:
            raise ValueError(f"{path}: header {reader.fieldnames} lacks 'mr' and 'ref' (testset.csv has no "
                             f"references: use testset_w_refs.csv)")
        pairs = [(row[columns["mr"]].strip(), row[columns["ref"]].strip()) for row in reader]
    if not pairs:
        raise ValueError(f"{path}: no data rows")
    return pairs


def group_references(pairs: list[Pair]) -> list[tuple[str, list[str]]]:
    """Unique MRs in order of first appearance, each with all its references (LoRA's ``gpt2_decode.py``)."""
    groups: dict[str, list[str]] = {}
    for mr, ref in pairs:
        groups.setdefault(mr, []).append(ref)
    return list(groups.items())


def cut_output(text: str, stops: list[str], eos_text: str | None) -> str:
    """A decoded hypothesis cut at the EOS text and at the first stop string, stripped."""
    for stop in ([eos_text] if eos_text else []) + list(stops):
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text.strip()


@dataclass
class LabelSmoothedCausalLMLoss:
    """``model.loss_function`` for the E2E task: next-token cross entropy with label smoothing ε, averaged over
    the tokens whose label is not ``-100``: ``(1 − ε)·NLL + ε·mean_v(−log p_v)`` (LoRA's ``--label_smooth``).

    Installed on the model (transformers calls it with ``labels``), so that a tuner which adds to the model's
    loss, e.g. AdaLoRA's orthogonality regulariser, adds to this one.
    """

    epsilon: float

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, vocab_size: int, **kwargs: Any) -> torch.Tensor:
        shifted = F.pad(labels, (0, 1), value=IGNORE)[..., 1:]
        return F.cross_entropy(logits.float().reshape(-1, vocab_size), shifted.reshape(-1).to(logits.device),
                               ignore_index=IGNORE, label_smoothing=self.epsilon)


class CausalLMDataset(Dataset):
    """Encoded examples: ``input_ids`` and ``labels`` (``-100`` on the context)."""

    def __init__(self, examples: list[dict[str, list[int]]]) -> None:
        self.examples = examples
        self.lengths = [len(e["input_ids"]) for e in examples]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.examples[i]


class E2ETask(Task):
    """E2E NLG with the fields of ``conf/task/e2e.yaml`` (schema ``experiments.schemas.E2ETaskConfig``)."""

    head = "causal_lm"
    peft_task_type = "CAUSAL_LM"
    optimized_metric = "val/loss"
    greater_is_better = False

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        if cfg.format not in FORMATS:
            raise ValueError(f"task.format={cfg.format!r} is invalid; valid: {list(FORMATS)}")
        if cfg.source not in SOURCES:
            raise ValueError(f"task.source={cfg.source!r} is invalid; valid: {list(SOURCES)}")
        if not 0 <= cfg.label_smoothing < 1:
            raise ValueError(f"task.label_smoothing={cfg.label_smoothing!r} is invalid; allowed: a number in [0, 1)")
        for key in ("num_beams", "max_new_tokens", "decode_batch_size"):
            if not isinstance(cfg[key], int) or cfg[key] < 1:
                raise ValueError(f"task.{key}={cfg[key]!r} is invalid; allowed: an integer >= 1")
        unknown = sorted(set(cfg.metrics) - set(E2E_METRICS))
        if unknown or not cfg.metrics:
            raise ValueError(f"task.metrics={list(cfg.metrics)!r} is invalid; allowed: a non-empty subset of "
                             f"{list(E2E_METRICS)}")
        self.optimized_metric = cfg.get("optimized_metric") or self.optimized_metric
        self.greater_is_better = not self.optimized_metric.endswith(("/loss", "/ppl"))
        self._pairs: dict[str, list[Pair]] = {}
        self.tokenizer: Any = None

    # ---- data -----------------------------------------------------------------------------------
    def split_path(self, key: str) -> Path:
        path = Path(self.cfg[key])
        return path if path.is_absolute() else Path(self.cfg.data_dir) / path

    def _missing(self, key: str) -> str:
        path = self.split_path(key)
        hint = ("the training split does not ship (42,061 lines): download microsoft/LoRA's "
                "examples/NLG/data/e2e/train.txt and pass task.train_file=/path/to/train.txt"
                if key == "train_file" and path.name == "train.txt" else "data/e2e/SOURCE.md lists what ships")
        return f"E2E {key} not found at {path}: {hint}; or, online, task.source=hub ({HUB_DATASET})."

    def _read_local(self, key: str) -> list[Pair]:
        path = self.split_path(key)
        if not path.is_file():
            raise FileNotFoundError(self._missing(key))
        return read_lora_pairs(path) if self.cfg.format == "lora" else read_csv_pairs(path)

    def _read_hub(self, key: str) -> list[Pair]:
        import datasets

        try:
            part = datasets.load_dataset(HUB_DATASET, split=HUB_SPLITS[key])
        except Exception as err:  # offline: ConnectionError / OfflineModeIsEnabled / FileNotFoundError ...
            raise RuntimeError(f"could not load {HUB_DATASET} from the Hugging Face Hub ({type(err).__name__}: {err})."
                               f" Offline (HF_DATASETS_OFFLINE=1)? Use task.source=local.") from err
        return [(mr.strip(), ref.strip()) for mr, ref in zip(part["meaning_representation"], part["human_reference"])]

    def pairs(self, key: str) -> list[Pair]:
        """The (MR, reference) pairs of ``train_file``, ``val_file`` or ``test_file`` (cached; train and val
        truncated to ``max_train_samples`` / ``max_eval_samples`` lines)."""
        if key not in self._pairs:
            pairs = load_from_source(self.cfg.source, self.split_path(key).is_file(), lambda: self._read_local(key),
                                     lambda: self._read_hub(key), self._missing(key))
            limit = {"train_file": self.cfg.max_train_samples, "val_file": self.cfg.max_eval_samples}.get(key)
            self._pairs[key] = pairs[:limit] if limit else pairs
        return self._pairs[key]

    def train_texts(self) -> list[str]:
        return [t for pair in self.pairs("train_file") for t in pair]

    # ---- encoding -------------------------------------------------------------------------------
    def prompt_ids(self, mr: str) -> list[int]:
        """``ids(MR) + [SEP]``: the decoding query (LoRA's ``--add_bos``; SEP is the tokenizer's EOS)."""
        return self.tokenizer.encode(mr, add_special_tokens=False) + [self.tokenizer.eos_token_id]

    def encode(self, mr: str, ref: str) -> dict[str, list[int]]:
        """``prompt + ids(' ' + ref) + [EOS]``; ``labels`` are ``-100`` on the prompt. Not truncated."""
        prompt = self.prompt_ids(mr)
        completion = self.tokenizer.encode(" " + ref, add_special_tokens=False) + [self.tokenizer.eos_token_id]
        return {"input_ids": prompt + completion, "labels": [IGNORE] * len(prompt) + completion}

    def build_datasets(self, tokenizer: Any) -> dict[str, Dataset]:
        """Encoded train and val pairs, cut to ``max_length`` tokens (a warning counts the cut ones)."""
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token; E2E needs one as separator and end of text")
        self.tokenizer = tokenizer
        out, limit = {}, self.cfg.max_length
        for split, key in (("train", "train_file"), ("val", "val_file")):
            examples = [self.encode(mr, ref) for mr, ref in self.pairs(key)]
            cut = sum(len(e["input_ids"]) > limit for e in examples)
            if cut:
                log.warning("E2E %s: %d examples cut to task.max_length=%d tokens", split, cut, limit)
            out[split] = CausalLMDataset([{k: v[:limit] for k, v in e.items()} for e in examples])
        return out

    def collate(self, examples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        """Right padding: pad id / attention 0 / label ``-100``."""
        width = max(len(e["input_ids"]) for e in examples)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        ids = [e["input_ids"] + [pad] * (width - len(e["input_ids"])) for e in examples]
        mask = [[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in examples]
        labels = [e["labels"] + [IGNORE] * (width - len(e["labels"])) for e in examples]
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "labels": torch.tensor(labels)}

    # ---- model, loss, evaluation ----------------------------------------------------------------
    def prepare_model(self, model: torch.nn.Module) -> None:
        """Install the label-smoothed completion loss as the model's own loss (see ``LabelSmoothedCausalLMLoss``)."""
        model.loss_function = LabelSmoothedCausalLMLoss(float(self.cfg.label_smoothing))

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, loader: DataLoader, accelerator: Any, split: str = "val") -> dict[str, float]:
        """Token-averaged cross entropy of the completions (no smoothing) and its perplexity."""
        was_training = model.training
        model.eval()
        sums = []  # per example: (summed token loss, tokens)
        for batch in loader:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            target = F.pad(batch["labels"], (0, 1), value=IGNORE)[..., 1:]
            loss = F.cross_entropy(logits.float().transpose(1, 2), target, ignore_index=IGNORE, reduction="none")
            pair = torch.stack([loss.sum(-1).double(), (target != IGNORE).sum(-1).double()], dim=-1)
            if accelerator is not None:  # drops the samples an uneven last batch repeats across processes
                pair = accelerator.gather_for_metrics(pair)
            sums.append(pair.cpu())
        total, count = torch.cat(sums).sum(0)
        model.train(was_training)
        mean = float(total / count.clamp(min=1))
        return {f"{split}/loss": mean, f"{split}/ppl": math.exp(min(mean, 50.0))}

    def beam_settings(self) -> BeamSettings:
        stops = list(OmegaConf.to_container(self.cfg.stop_strings, resolve=True))
        return BeamSettings(num_beams=self.cfg.num_beams, length_penalty=self.cfg.length_penalty,
                            no_repeat_ngram_size=self.cfg.no_repeat_ngram_size, max_new_tokens=self.cfg.max_new_tokens,
                            stop_strings=stops, batch_size=self.cfg.decode_batch_size)

    def test_groups(self) -> list[tuple[str, list[str]]]:
        groups = group_references(self.pairs("test_file"))
        return groups[: self.cfg.max_test_mrs] if self.cfg.max_test_mrs else groups

    def final_evaluate(self, model: torch.nn.Module, accelerator: Any, output_dir: Path) -> dict[str, float]:
        """Decode the test MRs with beam search, write the official script's input files, score them."""
        from experiments.metrics.e2e import score_e2e

        groups = self.test_groups()
        settings = self.beam_settings()
        texts = beam_decode(model, self.tokenizer, [self.prompt_ids(mr) for mr, _ in groups], settings, accelerator)
        outputs = [cut_output(t, settings.stop_strings, self.tokenizer.eos_token) for t in texts]
        metrics: dict[str, float] = {}
        if accelerator is None or accelerator.is_main_process:
            folder = Path(output_dir) / "e2e"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "test_references.txt").write_text("".join("\n".join(refs) + "\n\n" for _, refs in groups),
                                                         encoding="utf-8")
            (folder / "test_predictions.txt").write_text("".join(o + "\n" for o in outputs), encoding="utf-8")
            scores = score_e2e([refs for _, refs in groups], outputs, metrics=tuple(self.cfg.metrics))
            metrics = {f"test/{name.lower()}": float(value) for name, value in scores.items()}
            metrics["test/num_mrs"] = float(len(groups))
            log.info("E2E test (%d MRs): %s", len(groups), {k: round(v, 4) for k, v in metrics.items()})
        if accelerator is not None and accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            metrics = broadcast_object_list([metrics])[0]
        return metrics
