"""Checkpoints written off the training thread (``train.async_save``).

The training thread takes a CPU snapshot of what the checkpoint holds (every tensor copied: training goes on
changing the live ones), into the previous snapshot's buffers once its write is done: a run's checkpoints copy into
the same pages, held for the run, instead of faulting in fresh ones each time, which was most of the stall
(``benchmarks/snapshot_stall.py``). A background thread then writes it exactly as the synchronous path does
(``checkpoint.save_and_prune``: temporary directory, checksums, fsync, atomic rename, ``best.json``, keep-last-K).
One write is in flight at a time: the next save waits for it. A failed write is kept and raised on the training
thread — at the next step check (``poll``), the next save or the end of the fit (``wait``) — as a CheckpointError
naming the checkpoint. A crash mid-write leaves only the temporary ``.tmp_step_*`` directory, which no reader takes
for a checkpoint (``step_dirs``) and the next run removes (``rundir.clean_stale``).
"""
from __future__ import annotations

import copy
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from mm_ptft.train.checkpoint import CheckpointError, Weights


def _tensors(obj: Any, found: dict[int, torch.Tensor]) -> None:
    """Every tensor in nested dicts, lists and tuples, by ``id``, in the order met."""
    if isinstance(obj, torch.Tensor):
        found[id(obj)] = obj
    elif isinstance(obj, dict):
        for v in obj.values():
            _tensors(v, found)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _tensors(v, found)


def _whole(t: torch.Tensor, sharing: Counter) -> bool:
    """A tensor a plain buffer of its shape stands for in the files: contiguous, its entire storage, which no other
    tensor here shares, and no autograd flag (``torch.save`` would record it)."""
    return (sharing[t.data_ptr()] == 1 and not t.requires_grad and t.is_contiguous() and t.storage_offset() == 0
            and t.untyped_storage().nbytes() == t.numel() * t.element_size())


def snapshot(weights: Weights, state: dict[str, Any], reuse: Sequence[torch.Tensor] = ()
             ) -> tuple[Weights, dict[str, Any], list[torch.Tensor]]:
    """CPU copies of the weights and the trainer state that share nothing with the live ones, and the buffers it
    filled. A tensor that is its whole storage (nearly all the bytes: weights, moments) is copied into the buffer at
    its position in ``reuse`` (the previous snapshot's, once its write is done) where shape and dtype match, else into
    a new one: a run's checkpoints reuse the same pages instead of faulting in fresh ones each time. The rest is a
    deep copy: objects (and CPU tensor storages) referenced twice stay shared, so the files written are
    byte-identical to the synchronous path's; device tensors are copied to the CPU once each."""
    found: dict[int, torch.Tensor] = {}
    _tensors((weights.tensors, state), found)
    sharing = Counter(t.data_ptr() for t in found.values())
    memo: dict[int, Any] = {}
    buffers: list[torch.Tensor] = []
    with torch.no_grad():
        for key, t in found.items():
            if _whole(t, sharing):
                old = reuse[len(buffers)] if len(buffers) < len(reuse) else None
                fits = old is not None and old.shape == t.shape and old.dtype == t.dtype
                buffers.append((old if fits else torch.empty(t.shape, dtype=t.dtype, device="cpu")).copy_(t))
                memo[key] = buffers[-1]
            elif t.device.type != "cpu":
                memo[key] = t.detach().to("cpu", copy=True)
    tensors, state = copy.deepcopy((weights.tensors, state), memo)
    return Weights(tensors, weights.metadata), state, buffers


class BackgroundWriter:
    """Runs one checkpoint write at a time on a thread of its own; its error is raised on the caller's thread. The
    thread is not a daemon: an interpreter that exits without ``wait`` still finishes the write in flight."""

    def __init__(self) -> None:
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None
        self._path: Optional[Path] = None
        self._buffers: list[torch.Tensor] = []  # the last snapshot's: free again once its write is done

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def snapshot(self, weights: Weights, state: dict[str, Any]) -> tuple[Weights, dict[str, Any]]:
        """``snapshot`` into the buffers of the previous one, once its write is on disk (its error raised first)."""
        self.wait()
        weights, state, self._buffers = snapshot(weights, state, self._buffers)
        return weights, state

    def submit(self, path: Path, job: Callable[[], Any]) -> None:
        """Start ``job`` (writing checkpoint ``path``) once the write in flight is done (its error raised first)."""
        self.wait()
        self._path = path
        self._thread = threading.Thread(target=self._run, args=(job,), name=f"mm_ptft-save-{path.name}")
        self._thread.start()

    def _run(self, job: Callable[[], Any]) -> None:
        try:
            job()
        except BaseException as err:  # kept for the training thread: never lost with this thread
            self._error = err

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
