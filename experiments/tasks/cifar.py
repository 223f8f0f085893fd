"""CIFAR-10 image classification through the kept ImageNet head (method.md §12.3).

Data (``task.source``): ``local`` reads the official python batches under ``task.data_dir``
(``data_batch_1..5``, ``test_batch``, ``batches.meta``: pickles of ``{data: uint8 [N, 3072] (R, G, B planes of
32 x 32), labels, ...}`` and ``{label_names}``); ``hub`` loads ``uoft-cs/cifar10``; ``auto`` takes the local
folder when it exists, else the Hub. :func:`write_synthetic_cifar` writes a small class-coloured set in the
same pickle format, so the real loader runs offline in tests and smoke runs. Validation is ``test_batch``.

Transforms (PIL, no torchvision; ``S = task.image_size``): training = RandomResizedCrop(S) (torchvision's
rule: area fraction ~ U(crop_scale), log aspect ~ U(log crop_ratio), 10 tries, else the centre crop of the
clamped ratio) done as ONE ``PIL.Image.resize(box=...)``, then a horizontal flip with p = 0.5; evaluation =
resize to S. Bilinear. Pixels become ``(x / 255 - mean) / std`` in ``collate`` on the whole batch
(google/vit-base-patch16-224's preprocessor: image_mean = image_std = [0.5, 0.5, 0.5]). The augmentation
of example ``i`` in epoch ``e`` comes from ``numpy.random.default_rng([augment_seed, e, i])``: the same
batches whatever the worker count, process count or resume point, and the global RNG is never drawn.

Head (``select_head_rows``): the model keeps its 1000-class head; :meth:`CifarTask.prepare_model` scores the
first ``head_selection_samples`` training images (evaluation transform) with the untouched model, forms
the mean softmax matrix ``P[c, k]`` = mean over images of class c of softmax(logits)_k (10 x 1000), picks
the rows by the Hungarian assignment maximising ``sum_c P[c, row_c]`` (distinct rows; ties broken by the
lowest index, so deterministic) and shrinks the classifier to those rows (``config.cifar_head_rows``).
"""

from __future__ import annotations

import logging
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from experiments.tasks.base import SOURCES, Task

log = logging.getLogger(__name__)
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE, META_FILE = "test_batch", "batches.meta"
LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
HUB_ID = "uoft-cs/cifar10"

Split = tuple[np.ndarray, np.ndarray]  # (uint8 [N, 32, 32, 3], int64 [N])


def _get(d: dict, key: str) -> Any:
    """A field of a CIFAR pickle, whose keys are bytes (loaded with ``encoding='bytes'``) or str."""
    return d[key.encode()] if key.encode() in d else d[key]


def _read_pickle(path: Path) -> dict:
    with open(path, "rb") as handle:
        return pickle.load(handle, encoding="bytes")


def read_batches(data_dir: Path, files: tuple[str, ...]) -> Split:
    """Images ``uint8 [N, 32, 32, 3]`` (HWC) and labels of the official pickle ``files``."""
    images, labels = [], []
    for name in files:
        batch = _read_pickle(data_dir / name)
        images.append(np.asarray(_get(batch, "data"), dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(_get(batch, "labels"), dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def read_label_names(data_dir: Path) -> list[str]:
    """``label_names`` of ``batches.meta``."""
    return [n.decode() if isinstance(n, bytes) else n for n in _get(_read_pickle(data_dir / META_FILE), "label_names")]


def write_synthetic_cifar(data_dir: Path, per_batch: int = 20, test_size: int = 40, seed: int = 0) -> Path:
    """Write a small CIFAR-10 in the official format: ``per_batch`` images per training batch (5 batches),
    ``test_size`` test images; class ``c`` is a noisy image of colour ``c`` (learnable in a few steps)."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, size=(10, 3))

    def batch(n: int, label: str) -> dict:
        labels = rng.integers(0, 10, size=n)
        img = palette[labels][:, :, None, None] + rng.normal(0, 30, size=(n, 3, 32, 32))
        return {b"batch_label": label.encode(), b"labels": labels.tolist(),
                b"data": np.clip(img, 0, 255).astype(np.uint8).reshape(n, 3072),
                b"filenames": [f"synthetic_{label}_{i}.png".encode() for i in range(n)]}

    parts = {name: batch(per_batch, name) for name in TRAIN_FILES} | {TEST_FILE: batch(test_size, TEST_FILE)}
    parts[META_FILE] = {b"label_names": [n.encode() for n in LABEL_NAMES], b"num_cases_per_batch": per_batch,
                        b"num_vis": 3072}
    for name, obj in parts.items():
        with open(data_dir / name, "wb") as handle:
            pickle.dump(obj, handle)
    return data_dir


def crop_box(rng: np.random.Generator, height: int, width: int, scale: tuple[float, float],
             ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box ``(left, top, right, bottom)`` drawn from ``rng``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


class CifarImages(Dataset):
    """uint8 images resized (eval) or randomly cropped and flipped (train) to ``size``, as HWC uint8 arrays."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, size: int, train: bool, seed: int = 0,
                 scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 hflip: bool = True) -> None:
        self.images, self.labels, self.size, self.train = images, labels, size, train
        self.seed, self.scale, self.ratio, self.hflip = seed, scale, ratio, hflip
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch of the augmentation seeds (the loop's loaders call it every epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        img = Image.fromarray(self.images[i])
        box = None
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            box = crop_box(rng, img.height, img.width, self.scale, self.ratio)
            out = img.resize((self.size, self.size), Image.BILINEAR, box=box)
            if self.hflip and rng.random() < 0.5:
                out = out.transpose(Image.FLIP_LEFT_RIGHT)
        else:
            out = img.resize((self.size, self.size), Image.BILINEAR)
        return {"pixels": np.asarray(out), "labels": int(self.labels[i])}


class CifarTask(Task):
    """CIFAR-10 (fields of ``conf/task/cifar10.yaml``, schema ``CifarTaskConfig``)."""

    head = "image_classification"
    peft_task_type = None  # peft's generic PeftModel: pixel_values pass through

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        if cfg.source not in SOURCES:
            raise ValueError(f"task.source={cfg.source!r} is invalid; valid: {list(SOURCES)}")
        for key in ("mean", "std"):
            if len(cfg[key]) != 3:
                raise ValueError(f"task.{key}={list(cfg[key])} is invalid; valid: three per-channel values")
        if cfg.image_size < 8:
            raise ValueError(f"task.image_size={cfg.image_size} is invalid; valid: an integer >= 8")
        self.optimized_metric = cfg.get("optimized_metric") or "val/acc"
        self.greater_is_better = not self.optimized_metric.endswith("/loss")
        self._splits: dict[str, Split] | None = None
        self.label_names: list[str] = list(LABEL_NAMES)
        self.datasets: dict[str, CifarImages] = {}
        self.head_rows: list[int] | None = None

    @property
    def model_head(self) -> dict[str, Any]:
        """The pretrained 1000 rows are kept (and selected in :meth:`prepare_model`), else a new head."""
        return {} if self.cfg.select_head_rows else {"num_labels": self.cfg.num_labels}

    # ---- loading -------------------------------------------------------------------------------
    def _load_local(self) -> dict[str, Split]:
        root = Path(self.cfg.data_dir)
        absent = [n for n in (*TRAIN_FILES, TEST_FILE, META_FILE) if not (root / n).is_file()]
        if absent:
            raise FileNotFoundError(
                f"CIFAR-10 python batches not found under task.data_dir={root}: missing {absent}. Unpack "
                f"https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz there, or use task.source=hub with internet.")
        self.label_names = read_label_names(root)
        return {"train": read_batches(root, TRAIN_FILES), "val": read_batches(root, (TEST_FILE,))}

    def _load_hub(self) -> dict[str, Split]:
        import datasets

        try:
            ds = datasets.load_dataset(HUB_ID)
        except Exception as err:  # offline: ConnectionError / OfflineModeIsEnabled / DatasetNotFoundError
            raise RuntimeError(
                f"could not load {HUB_ID} from the Hugging Face Hub ({type(err).__name__}: {err}). Offline "
                f"(HF_DATASETS_OFFLINE=1)? Use task.source=local with the python batches under task.data_dir.") from err
        self.label_names = list(ds["train"].features["label"].names)
        return {split: (np.stack([np.asarray(im.convert("RGB")) for im in ds[name]["img"]]),
                        np.asarray(ds[name]["label"], dtype=np.int64))
                for split, name in (("train", "train"), ("val", "test"))}

    def load_splits(self) -> dict[str, Split]:
        """``{"train", "val"}`` as (images, labels), truncated to ``max_*_samples`` (first N), cached."""
        if self._splits is None:
            local = self.cfg.source == "local" or (self.cfg.source == "auto" and Path(self.cfg.data_dir).is_dir())
            splits = self._load_local() if local else self._load_hub()
            limits = {"train": self.cfg.get("max_train_samples"), "val": self.cfg.get("max_eval_samples")}
            self._splits = {k: (x[: limits[k]], y[: limits[k]]) if limits[k] else (x, y) for k, (x, y) in splits.items()}
        return self._splits

    # ---- Task hooks ----------------------------------------------------------------------------
    def build_datasets(self, tokenizer: Any = None) -> dict[str, Dataset]:
        """Training (augmented) and validation (resized) image datasets; ``tokenizer`` is unused (None)."""
        c = self.cfg
        (xt, yt), (xv, yv) = self.load_splits()["train"], self.load_splits()["val"]
        aug = {"scale": tuple(c.crop_scale), "ratio": tuple(c.crop_ratio), "hflip": c.hflip}
        self.datasets = {"train": CifarImages(xt, yt, c.image_size, True, c.augment_seed, **aug),
                         "val": CifarImages(xv, yv, c.image_size, False)}
        return dict(self.datasets)

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """``pixel_values`` float [B, 3, S, S] normalised as ``(x / 255 - mean) / std``; ``labels`` long [B]."""
        pixels = torch.from_numpy(np.stack([e["pixels"] for e in examples])).permute(0, 3, 1, 2).float()
        mean = torch.tensor(list(self.cfg.mean)).view(1, 3, 1, 1)
        std = torch.tensor(list(self.cfg.std)).view(1, 3, 1, 1)
        return {"pixel_values": (pixels / 255.0 - mean) / std,
                "labels": torch.tensor([e["labels"] for e in examples], dtype=torch.long)}

    def compute_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cross entropy of the (selected) head's logits."""
        return F.cross_entropy(model(pixel_values=batch["pixel_values"]).logits.float(), batch["labels"])

    def prepare_model(self, model: nn.Module) -> None:
        """Shrink the 1000-class head to the rows :func:`select_head_rows` picks (``select_head_rows``)."""
        if not self.cfg.select_head_rows:
            return
        x, y = self.load_splits()["train"]
        n = min(self.cfg.head_selection_samples, len(y))
        images = CifarImages(x[:n], y[:n], self.cfg.image_size, False)
        loader = DataLoader(images, batch_size=64, collate_fn=self.collate)
        home = next(model.parameters()).device
        if torch.cuda.is_available():  # score on this process's GPU (ViT-B/16: 2,000 images), then back
            model.to(torch.device("cuda", torch.cuda.current_device()))
        rows = select_head_rows(model, loader, self.cfg.num_labels)
        model.to(home)
        shrink_classifier(model, rows)
        model.config.id2label = dict(enumerate(self.label_names))
        model.config.label2id = {name: i for i, name in enumerate(self.label_names)}
        self.head_rows = rows
        log.info("CIFAR-10 head: ImageNet rows %s for %s", rows, self.label_names)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, accelerator: Any, split: str = "val") -> dict[str, float]:
        """Accuracy and mean cross entropy over ``loader`` (gathered across processes)."""
        was_training = model.training
        model.eval()
        correct, losses = [], []
        for batch in loader:
            logits = model(pixel_values=batch["pixel_values"]).logits.float()
            hit = (logits.argmax(-1) == batch["labels"]).float()
            loss = F.cross_entropy(logits, batch["labels"], reduction="none")
            if accelerator is not None:
                hit, loss = accelerator.gather_for_metrics((hit, loss))
            correct.append(hit.cpu())
            losses.append(loss.cpu())
        model.train(was_training)
        return {f"{split}/acc": float(torch.cat(correct).mean()), f"{split}/loss": float(torch.cat(losses).mean())}


def _classifier(model: nn.Module) -> nn.Linear:
    head = getattr(model, "classifier", None)
    if not isinstance(head, nn.Linear):
        raise ValueError(f"task.select_head_rows needs a model with a Linear `classifier`, got {type(head).__name__}")
    return head


@torch.no_grad()
def select_head_rows(model: nn.Module, loader: DataLoader, num_labels: int) -> list[int]:
    """Rows of the head for classes ``0..num_labels-1``: the assignment maximising the summed mean softmax
    score ``P[c, row_c]`` (``scipy.optimize.linear_sum_assignment``; distinct rows, deterministic)."""
    from scipy.optimize import linear_sum_assignment

    head = _classifier(model)
    if head.out_features < num_labels:
        raise ValueError(f"the head has {head.out_features} rows, fewer than task.num_labels={num_labels}")
    was_training = model.training
    model.eval()
    device = head.weight.device
    sums = torch.zeros(num_labels, head.out_features, dtype=torch.float64)
    counts = torch.zeros(num_labels, dtype=torch.float64)
    for batch in loader:
        probs = model(pixel_values=batch["pixel_values"].to(device)).logits.float().softmax(-1).double().cpu()
        sums.index_add_(0, batch["labels"], probs)
        counts += torch.bincount(batch["labels"], minlength=num_labels).double()
    model.train(was_training)
    scores = (sums / counts.clamp_min(1).unsqueeze(1)).numpy()
    classes, rows = linear_sum_assignment(scores, maximize=True)
    return [int(r) for _, r in sorted(zip(classes, rows))]


@torch.no_grad()
def shrink_classifier(model: nn.Module, rows: list[int]) -> None:
    """Replace ``model.classifier`` by its ``rows`` (weights and biases copied; same dtype, device, grad flag)."""
    head = _classifier(model)
    new = nn.Linear(head.in_features, len(rows), bias=head.bias is not None, device=head.weight.device,
                    dtype=head.weight.dtype)
    index = torch.tensor(rows, device=head.weight.device)
    new.weight.copy_(head.weight[index])
    if head.bias is not None:
        new.bias.copy_(head.bias[index])
    new.requires_grad_(head.weight.requires_grad)
    model.classifier = new
    model.num_labels = model.config.num_labels = len(rows)
    model.config.cifar_head_rows = list(rows)


if __name__ == "__main__":  # python -m experiments.tasks.cifar <dir>: the synthetic set for a CPU smoke run
    import argparse

    parser = argparse.ArgumentParser(description="Write a small synthetic CIFAR-10 in the official pickle format.")
    parser.add_argument("data_dir", type=Path)
    print(write_synthetic_cifar(parser.parse_args().data_dir))
