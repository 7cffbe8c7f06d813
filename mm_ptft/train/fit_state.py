"""What one ``Trainer.fit`` builds and advances, in one object created at its start (a second ``fit`` gets a
fresh one: nothing leaks from the first), and its round trip through a checkpoint's trainer state."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from mm_ptft.train import rng as R
from mm_ptft.train import step as S
from mm_ptft.train.logging import RunLogger
from mm_ptft.train.phases import PhaseClock
from mm_ptft.train.row_grads import RowGrads


@dataclass
class FitState:
    """The optimizer and schedule, the step counters, the best metric and the current log window of one fit."""

    total: int  # optimizer steps the run trains to
    eval_every: int
    opt: torch.optim.Optimizer
    sched: Any
    scaler: torch.amp.GradScaler
    l1_params: list[torch.Tensor]  # optim.l1: the one loss term the trainer adds
    faults: S.FaultCounter
    found_inf: torch.Tensor  # the last step's NaN/Inf flag (1.0: skipped), on the device
    undo: Optional[S.Undo] = None  # non-fused optimizers: skip by rolling back (train.undo_skips)
    # sparse-row embedding gradients of the training loop (train.sparse_embedding_grads; set when training starts)
    row_grads: RowGrads = field(default_factory=lambda: RowGrads([]))
    step: int = 0
    epoch: int = 0
    batches_done: int = 0  # in the current epoch
    start_step: int = 0  # the step this fit started (or resumed) at
    best_value: Optional[float] = None
    best_step: int = -1
    last_eval_step: int = -1
    last_eval_checkpoint: Optional[Path] = None  # the checkpoint written with the last evaluation (main rank)
    last_results: dict[str, float] = field(default_factory=dict)
    last_artifacts: dict[str, Any] = field(default_factory=dict)  # the last evaluation's non-scalar results
    artifacts_written: bool = False  # last_artifacts are in the run directory
    counts_changed: bool = False  # skip counters changed since the last train log
    config_changes: list[tuple[str, Any, Any]] = field(default_factory=list)  # (key, old, new) on a resume
    already_finished: Optional[dict[str, float]] = None  # a finished run resumed: its final metrics
    config_text: str = ""
    logger: Optional[RunLogger] = None  # from the end of setup (resume messages go to the console)
    window: S.Window = field(default_factory=S.Window)
    grad_norm: Optional[torch.Tensor] = None  # the last optimizer step's (a device tensor)
    clock: PhaseClock = field(default_factory=PhaseClock)  # start-up / train / eval / finish split
    report: Any = None  # report.md being rendered in the background (Trainer.join_report)
    saved: Optional[tuple[Path, int, tuple[tuple[int, int], ...]]] = None  # the last checkpoint this fit wrote,
    # its step and the weights' fingerprint then (Trainer.weights_checkpoint)

    @property
    def bad_steps_total(self) -> int:
        """Non-finite steps skipped so far (counted on the device: reading it syncs)."""
        return self.faults.read_total()


def fit_attribute(name: str, doc: str) -> property:
    """A read-only ``Trainer`` attribute that is the current fit's ``FitState.<name>`` (callbacks read them)."""

    def get(trainer: Any) -> Any:
        if trainer.state is None:
            raise AttributeError(f"Trainer.{name} exists once fit() has started")
        return getattr(trainer.state, name)

    return property(get, doc=doc)


def stateful_callbacks(callbacks: Sequence[Any]) -> dict[str, Any]:
    """Callbacks with ``state_dict``/``load_state_dict``, keyed by class name (``Name.1`` for a second one)."""
    keyed: dict[str, Any] = {}
    for cb in callbacks:
        if callable(getattr(cb, "state_dict", None)) and callable(getattr(cb, "load_state_dict", None)):
            name = type(cb).__name__
            keyed[name if name not in keyed else f"{name}.{sum(k.split('.')[0] == name for k in keyed)}"] = cb
    return keyed


def checkpoint_state(st: FitState, loader: Any, epoch_batches: Optional[int], optimizer: dict[str, Any],
                     rngs: list[Any], callbacks: Sequence[Any], counters: dict[str, int],
                     num_workers: int) -> dict[str, Any]:
    """The trainer state a checkpoint stores (beside the weights): at an epoch's end, the next epoch's start."""
    at_epoch_end = epoch_batches is not None and st.batches_done >= epoch_batches
    return {"step": st.step, "epoch": st.epoch + int(at_epoch_end),
            "loader": None if at_epoch_end else loader.state_dict(),
            "optimizer": optimizer, "scheduler": st.sched.state_dict(),
            "scaler": st.scaler.state_dict(), "rng": rngs[0], "rng_per_rank": rngs,
            "best": {"metric": st.best_value, "step": st.best_step},
            "callbacks": {key: cb.state_dict() for key, cb in stateful_callbacks(callbacks).items()},
            "batches_done": 0 if at_epoch_end else st.batches_done,
            "counters": counters, "bad_steps_total": st.bad_steps_total, "num_workers": num_workers,
            "threads": torch.get_num_threads()}  # the intra-op count it computed with: a resume keeps it


def restore(st: FitState, state: dict[str, Any], callbacks: Sequence[Any], rank: int, seed: int,
            device: torch.device) -> None:
    """Put a checkpoint's trainer state back into ``st`` (the optimizer's and the loader's are the caller's: FSDP
    loads the former its own way), the random streams and the callbacks' states included."""
    st.step, st.epoch = state["step"], state["epoch"]
    st.sched.load_state_dict(state["scheduler"])
    st.scaler.load_state_dict(state["scaler"])
    # each rank continues its own random stream (dropout, augmentation); more ranks than the run that wrote it:
    R.restore_rank(state.get("rng_per_rank") or [state["rng"]], rank, seed + rank + 1_000_003 * st.step)
    st.best_value, st.best_step = state["best"]["metric"], state["best"]["step"]
    for key, cb in stateful_callbacks(callbacks).items():  # a callback added on resume starts fresh
        if key in state.get("callbacks", {}):
            cb.load_state_dict(state["callbacks"][key])
    st.faults = S.FaultCounter(device, state["bad_steps_total"])
    st.batches_done = state["batches_done"]
