"""Checkpoints written off the training thread (``train.async_save``).

The training thread takes a CPU snapshot of what the checkpoint holds (every tensor copied: training goes on
changing the live ones), then a background thread writes it exactly as the synchronous path does
(``checkpoint.save_and_prune``: temporary directory, checksums, fsync, atomic rename, ``best.json``, keep-last-K).
One write is in flight at a time: the next save waits for it. A failed write is kept and raised on the training
thread — at the next step check (``poll``), the next save or the end of the fit (``wait``) — as a CheckpointError
naming the checkpoint. A crash mid-write leaves only the temporary ``.tmp_step_*`` directory, which no reader takes
for a checkpoint (``step_dirs``) and the next run removes (``rundir.clean_stale``).
"""
from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from mm_ptft.train.checkpoint import CheckpointError, Weights


def _off_cpu(obj: Any, found: dict[int, torch.Tensor]) -> None:
    if isinstance(obj, torch.Tensor):
        if obj.device.type != "cpu":
            found[id(obj)] = obj
    elif isinstance(obj, dict):
        for v in obj.values():
            _off_cpu(v, found)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _off_cpu(v, found)


def snapshot(weights: Weights, state: dict[str, Any]) -> tuple[Weights, dict[str, Any]]:
    """CPU copies of the weights and the trainer state that share nothing with the live ones. A deep copy: objects
    (and CPU tensor storages) referenced twice stay shared, so the files written are byte-identical to the
    synchronous path's; device tensors are copied to the CPU once each (no second device copy)."""
    found: dict[int, torch.Tensor] = {}
    _off_cpu((weights.tensors, state), found)
    memo: dict[int, Any] = {key: t.detach().to("cpu", copy=True) for key, t in found.items()}
    tensors, state = copy.deepcopy((weights.tensors, state), memo)
    return Weights(tensors, weights.metadata), state


class BackgroundWriter:
    """Runs one checkpoint write at a time on a thread of its own; its error is raised on the caller's thread. The
    thread is not a daemon: an interpreter that exits without ``wait`` still finishes the write in flight."""

    def __init__(self) -> None:
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None
        self._path: Optional[Path] = None

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

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
