"""Length-grouped batching: batches of similar-length examples, so dynamic padding wastes little.

On CPU (MiniLM, SST-2, batch 32) this made training steps 2-3x faster than random batches. The order
is still random: the data are shuffled, cut into "mega-batches" of ``mega_batch_mult`` batches, each
mega-batch is sorted by length and cut into batches, and the batches are shuffled again.

Use it as a ``batch_sampler``::

    sampler = LengthGroupedBatchSampler(train_set.lengths, batch_size=32, seed=cfg.seed)
    loader = DataLoader(train_set, batch_sampler=sampler, collate_fn=task.collate)

Determinism: epoch ``e`` uses ``torch.Generator().manual_seed(seed + e)``. Call ``set_epoch(e)`` before
each epoch (the harness loop does); without calls, every new iteration advances the epoch by one.
DDP: ``accelerator.prepare`` wraps it in ``BatchSamplerShard``. Every rank builds the same batch list
from the same seed, so with ``split_batches=True`` (our loop) each rank takes its slice of every
batch, and with ``split_batches=False`` the ranks take whole batches in turn; either way they stay disjoint.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Yields lists of indices whose examples have similar lengths (see the module docstring)."""

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int = 0,
        drop_last: bool = False,
        mega_batch_mult: int = 50,
    ) -> None:
        if batch_size < 1 or mega_batch_mult < 1:
            raise ValueError(f"batch_size={batch_size} and mega_batch_mult={mega_batch_mult} must be >= 1")
        self.lengths = torch.as_tensor(list(lengths), dtype=torch.long)
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last
        self.mega_batch_mult = mega_batch_mult
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Fix the epoch whose permutation the next iteration uses."""
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def batches(self, epoch: int) -> list[list[int]]:
        """The batches of ``epoch``: a pure function of (lengths, batch_size, seed, epoch)."""
        gen = torch.Generator().manual_seed(self.seed + epoch)
        perm = torch.randperm(len(self.lengths), generator=gen)
        mega = self.batch_size * self.mega_batch_mult
        out: list[list[int]] = []
        for start in range(0, len(perm), mega):
            chunk = perm[start : start + mega]
            # stable sort, longest first, so ties keep the random order
            chunk = chunk[torch.sort(self.lengths[chunk], descending=True, stable=True).indices]
            out.extend(chunk[i : i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size))
        if self.drop_last:
            out = [b for b in out if len(b) == self.batch_size]
        order = torch.randperm(len(out), generator=gen).tolist()
        return [out[i] for i in order]

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch
        self.epoch += 1
        yield from self.batches(epoch)
