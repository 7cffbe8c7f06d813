"""``train.num_workers: auto``: size the loader from two measured rates, taken before the first step: how many
samples/s ONE loader worker makes (dataset reads + collate of a few real batches, in this process, on one thread
as a worker has) and how many samples/s the training step takes (forward + backward on one of those batches).
The probe leaves no trace: no optimizer step, gradients and buffers (BatchNorm statistics) restored, module
modes restored, and every random stream (torch CPU/CUDA, Python, NumPy) as it was."""
from __future__ import annotations

import contextlib
import copy
import math
import time
from itertools import islice
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import IterableDataset

from mm_ptft.contracts import on_device
from mm_ptft.train import distributed as D
from mm_ptft.train.loaders import batch_rows, to_device
from mm_ptft.train.rng import preserved
from mm_ptft.types import take_counts

#: workers beyond the measured need: rates vary from batch to batch, and a starved step costs more than an idle worker
MARGIN = 1.25
#: below this share of one worker's time per step, loading in the main process costs less than a worker process
MIN_SHARE = 0.05


class LoaderRate(NamedTuple):
    """The two measured rates and the worker count they give."""

    worker_rate: float  # samples/s one loader worker makes
    step_rate: float  # samples/s the training step takes
    workers: int
    cap: int  # the most workers this process may use

    def line(self) -> str:
        return (f"loader: 1 worker makes {self.worker_rate:.0f} samples/s, the step takes {self.step_rate:.0f} "
                f"samples/s -> {self.workers} workers (at most {self.cap})")

    def record(self) -> dict[str, float]:
        """The values logged to metrics.jsonl (kind ``loader``)."""
        return {"worker_samples_per_s": self.worker_rate, "step_samples_per_s": self.step_rate,
                "num_workers": self.workers, "max_workers": self.cap}


def workers_needed(step_rate: float, worker_rate: float, cap: int, margin: float = MARGIN,
                   min_share: float = MIN_SHARE) -> int:
    """ceil(step_rate / worker_rate * margin) workers, at most ``cap``; 0 when one worker would be busy less than
    ``min_share`` of the time (the main process loads that between steps for less than a process costs)."""
    need = step_rate / max(worker_rate, 1e-9)
    if need < min_share:
        return 0
    return max(0, min(cap, math.ceil(need * margin)))


def sample_batches(data: Any, index_batches: Optional[Iterable[Sequence[int]]], batch_size: int,
                   n: int) -> Iterator[list[Any]]:
    """Up to ``n`` batches of samples: ``data[i]`` for the (real sampler's) ``index_batches`` of a map-style
    dataset; for a stream, records of a fresh iterator over a copy (the stream's own resume state is untouched)."""
    if isinstance(data, IterableDataset):
        items = iter(copy.deepcopy(data))
        for _ in range(n):
            batch = list(islice(items, batch_size))
            if not batch:
                return
            yield batch
        return
    for idx in islice(iter(index_batches), n):
        yield [data[i] for i in idx]


def time_data(batches: Iterator[list[Any]], collate: Callable[[list[Any]], Any],
              budget_s: float = 2.0) -> tuple[float, Optional[Any]]:
    """(samples/s one worker makes, the first collated batch): reading + collating ``batches`` on one thread, the
    first one untimed (lazy imports, caches), stopping early once ``budget_s`` is spent."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what a DataLoader worker runs with
    try:
        first = next(batches, None)
        if first is None:
            return math.inf, None
        sample = collate(first)
        n, spent = 0, 0.0
        while spent < budget_s:
            t0 = time.perf_counter()
            items = next(batches, None)
            if items is None:
                break
            collate(items)
            spent, n = spent + time.perf_counter() - t0, n + len(items)
        if n == 0:  # a single batch: time it again
            t0 = time.perf_counter()
            collate(first)
            spent, n = time.perf_counter() - t0, len(first)
        return n / max(spent, 1e-9), sample
    finally:
        torch.set_num_threads(threads)


def time_step(step: Callable[[], int], device: torch.device, passes: int = 2) -> float:
    """Samples/s of ``step`` (one forward + backward, returning its batch size): one untimed warm-up pass
    (compilation, autotuning), then the fastest of ``passes`` timed ones, each synchronised with the device (the
    fastest: a step slowed by other work on the machine would call for too few workers)."""
    step()
    _sync(device)
    best = 0.0
    for _ in range(passes):
        t0 = time.perf_counter()
        n = step()
        _sync(device)
        best = max(best, n / max(time.perf_counter() - t0, 1e-9))
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def no_trace(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Whatever runs inside changes neither ``model`` (gradients, buffers, train/eval modes) nor any random
    stream: torch (CPU and ``device``), Python's ``random`` and NumPy's global state."""
    grads = [(p, p.grad) for p in model.parameters()]
    for p, _ in grads:  # set aside (backward would add to them in place), put back after
        p.grad = None
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    modes = [(m, m.training) for m in model.modules()]
    try:
        with preserved(device):
            yield
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for p, g in grads:
            p.grad = g
        for m, training in modes:
            m.train(training)


def max_workers(cpus: int, local_ranks: int = 1, main_cpus: int = 1) -> int:
    """Workers one process may start: its share of the node's CPUs (``local_ranks`` processes on it, each with
    its own loader) less the ``main_cpus`` the process itself keeps busy (1 driving a GPU; on a CPU device, the
    step's intra-op threads: a worker there would take a core from the step)."""
    return max(cpus // max(local_ranks, 1) - main_cpus, 0)


def measure(model: nn.Module, loader: Any, collate: Any, device: torch.device, autocast: Callable[[], Any],
            batch_size: int, train: bool, cap: int) -> LoaderRate:
    """Samples/s one loader worker makes (a few of ``loader``'s sampler's first batches, read and collated here)
    and samples/s the step takes (forward + backward on the first; forward only for ``train=False``), and the
    workers they call for (at most ``cap``), the same on every rank. Changes nothing: weights, buffers, RNG,
    data order."""
    batches = sample_batches(loader.dataset, loader.batch_sampler, batch_size, 3)
    with no_trace(model, device):
        worker_rate, first = time_data(batches, collate)
        step_rate = 0.0 if first is None else time_step(_probe_step(model, first, collate, device, autocast, train),
                                                        device)
    n = D.all_reduce_max(workers_needed(step_rate, worker_rate, cap))
    return LoaderRate(worker_rate, step_rate, n, cap)


def _probe_step(model: nn.Module, batch: Any, collate: Any, device: torch.device, autocast: Callable[[], Any],
                train: bool) -> Callable[[], int]:
    """The collate's device stage (decoding there: ``data.decode_on=device``) and one forward (+ backward when
    ``train``) on ``batch``, as the loop runs them; returns the batch size."""
    take_counts(batch, {})
    moved = to_device(batch, device)
    model.train(train)

    def step() -> int:
        ready = on_device(collate, moved, device)
        with torch.set_grad_enabled(train), autocast():
            out = model(ready)
        if train:
            out["loss"].backward()
        return batch_rows(ready)
    return step
