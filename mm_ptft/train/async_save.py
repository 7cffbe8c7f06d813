"""Checkpoints written off the training thread (``train.async_save``).

A checkpoint is a CPU snapshot of what it holds (every tensor copied: training goes on changing the live ones), which
a background thread writes exactly as the synchronous path does (``checkpoint.save_and_prune``: temporary directory,
checksums, fsync, atomic rename, ``best.json``, keep-last-K). The snapshot is taken in two parts. The tensors only the
optimizer's step changes (its parameters and their state: nearly all of the bytes) are copied by the background
thread, beside the next step's forward and backward passes, which read them but do not change them; the training
thread waits for those copies only at that step's optimizer step (``fence``). Everything else (buffers, which a
forward may change, such as BatchNorm's running statistics; frozen weights; callback and loader state) is copied on
the training thread at once. One write is in flight at a time: the next save waits for it. A failed write is kept and raised on the training
thread — at the next step check (``poll``), the next save or the end of the fit (``wait``) — as a CheckpointError
naming the checkpoint. A crash mid-write leaves only the temporary ``.tmp_step_*`` directory, which no reader takes
for a checkpoint (``step_dirs``) and the next run removes (``rundir.clean_stale``).
"""
from __future__ import annotations

import copy
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from mm_ptft.train.checkpoint import CheckpointError, Weights


def _tensors(obj: Any, found: dict[int, torch.Tensor]) -> None:
    """Every tensor in nested dicts, lists and tuples, by ``id``."""
    if isinstance(obj, torch.Tensor):
        found[id(obj)] = obj
    elif isinstance(obj, dict):
        for v in obj.values():
            _tensors(v, found)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _tensors(v, found)


Pending = list[tuple[torch.Tensor, torch.Tensor]]  # (live tensor, its snapshot buffer, still to fill)


def optimizer_owned(opt: torch.optim.Optimizer) -> frozenset[int]:
    """The storages (``data_ptr``) only ``opt``'s step changes: the parameters it steps and their state tensors."""
    ptrs = {p.data_ptr() for group in opt.param_groups for p in group["params"]}
    ptrs.update(t.data_ptr() for per_param in opt.state.values() for t in per_param.values()
                if isinstance(t, torch.Tensor))
    return frozenset(ptrs)


def _whole_storage(t: torch.Tensor) -> bool:
    """A contiguous tensor that is its entire storage: an empty buffer of its shape saves to the same bytes."""
    return t.is_contiguous() and t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.numel() * t.element_size()


def snapshot(weights: Weights, state: dict[str, Any], deferred: frozenset[int] = frozenset()
             ) -> tuple[Weights, dict[str, Any], Pending]:
    """Copies of the weights and the trainer state that share nothing with the live ones, and the copies still to make:
    a tensor whose storage is in ``deferred`` (``optimizer_owned``; a whole storage no other tensor here shares) gets
    an empty CPU buffer now, filled later (``fill``); every other tensor is copied now. A deep copy: objects (and CPU
    tensor storages) referenced twice stay shared, so the files written are byte-identical to the synchronous path's;
    device tensors are copied to the CPU once each (no second device copy)."""
    found: dict[int, torch.Tensor] = {}
    _tensors((weights.tensors, state), found)
    sharing = Counter(t.data_ptr() for t in found.values())
    memo: dict[int, Any] = {}
    pending: Pending = []
    for key, t in found.items():
        if t.data_ptr() in deferred and sharing[t.data_ptr()] == 1 and _whole_storage(t):
            memo[key] = torch.empty(t.shape, dtype=t.dtype, device="cpu")  # pages touched by the filling thread
            pending.append((t, memo[key]))
        elif t.device.type != "cpu":
            memo[key] = t.detach().to("cpu", copy=True)
    tensors, state = copy.deepcopy((weights.tensors, state), memo)
    return Weights(tensors, weights.metadata), state, pending


def fill(pending: Pending) -> None:
    """Copy each live tensor into its snapshot buffer."""
    with torch.no_grad():
        for live, buffer in pending:
            buffer.copy_(live)


class BackgroundWriter:
    """Runs one checkpoint write at a time on a thread of its own; its error is raised on the caller's thread. The
    thread is not a daemon: an interpreter that exits without ``wait`` still finishes the write in flight."""

    def __init__(self) -> None:
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None
        self._path: Optional[Path] = None
        self._filled = threading.Event()
        self._filled.set()

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, path: Path, job: Callable[[], Any], pending: Pending = ()) -> None:
        """Fill the snapshot's ``pending`` buffers, then run ``job`` (writing checkpoint ``path``), once the write in
        flight is done (its error raised first)."""
        self.wait()
        self._path = path
        self._filled.clear()
        self._thread = threading.Thread(target=self._run, args=(job, pending), name=f"mm_ptft-save-{path.name}")
        self._thread.start()

    def _run(self, job: Callable[[], Any], pending: Pending) -> None:
        try:
            try:
                fill(pending)
            finally:
                self._filled.set()  # a failed copy is raised at the next poll/wait, not waited on forever
            job()
        except BaseException as err:  # kept for the training thread: never lost with this thread
            self._error = err

    def fence(self) -> None:
        """Block until the snapshot in flight holds its copies of the live tensors (call before changing them: the
        optimizer step); the write itself goes on."""
        self._filled.wait()

    def poll(self) -> None:
        """Raise the error of a write that has ended (cheap: no wait while one is in flight)."""
        if self._thread is not None and not self._thread.is_alive():
            self.wait()

    def wait(self) -> None:
        """Block until the write in flight is on disk; raise a CheckpointError naming it if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        err, self._error = self._error, None
        if err is not None:
            detail = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
            raise CheckpointError(f"background write of checkpoint {self._path} failed: {detail}") from err
