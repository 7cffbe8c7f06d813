"""An optimizer step the host never waits for, and the bookkeeping the training loop reads only at log steps.

On an accelerator every ``.item()`` / ``float(t)`` / ``if t:`` waits until the device has finished all the work
queued so far, so a loop that asks a question each step stalls each step. Here the gradient norm stays a device
tensor, the NaN/Inf skip is decided on the device, and non-finite steps are counted on the device; the loop reads
(one sync) only when it logs, evaluates or saves.

The skip on the device uses the fused optimizers' ``found_inf`` input (as ``torch.amp.GradScaler`` does for
optimizers with ``_step_supports_amp_scaling``): the kernel leaves the weights, the moments and the step count as
they were when the flag is set. Fused AdamW/Adam are the default on CPU and CUDA (``optim.fused``). Under FSDP2
the same holds: the fused kernels take DTensor parameters and state with a plain 0-d ``found_inf`` (the gradient
norm is reduced over ranks first, so every rank skips alike; checked on 2 gloo ranks, torch 2.14). Other
optimizers, and steps that would create optimizer state (the first step of a parameter: a fused SGD skipping it
would leave its momentum buffer uninitialised), are decided on the host (one sync for that step); with
``train.undo_skips`` other optimizers whose whole state lives in tensors beside their parameters are instead
stepped and rolled back on the device (``Undo``: a copy per step; it pays only where a sync costs more).
"""
from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from typing import Optional

import torch


def grad_norm(params: list[torch.Tensor], clip: float) -> torch.Tensor:
    """The total gradient norm as a 0-d device tensor, clipping the gradients to ``clip`` first (0: no
    clipping). ``clip_grad_norm_`` scales by ``min(1, clip / norm)`` on the device: no host sync."""
    if clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, clip)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    full = getattr(norm, "full_tensor", None)  # FSDP: a DTensor reduced across ranks
    return full() if callable(full) else norm


def nonfinite(norm: torch.Tensor) -> torch.Tensor:
    """1.0 where the gradient norm is NaN/Inf (a NaN loss gives NaN gradients), else 0.0: a 0-d float32 flag."""
    return (~torch.isfinite(norm)).float()


def skips_on_device(opt: torch.optim.Optimizer) -> bool:
    """Whether ``opt`` can skip this step on a device flag: a fused optimizer whose parameters with a gradient all
    have their state already (a skipped first step would leave a freshly made state uninitialised)."""
    return getattr(opt, "_step_supports_amp_scaling", False) and _has_state(opt)


def _has_state(opt: torch.optim.Optimizer) -> bool:
    """Whether every parameter of ``opt`` with a gradient has its optimizer state, or has stepped once already
    (whatever state it needs exists, maybe none)."""
    stepped = _STEPPED.get(opt, set())
    return all(p in opt.state or id(p) in stepped for p in params_of(opt) if p.grad is not None)


def step_unless(opt: torch.optim.Optimizer, found_inf: torch.Tensor, on_device: bool,
                undo: Optional["Undo"] = None) -> Optional[bool]:
    """Step ``opt`` unless ``found_inf`` (0-d float, 1.0: skip). ``on_device`` (see ``skips_on_device``): the
    fused kernel skips without a sync and this returns None; else with ``undo`` where it can (``Undo.ready``):
    stepped and rolled back on the device, None too; otherwise the host decides and this says whether the
    optimizer stepped."""
    if on_device:
        opt.grad_scale, opt.found_inf = None, found_inf  # the attributes GradScaler hands fused optimizers
        try:
            opt.step()
        finally:
            del opt.grad_scale, opt.found_inf
        return None
    if undo is not None and undo.ready(opt):
        undo.step(opt, found_inf)
        return None
    stepped = not bool(found_inf)  # host sync: this optimizer cannot take the flag
    if stepped:
        counters = _group_counters(opt)
        opt.step()
        _STEPPED.setdefault(opt, set()).update(id(p) for p in params_of(opt) if p.grad is not None)
        _UNDOABLE[opt] = counters == _group_counters(opt) and all(
            isinstance(v, torch.Tensor) and v.device == p.device for p, st in opt.state.items() for v in st.values())
    return stepped


#: per optimizer, the parameters (ids) it has taken a real step for
_STEPPED: "weakref.WeakKeyDictionary[torch.optim.Optimizer, set[int]]" = weakref.WeakKeyDictionary()
#: per optimizer, whether its last host-decided step kept all its state in tensors on its parameters' devices (not
#: e.g. torch's CPU ``step`` counters beside CUDA parameters: restoring those would sync) and left its groups alone
_UNDOABLE: "weakref.WeakKeyDictionary[torch.optim.Optimizer, bool]" = weakref.WeakKeyDictionary()


def _group_counters(opt: torch.optim.Optimizer) -> list[dict[str, object]]:
    """The param groups' values (lr, betas, and counters such as timm Adan's ``step`` and Lamb's CPU tensor one),
    tensors as lists (read on the host: called at host-decided steps only)."""
    return [{k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in g.items() if k != "params"}
            for g in opt.param_groups]


class Undo:
    """A device-side skip for optimizers that cannot take ``found_inf`` (non-fused SGD, RAdam, timm's Lion...):
    copy the parameters and the optimizer state before the step, and put the copy back after it where
    ``found_inf`` is set (``torch.where``: a NaN step's NaNs never mix in). Costs a copy and a select of
    params + state per step and their memory once, against a host sync per step: ``train.undo_skips`` (off by
    default; on CPU a sync costs nothing, see ``benchmarks/step_skip.py`` for the figures)."""

    def __init__(self) -> None:
        self.saved: list[torch.Tensor] = []

    @staticmethod
    def ready(opt: torch.optim.Optimizer) -> bool:
        """A host-decided step showed ``opt`` keeps only tensor state and no group counters, and every parameter
        with a gradient has its state (a rolled-back first step would leave a made state in place)."""
        return _UNDOABLE.get(opt, False) and _has_state(opt)

    @torch.no_grad()
    def step(self, opt: torch.optim.Optimizer, found_inf: torch.Tensor) -> None:
        live = _tensors(opt)
        if [(t.shape, t.dtype, t.device) for t in self.saved] != [(t.shape, t.dtype, t.device) for t in live]:
            self.saved = [torch.empty_like(t) for t in live]
        torch._foreach_copy_(self.saved, live)
        opt.step()
        keep, after = found_inf.bool(), _tensors(opt)  # (); the state tensors an optimizer may have replaced
        if [t.shape for t in after] != [t.shape for t in live]:
            raise RuntimeError(f"{type(opt).__name__} changed the layout of its state in a step, so it cannot be "
                               "rolled back: set train.undo_skips=false")
        for now, before in zip(after, self.saved):
            torch.where(keep, before, now, out=now)


def _tensors(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The parameters and optimizer state tensors of ``opt``, in a fixed order."""
    ps = params_of(opt)
    return [*ps, *(v for p in ps for v in opt.state.get(p, {}).values())]


class FaultCounter:
    """Non-finite steps counted on the device: the current run of consecutive bad steps, the longest run since
    the last read, the number since the last read, and the total. ``read`` syncs once."""

    def __init__(self, device: torch.device, total: int = 0) -> None:
        z = lambda v=0: torch.tensor(v, dtype=torch.int64, device=device)  # noqa: E731
        self.run, self.worst, self.since, self.total = z(), z(), z(), z(total)

    def add(self, found_inf: torch.Tensor) -> None:
        bad = found_inf.to(self.run.dtype)  # (), 0 or 1
        self.run = (self.run + 1) * bad  # reset by a good step
        self.worst = torch.maximum(self.worst, self.run)
        self.since += bad
        self.total += bad

    def read_total(self) -> int:
        return int(self.total)

    def read(self) -> tuple[int, int, int]:
        """(bad steps since the last read, the longest consecutive run in that window (a run going on when the
        window opened counts whole), total): one host sync; opens a new window."""
        since, worst, total = (int(v) for v in torch.stack([self.since, self.worst, self.total]).tolist())
        self.since = torch.zeros_like(self.since)
        self.worst = self.run.clone()
        return since, worst, total


@dataclass
class Window:
    """What a train log covers: the wall time since the previous train log (or the start of training), across
    epoch boundaries, with the evaluations and checkpoints in it (timed apart, so ``train_time_s`` = the wall
    time less ``eval_time_s`` and ``save_time_s``), and the losses summed on the device over its steps."""

    start: float = field(default_factory=lambda: time.perf_counter())
    samples: int = 0
    steps: int = 0
    eval_s: float = 0.0
    save_s: float = 0.0
    sums: dict[str, torch.Tensor] = field(default_factory=dict)

    def add_losses(self, out: dict[str, torch.Tensor], accum: int) -> None:
        """Add one micro-batch's ``loss`` and ``*_loss`` parts (detached, float32, divided by ``accum``)."""
        for k, v in out.items():
            if k == "loss" or k.endswith("_loss"):
                self.sums[k] = self.sums.get(k, 0.0) + v.detach().float() / accum

    def timings(self, world: int, now: Optional[float] = None) -> dict[str, float]:
        """The throughput over all ranks and the window's time split (call after the values logged with it were
        read, so that on a GPU the window ends when the device work has)."""
        wall = max((now if now is not None else time.perf_counter()) - self.start, 1e-9)
        return {"samples_per_s": self.samples * world / wall, "train_time_s": wall - self.eval_s - self.save_s,
                "eval_time_s": self.eval_s, "save_time_s": self.save_s}


def scaler_found_inf(scaler: torch.amp.GradScaler, opt: torch.optim.Optimizer) -> torch.Tensor:
    """After ``scaler.step(opt)`` and before ``scaler.update()``: 1.0 where the scaler skipped the step (an inf/NaN
    in the unscaled gradients on any device), as a 0-d float32 device tensor."""
    flags = list(scaler._found_inf_per_device(opt).values())  # what GradScaler.update reads, one per device
    return torch.stack([f.to(flags[0].device) for f in flags]).amax().clamp(max=1.0)


def params_of(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for g in opt.param_groups for p in g["params"]]


__all__ = ["FaultCounter", "Undo", "Window", "grad_norm", "nonfinite", "params_of", "scaler_found_inf",
           "skips_on_device", "step_unless"]
