"""Batch samplers. Deterministic given (seed, epoch), so a resumed loader fast-forwards exactly."""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

import torch
from torch.utils.data import Sampler


class GroupedBatchSampler(Sampler[list[int]]):
    """Random batches; with ``lengths``, batches of similar length (HF-style randomised mega-batches:
    shuffle, cut into mega-batches of ``mega`` batches, sort each by length, shuffle batch order).
    Under DDP each rank takes every ``world``-th batch; with ``even`` (training) all ranks get the
    same number of batches, without it (evaluation) every sample is seen exactly once."""

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
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist() if self.shuffle else list(range(self.n))
        if self.lengths is not None:
            span = self.mega * self.batch_size
            order = [i for s in range(0, self.n, span)
                     for i in sorted(order[s:s + span], key=lambda j: -self.lengths[j])]
        batches = [order[s:s + self.batch_size] for s in range(0, self.n, self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.shuffle and self.lengths is not None:
            perm = torch.randperm(len(batches), generator=g).tolist()
            batches = [batches[i] for i in perm]
        usable = len(batches) - len(batches) % self.world if self.even else len(batches)
        return batches[self.rank:usable:self.world]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._all_batches())

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        total = full + (1 if rest and not self.drop_last else 0)
        if self.even:
            return total // self.world
        return len(range(self.rank, total, self.world))
