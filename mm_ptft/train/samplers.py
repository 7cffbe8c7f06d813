"""Batch samplers. Deterministic given (seed, epoch), so a resumed loader fast-forwards exactly."""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

import torch
from torch.utils.data import Sampler


class GroupedBatchSampler(Sampler[list[int]]):
    """Random batches; with ``lengths``, batches of similar length (HF-style randomised mega-batches:
    shuffle, cut into mega-batches of ``mega`` batches, sort each by length, shuffle batch order, then swap the
    batch holding the longest sample to the front, so that a batch too big for the device fails at step 1).
    Under DDP the batches are GLOBAL batches of ``world * batch_size`` samples, exactly those a single
    process with that batch size would draw, and each rank takes its contiguous slice of each one, so
    ``world`` ranks × B train like one process × world·B. With ``even`` (training) all ranks get the
    same number of batches (a last global batch too small to give each rank a sample is dropped);
    without it (evaluation) every sample is seen exactly once."""

    def __init__(self, n: int, batch_size: int, lengths: Optional[Sequence[int]] = None, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False, mega: int = 50, rank: int = 0, world: int = 1,
                 even: bool = True) -> None:
        if lengths is not None and len(lengths) != n:
            raise ValueError(f"lengths has {len(lengths)} entries for {n} samples")
        self.n, self.batch_size, self.lengths, self.shuffle = n, batch_size, lengths, shuffle
        self.seed, self.drop_last, self.mega, self.rank, self.world = seed, drop_last, mega, rank, world
        self.even = even  # training: every rank gets the same number of batches (DDP needs it)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _all_batches(self) -> list[list[int]]:
        """The global batches (``world * batch_size`` samples each), identical on every rank."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist() if self.shuffle else list(range(self.n))
        size = self.batch_size * self.world
        if self.lengths is not None:
            span = self.mega * size
            order = [i for s in range(0, self.n, span)
                     for i in sorted(order[s:s + span], key=lambda j: -self.lengths[j])]
        batches = [order[s:s + size] for s in range(0, self.n, size)]
        if self.drop_last and batches and len(batches[-1]) < size:
            batches.pop()
        if self.shuffle and self.lengths is not None and batches:
            perm = torch.randperm(len(batches), generator=g).tolist()
            batches = [batches[i] for i in perm]
            longest = max(range(len(batches)), key=lambda b: max(self.lengths[j] for j in batches[b]))
            batches[0], batches[longest] = batches[longest], batches[0]  # as HF's: an OOM shows at the first step
        if self.even:  # after the shuffle, so the other batches keep the order one process would see
            batches = [b for b in batches if len(b) >= self.world]
        return batches

    def _rank_slice(self, batch: list[int]) -> list[int]:
        """This rank's contiguous part of a global batch; a short last batch is split evenly in training."""
        if len(batch) == self.batch_size * self.world or not self.even:
            return batch[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        base, extra = divmod(len(batch), self.world)
        start = self.rank * base + min(self.rank, extra)
        return batch[start:start + base + (self.rank < extra)]

    def __iter__(self) -> Iterator[list[int]]:
        parts = (self._rank_slice(b) for b in self._all_batches())
        return iter([p for p in parts if p])

    def __len__(self) -> int:
        size = self.batch_size * self.world
        full, rest = divmod(self.n, size)
        if rest and not self.drop_last and (rest >= self.world if self.even else rest > self.rank * self.batch_size):
            full += 1
        return full
