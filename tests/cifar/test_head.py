"""Head-row selection (method.md §12.3): distinct ImageNet rows by mean softmax score, deterministic, and the
shrunk head gives exactly those rows' logits."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader
from transformers import ViTConfig, ViTForImageClassification

from experiments.tasks import build_task
from experiments.tasks.cifar import CifarImages, select_head_rows, shrink_classifier

TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32,
            patch_size=8, num_labels=1000)


def test_selection_is_distinct_deterministic_and_shrinks(cifar_dir, make_cfg) -> None:
    task = build_task(make_cfg(["+experiment=cifar10_vit", "model=tiny_vit", f"task.data_dir={cifar_dir}"]).task)
    x, y = task.load_splits()["train"]
    loader = DataLoader(CifarImages(x, y, 32, False), batch_size=32, collate_fn=task.collate)
    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(**TINY)).eval()
    rows = select_head_rows(model, loader, 10)
    assert rows == select_head_rows(model, loader, 10)
    assert len(set(rows)) == 10 and all(0 <= r < 1000 for r in rows)
    batch = next(iter(loader))
    full = model(pixel_values=batch["pixel_values"]).logits
    shrink_classifier(model, rows)
    assert model.classifier.out_features == 10 and model.config.cifar_head_rows == rows
    torch.testing.assert_close(model(pixel_values=batch["pixel_values"]).logits, full[:, rows])


def test_a_planted_head_is_recovered() -> None:
    """Class c's images score highest on row 100 + 7c: the assignment finds exactly those rows."""
    class Planted(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.classifier = torch.nn.Linear(10, 1000)

        def forward(self, pixel_values: torch.Tensor):  # pixel_values: one-hot class [B, 10]
            logits = torch.zeros(len(pixel_values), 1000)
            logits[:, 100 + 7 * torch.arange(10)] = 5 * pixel_values
            logits[:, 0] = 4.0  # a row every class likes, but less than its own
            return type("Out", (), {"logits": logits})()

    labels = torch.arange(30) % 10
    batches = [{"pixel_values": torch.nn.functional.one_hot(labels, 10).float(), "labels": labels}]
    assert select_head_rows(Planted(), batches, 10) == [100 + 7 * c for c in range(10)]


def test_the_task_names_the_selected_rows_after_cifar_classes(cifar_dir, make_cfg) -> None:
    from experiments.models import build_model
    from experiments.tasks.cifar import LABEL_NAMES

    cfg = make_cfg(["+experiment=cifar10_vit", "model=tiny_vit", f"task.data_dir={cifar_dir}"])
    task = build_task(cfg.task)
    model, tokenizer = build_model(cfg.model, task)
    assert tokenizer is None and model.classifier.out_features == 1000
    task.build_datasets(tokenizer)
    task.prepare_model(model)
    assert model.classifier.out_features == 10 and len(set(task.head_rows)) == 10
    assert [model.config.id2label[i] for i in range(10)] == list(LABEL_NAMES)
