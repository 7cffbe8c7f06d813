"""The run's data loaders: ``StatefulDataLoader`` construction (batch sampler, worker count, private generator)
and per-epoch reseeding, and moving a batch onto the device."""
from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch.utils.data import Dataset, IterableDataset

from mm_ptft.config import ConfigError, TrainConfig
from mm_ptft.contracts import on_device
from mm_ptft.env import limit_worker_threads
from mm_ptft.train.distributed import DistInfo
from mm_ptft.train.preempt import worker_init
from mm_ptft.train.samplers import GroupedBatchSampler


def to_device(batch: Any, device: torch.device) -> Any:
    """Move tensors (also inside dicts/lists, e.g. detection targets) to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def device_batch(batch: Any, device: torch.device, collate: Any) -> Any:
    """``to_device``, then the collate's device stage (``contracts.on_device``: e.g. images decoded there)."""
    return on_device(collate, to_device(batch, device), device)


def batch_size(tc: TrainConfig, train: bool) -> int:
    return tc.batch_size if train else (tc.eval_batch_size or tc.batch_size)


def num_workers(tc: TrainConfig, measured: Optional[int], cpus: int) -> int:
    """``train.num_workers``, capped at the ``cpus`` this process may use (more only adds contention); ``auto``:
    the ``measured`` count (0 until it is measured)."""
    if tc.num_workers == "auto":
        return measured or 0
    if tc.num_workers > cpus:
        warnings.warn(f"train.num_workers={tc.num_workers} > the {cpus} CPUs this process may use: "
                      f"using {cpus}", stacklevel=3)
    return min(tc.num_workers, cpus)


def init_worker(signals: Optional[Callable[[int], None]], worker_id: int) -> None:
    """A loader worker's start: its thread pools at 1 thread (``env.limit_worker_threads``), then ``signals`` (the
    preemption signals ignored: ``preempt.worker_init``; None when preemption is off)."""
    limit_worker_threads()
    if signals is not None:
        signals(worker_id)


def build_loader(data: Dataset, lengths: Optional[Sequence[int]], train: bool, *, tc: TrainConfig, seed: int,
                 dist: DistInfo, device: torch.device, collate: Callable[[list[Any]], Any], workers: int):
    """A ``StatefulDataLoader`` over ``data``: a stream as it comes (it splits, shuffles and buckets itself:
    ``data.stream``), a map-style split through ``GroupedBatchSampler`` (or the data's own ``batch_sampler``)."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    bs = batch_size(tc, train)
    # A private generator: iterating a loader must not draw from the global RNG (dropout etc.),
    # or a resumed run, which starts a fresh iterator mid-epoch, would diverge.
    gen = torch.Generator().manual_seed(seed + 7919 * dist.rank + (0 if train else 1))
    common = dict(collate_fn=collate, num_workers=workers, pin_memory=device.type == "cuda",
                  generator=gen, persistent_workers=tc.persistent_workers and workers > 0,
                  prefetch_factor=tc.prefetch_factor if workers > 0 else None,
                  worker_init_fn=functools.partial(init_worker, worker_init(tc.preempt_signals)) if workers else None)
    if isinstance(data, IterableDataset):
        return StatefulDataLoader(data, batch_size=bs, **common)
    sampler = GroupedBatchSampler(len(data), bs, lengths if tc.group_by_length else None, shuffle=train,
                                  seed=seed, rank=dist.rank, world=dist.world, even=train)
    if train and hasattr(data, "batch_sampler"):  # data that orders its own batches (multitask round-robin)
        sampler = data.batch_sampler(sampler)
    return StatefulDataLoader(data, batch_sampler=sampler, **common)


def epoch_batches(loader: Any) -> Optional[int]:
    """Batches in one epoch of a loader; None for a stream (it runs to ``train.max_steps``)."""
    return None if isinstance(loader.dataset, IterableDataset) else len(loader)


def set_epoch(loader: Any, epoch: int, seed: int, rank: int) -> None:
    """Point the sampler and the loader's generator (worker seeds) at ``epoch``: same draws after a resume."""
    if epoch_batches(loader) is not None:
        loader.batch_sampler.set_epoch(epoch)
    loader.generator.manual_seed(seed + 7919 * rank + 2 * (epoch + 1))


def batch_rows(batch: Mapping[str, Any]) -> int:
    """Rows in a batch (a mixed batch {source: sub-batch} from ``MixtureDataset``: all of them)."""
    first = next(iter(batch.values()))
    if isinstance(first, Mapping):
        return sum(batch_rows(sub) for sub in batch.values())
    return len(first)


def schedule_length(loader: Any, tc: TrainConfig) -> tuple[int, int]:
    """(the optimizer steps a run trains to, steps per epoch: ``train.max_steps`` for a stream)."""
    if loader is None:
        raise ConfigError("no training data: set data.train_file")
    if epoch_batches(loader) is None:
        if tc.max_steps <= 0:
            raise ConfigError("train.max_steps is not set, but the training data is a stream (no length): set "
                              "train.max_steps to the number of optimizer steps to train")
        per_epoch = tc.max_steps  # evaluate and checkpoint at the end unless eval_every/save_every say more
    else:
        per_epoch = math.ceil(len(loader) / tc.grad_accum_steps)
        if per_epoch == 0:
            raise ConfigError(f"train.batch_size={tc.batch_size} leaves no batch from {len(loader.dataset)} samples")
    return (tc.max_steps if tc.max_steps > 0 else per_epoch * tc.epochs), per_epoch
