"""Tokenisation without padding, dynamic padding in collate, and the length-grouped batch sampler."""

from __future__ import annotations

import pytest
import torch

from experiments.tasks.glue import GlueTask
from experiments.tasks.sampling import LengthGroupedBatchSampler
from tests.glue.conftest import task_cfg


class WhitespaceTokenizer:
    """A stand-in tokenizer: ids are word lengths, [CLS]=1, [SEP]=2, pad=0."""

    pad_token_id = 0

    def __call__(self, first, second=None, truncation=True, max_length=40, padding=False):
        assert padding is False and truncation
        out = []
        for i, text in enumerate(first):
            ids = [1] + [len(w) + 2 for w in text.split()] + [2]
            if second is not None:
                ids += [len(w) + 2 for w in second[i].split()] + [2]
            out.append(ids[:max_length])
        return {"input_ids": out, "attention_mask": [[1] * len(ids) for ids in out]}


@pytest.fixture(scope="module")
def rte_sets():
    task = GlueTask(task_cfg("rte", max_length=40, max_train_samples=64, max_eval_samples=16))
    return task, task.build_datasets(WhitespaceTokenizer())


def test_no_padding_at_tokenisation_and_truncation(rte_sets) -> None:
    _, sets = rte_sets
    lengths = sets["train"].lengths
    assert max(lengths) == 40 and len(set(lengths)) > 1 and len(sets["val"]) == 16


def test_collate_pads_to_longest_in_batch(rte_sets) -> None:
    task, _ = rte_sets
    batch = task.collate([{"input_ids": [1, 5, 2], "attention_mask": [1, 1, 1], "labels": 1},
                          {"input_ids": [1, 2], "attention_mask": [1, 1], "labels": 0}])
    assert batch["input_ids"].tolist() == [[1, 5, 2], [1, 2, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].dtype == torch.long and "token_type_ids" not in batch


def test_regression_labels_are_float() -> None:
    task = GlueTask(task_cfg("stsb"))
    batch = task.collate([{"input_ids": [1], "token_type_ids": [0], "attention_mask": [1], "labels": 3.5}])
    assert batch["labels"].dtype == torch.float32 and batch["token_type_ids"].tolist() == [[0]]


def test_sampler_deterministic_complete_and_grouped() -> None:
    lengths = torch.randint(1, 60, (1000,), generator=torch.Generator().manual_seed(1)).tolist()
    a = LengthGroupedBatchSampler(lengths, batch_size=32, seed=7, mega_batch_mult=8)
    b = LengthGroupedBatchSampler(lengths, batch_size=32, seed=7, mega_batch_mult=8)
    assert a.batches(0) == b.batches(0) and a.batches(0) != a.batches(1)
    assert a.batches(0) != LengthGroupedBatchSampler(lengths, 32, seed=8, mega_batch_mult=8).batches(0)
    flat = sorted(i for batch in a.batches(0) for i in batch)
    assert flat == list(range(1000)) and len(a) == len(a.batches(0)) == 32
    # padding waste is far below that of random batches
    def waste(batches):
        return sum(len(bt) * max(lengths[i] for i in bt) - sum(lengths[i] for i in bt) for bt in batches)
    rand = torch.randperm(1000, generator=torch.Generator().manual_seed(0)).split(32)
    assert waste(a.batches(0)) < 0.3 * waste([r.tolist() for r in rand])


def test_sampler_epochs_and_drop_last() -> None:
    s = LengthGroupedBatchSampler(list(range(100)), batch_size=16, seed=0, drop_last=True)
    first, second = list(s), list(s)  # iterating advances the epoch
    assert first == s.batches(0) and second == s.batches(1)
    s.set_epoch(0)
    assert list(s) == first and len(s) == 6 and all(len(b) == 16 for b in first)


def test_task_exposes_sampler(rte_sets) -> None:
    task, sets = rte_sets
    sampler = task.train_batch_sampler(sets["train"], batch_size=8, seed=3)
    loader = torch.utils.data.DataLoader(sets["train"], batch_sampler=sampler, collate_fn=task.collate)
    assert sum(len(b["labels"]) for b in loader) == 64


@pytest.mark.parametrize("split_batches", [True, False])
def test_sampler_shards_disjointly_under_ddp(split_batches: bool) -> None:
    """Accelerate's BatchSamplerShard (what prepare() wraps it in) gives 2 ranks disjoint, complete data."""
    from accelerate.data_loader import BatchSamplerShard

    def rank_indices(rank: int) -> list[int]:  # each rank owns its sampler, built from the same seed
        sampler = LengthGroupedBatchSampler(list(range(96)), batch_size=16, seed=0, drop_last=True)
        shard = BatchSamplerShard(sampler, num_processes=2, process_index=rank, split_batches=split_batches)
        return [i for batch in shard for i in batch]

    ranks = [rank_indices(0), rank_indices(1)]
    assert not set(ranks[0]) & set(ranks[1]) and sorted(ranks[0] + ranks[1]) == list(range(96))
