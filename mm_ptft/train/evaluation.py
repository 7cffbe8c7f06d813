"""One pass over the eval split: the task's metrics object fed batch by batch, the mean eval ``loss``, the skips
a stream counts on the way, and (FSDP, whose forward is a collective) filler forwards on ranks with fewer
batches."""
from __future__ import annotations

from typing import Any, Callable, ContextManager, Iterator, NamedTuple, Optional

import torch
from torch import nn
from torch.utils.data import IterableDataset

from mm_ptft.config import ConfigError
from mm_ptft.contracts import Task
from mm_ptft.train import compiling
from mm_ptft.train import distributed as D
from mm_ptft.train.loaders import device_batch
from mm_ptft.types import take_counts


class Evaluation(NamedTuple):
    """The metrics (synced across ranks), the skips a stream counted, non-scalar results (a confusion matrix)."""

    results: dict[str, float]
    counts: dict[str, int]
    artifacts: dict[str, Any]


@torch.no_grad()
def run_evaluation(model: nn.Module, task: Task, loader: Any, collate: Any, device: torch.device,
                   autocast: Callable[[], ContextManager[Any]], cudagraphs: bool, fsdp: bool) -> Evaluation:
    """Evaluate ``model`` (the task, wrapped as it runs) on ``loader``'s batches; leaves it in train mode."""
    model.eval()
    metrics = task.build_metrics().to(device)
    loss_sum = torch.zeros(2, device=device, dtype=torch.float64)
    first, eval_counts = None, {}
    for batch in _eval_batches(loader, fsdp):
        if batch is None:  # FSDP: this rank is out of batches while another still runs forwards
            with autocast():
                model(device_batch(_filler(loader, collate, first), device, collate))  # output discarded
            continue
        take_counts(batch, eval_counts)  # the workers' skips (off the batch kept for filler forwards)
        first = first or batch
        batch = device_batch(batch, device, collate)
        take_counts(batch, eval_counts)  # the device stage's
        with autocast():
            out = _eval_forward(model, batch, cudagraphs)
        metrics.update(out, batch)
        if "loss" in out:
            n = len(next(iter(batch.values())))
            loss_sum += torch.stack([out["loss"].detach().double() * n, torch.tensor(n, device=device)])
    model.train()
    results = metrics.compute()
    artifacts = metrics.artifacts() if hasattr(metrics, "artifacts") else {}  # an optional part of the protocol
    total = D.all_reduce_mean(loss_sum)
    if total[1] > 0:
        results["loss"] = float(total[0] / total[1])
    return Evaluation(results, eval_counts, artifacts)


def _eval_forward(model: nn.Module, batch: Any, cudagraphs: bool) -> Any:
    """An evaluation forward; under CUDA graphs its outputs are copied out (metrics may keep them past the next
    replay, which overwrites graph memory)."""
    if not cudagraphs:
        return model(batch)
    torch.compiler.cudagraph_mark_step_begin()
    return compiling.clone_outputs(model(batch))


def _eval_batches(loader: Any, fsdp: bool) -> Iterator[Optional[Any]]:
    """The eval batches. Under FSDP (its forward is a collective) a rank with fewer batches then gets None (a
    filler forward) until every rank is done: counted up front for a map-style split, agreed batch by batch
    for a stream (whose length no rank knows)."""
    if not fsdp:
        yield from loader
        return
    if not isinstance(loader.dataset, IterableDataset):
        n = len(loader)
        extra = D.all_reduce_max(n) - n  # before any forward: every rank calls it at the same point
        yield from loader
        yield from [None] * extra
        return
    batches = iter(loader)
    while True:
        batch = next(batches, None)
        if not D.all_reduce_max(int(batch is not None)):
            return
        yield batch


def _filler(loader: Any, collate: Any, seen: Optional[Any]) -> Any:
    """A batch for a filler forward: one this rank has seen, else the split's first sample."""
    if seen is not None:
        return seen
    if isinstance(loader.dataset, IterableDataset):
        raise ConfigError("the eval stream gave this rank no batch: use fewer ranks or train.num_workers, or more "
                          "eval data")
    return collate([loader.dataset[0]])
