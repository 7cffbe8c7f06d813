"""Multi-task data: how often each task's data is drawn (proportional, temperature, round-robin) and the
datasets and batch order that realise it.

Items are ``(task, item)`` pairs, as from ``MixtureDataset`` (which draws the proportional and temperature
mixtures: every batch mixes tasks); ``MixtureCollator`` turns a batch of them into ``{task: sub-batch}``,
the mixed-batch mechanism of joint pretraining. Round-robin instead gives whole batches of one task, the
tasks taking turns (``RoundRobinDataset.batch_sampler``).
"""
from __future__ import annotations

import bisect
import copy
import itertools
from typing import Any, Iterator, Mapping

from torch.utils.data import Dataset, Sampler

SAMPLING = ("proportional", "temperature", "round_robin")


def sampling_probs(sizes: Mapping[str, int], mode: str, temperature: float = 1.0) -> dict[str, float]:
    """Each task's share of the training samples: p_i ∝ n_i (``proportional``), p_i ∝ n_i^(1/T)
    (``temperature``: T=1 is proportional, large T tends to uniform), p_i = 1/K (``round_robin``)."""
    if mode not in SAMPLING:
        raise ValueError(f"data.sampling={mode!r}: choose one of {list(SAMPLING)}")
    if temperature <= 0:
        raise ValueError(f"data.temperature={temperature}: must be > 0")
    empty = sorted(n for n, k in sizes.items() if k <= 0)
    if empty or not sizes:
        raise ValueError(f"tasks {empty or '(none)'}: no training samples; each task needs training data")
    power = {"proportional": 1.0, "temperature": 1.0 / temperature, "round_robin": 0.0}[mode]
    raw = {n: float(k) ** power for n, k in sorted(sizes.items())}
    total = sum(raw.values())
    return {n: v / total for n, v in raw.items()}


class TaskDataset(Dataset):
    """Several tasks' datasets one after another (tasks in sorted order): index → ``(task, item)``."""

    def __init__(self, parts: Mapping[str, Dataset]) -> None:
        self.names = sorted(parts)
        self.parts = {n: parts[n] for n in self.names}
        self.offsets = list(itertools.accumulate((len(self.parts[n]) for n in self.names), initial=0))  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, i: int) -> tuple[str, Any]:
        k = bisect.bisect_right(self.offsets, i) - 1
        return self.names[k], self.parts[self.names[k]][i - self.offsets[k]]


class RoundRobinDataset(TaskDataset):
    """Training data whose batches each hold one task, the tasks taking turns in sorted order. An epoch has
    ``size`` samples' worth of batches (default: the sum of the tasks' sizes), as many per task (a small task
    is repeated, a large one subsampled)."""

    def __init__(self, parts: Mapping[str, Dataset], size: int = 0) -> None:
        super().__init__(parts)
        self.size = size or len(self)

    def batch_sampler(self, template: Any) -> "RoundRobinBatchSampler":
        """The trainer's hook: its own batch sampler in, the round-robin order over it out."""
        return RoundRobinBatchSampler(self, template)


class RoundRobinBatchSampler(Sampler[list[int]]):
    """Batches of one task at a time, in turn. Each task's batches come from a copy of the trainer's batch
    sampler (``template``: batch size, seed, shuffling by (seed, epoch), the DDP split into ranks) over that
    task's samples, so the order is a function of the epoch and a resumed loader replays it exactly."""

    def __init__(self, data: RoundRobinDataset, template: Any) -> None:
        self.data, self.per_task, self.epoch = data, [], 0
        for k, name in enumerate(data.names):
            sub = copy.copy(template)
            sub.n, sub.lengths, sub.seed = len(data.parts[name]), None, template.seed + 1_000 * (k + 1)
            if len(sub) == 0:
                raise ValueError(f"tasks.{name}: {sub.n} training samples make no batch of "
                                 f"train.batch_size={template.batch_size} on {template.world} process(es)")
            self.per_task.append(sub)
        per_cycle = template.batch_size * template.world * len(data.names)
        self.cycles = max(1, -(-data.size // per_cycle))  # batches per task per epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _task_batches(self, k: int) -> list[list[int]]:
        """Task ``k``'s ``cycles`` batches this epoch (dataset indices), fresh shuffles when it runs out."""
        sub, out = self.per_task[k], []
        reps = -(-self.cycles // len(sub))
        for r in range(reps):
            sub.set_epoch(self.epoch * reps + r)
            out += list(sub)
        off = self.data.offsets[k]
        return [[off + i for i in b] for b in out[:self.cycles]]

    def __iter__(self) -> Iterator[list[int]]:
        per_task = [self._task_batches(k) for k in range(len(self.per_task))]
        return iter([batches[c] for c in range(self.cycles) for batches in per_task])

    def __len__(self) -> int:
        return self.cycles * len(self.per_task)
