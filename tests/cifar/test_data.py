"""CIFAR-10 data: the official pickle loader on the synthetic set, the Hub's offline error, and augmentation
seeded by (seed, epoch, index) only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from experiments.tasks import build_task
from experiments.tasks.cifar import LABEL_NAMES, read_batches, read_label_names


def _task(make_cfg, *overrides: str):
    return build_task(make_cfg(["+experiment=cifar10_vit", "model=tiny_vit", *overrides]).task)


def test_pickle_loader_on_the_synthetic_set(cifar_dir: Path, make_cfg) -> None:
    x, y = read_batches(cifar_dir, ("data_batch_1", "data_batch_2"))
    assert x.shape == (40, 32, 32, 3) and x.dtype == np.uint8 and y.shape == (40,) and set(y) <= set(range(10))
    assert read_label_names(cifar_dir) == list(LABEL_NAMES)
    task = _task(make_cfg, f"task.data_dir={cifar_dir}", "task.source=local")
    splits = task.load_splits()
    assert splits["train"][0].shape == (100, 32, 32, 3) and splits["val"][0].shape == (40, 32, 32, 3)
    data = task.build_datasets(None)
    batch = task.collate([data["train"][i] for i in range(4)])
    assert batch["pixel_values"].shape == (4, 3, 32, 32) and batch["labels"].dtype.is_floating_point is False
    assert -1.0 <= float(batch["pixel_values"].min()) and float(batch["pixel_values"].max()) <= 1.0  # (x-0.5)/0.5
    assert task.label_names == list(LABEL_NAMES)


def test_missing_files_and_offline_hub_say_what_to_do(tmp_path: Path, make_cfg) -> None:
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        _task(make_cfg, f"task.data_dir={tmp_path}", "task.source=local").load_splits()
    with pytest.raises(RuntimeError, match="task.source=local"):
        _task(make_cfg, f"task.data_dir={tmp_path / 'absent'}", "task.source=hub").load_splits()


def test_augmentation_depends_on_seed_epoch_index_only(cifar_dir: Path, make_cfg) -> None:
    task = _task(make_cfg, f"task.data_dir={cifar_dir}", "task.image_size=48")
    train = task.build_datasets(None)["train"]
    first = [train[i]["pixels"] for i in range(6)]
    np.random.seed(123)  # the global RNG plays no part
    assert all(np.array_equal(a, train[i]["pixels"]) for i, a in enumerate(first))
    assert first[0].shape == (48, 48, 3)
    train.set_epoch(1)
    assert not all(np.array_equal(a, train[i]["pixels"]) for i, a in enumerate(first))
    val = task.build_datasets(None)["val"]
    assert np.array_equal(val[0]["pixels"], val[0]["pixels"])


def test_bad_values_fail_naming_the_field(make_cfg) -> None:
    with pytest.raises(ValueError, match=r"task.source='disk' is invalid; valid: \['auto', 'local', 'hub'\]"):
        _task(make_cfg, "task.source=disk")
