"""One set of timing and statistics rules for every comparison in ``benchmarks/``.

Throughput is measured from outside each training loop, the same way on both sides: a ``StepClock``
takes ``time.perf_counter()`` at the end of every optimizer step (a ``Callback`` on mm_ptft's
``Trainer``, a ``TrainerCallback`` on HF's, one line in a hand-written loop) and counts the samples of
each step (``clock.count_forward(model)`` or ``clock.stamp(n)``). The rate is

    samples in steps (w, N] / (t_N - t_w)

with the same warm-up ``w`` and last step ``N`` on both sides. Start-up (arm start -> end of step 1) and
what follows step N (final evaluation, checkpoint, run-directory writes) are reported separately. On CUDA
the clock synchronises at steps w and N only, so both sides pay the same two waits.

Quality and speed figures are summarised over seeds as mean ± sample sd, and two arms run on the same
seed are compared by their paired difference (mean ± sd of the per-seed differences).
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from mm_ptft.contracts import Callback


def batch_len(batch: Any) -> int:
    """Samples in a collated batch: a dict of tensors/lists, a tuple ``(inputs, ...)`` or a tensor."""
    first = next(iter(batch.values())) if isinstance(batch, Mapping) else batch[0] if isinstance(batch, (tuple, list)) else batch
    if isinstance(first, Mapping):  # a mixed batch {source: sub-batch}: count all rows
        return sum(batch_len(sub) for sub in batch.values())
    return len(first)


@dataclass
class StepClock:
    """Per-step end times and sample counts of one training run (one arm, one seed)."""

    warmup: int  # w: steps 1..w are warm-up
    steps: int  # N: the window is steps (w, N]
    device: str = "cpu"
    t_begin: float = math.nan
    t_end: float = math.nan
    times: list[float] = field(default_factory=list)  # times[k - 1]: end of step k
    sizes: list[int] = field(default_factory=list)  # sizes[k - 1]: samples in step k

    def __post_init__(self) -> None:
        if not 1 <= self.warmup < self.steps:
            raise ValueError(f"window: need 1 <= warmup < steps, got warmup={self.warmup} steps={self.steps}")

    def begin(self) -> None:
        """Start of the arm (before its model and data are built)."""
        self.t_begin = time.perf_counter()

    def stamp(self, samples: Optional[int] = None) -> None:
        """End of one optimizer step; ``samples`` unless ``count_forward`` records them."""
        if len(self.times) + 1 in (self.warmup, self.steps) and self.device.startswith("cuda"):
            torch.cuda.synchronize()  # the two window edges only: the same two waits on every side
        self.times.append(time.perf_counter())
        if samples is not None:
            self.sizes.append(samples)

    def end(self) -> None:
        """End of the arm (after its final evaluation / checkpoint)."""
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        self.t_end = time.perf_counter()

    def count_forward(self, module: torch.nn.Module) -> Any:
        """Record the samples of every training-mode forward of ``module`` (one per step without gradient
        accumulation); evaluation forwards (``module.training`` False) are not counted. Returns the hook handle."""
        @torch._dynamo.disable  # under torch.compile the clock stays out of the measured graphs (and their count)
        def hook(mod: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            if mod.training:
                self.sizes.append(batch_len(args[0] if args else next(iter(kwargs.values()))))
        return module.register_forward_pre_hook(hook, with_kwargs=True)

    def timing(self) -> dict[str, float]:
        """samples/s over steps (w, N], start-up, time after step N, and the whole arm's wall time."""
        w, n = self.warmup, self.steps
        if len(self.times) < n or len(self.sizes) < n:
            raise ValueError(f"window (w={w}, N={n}]: the run recorded {len(self.times)} step ends and "
                             f"{len(self.sizes)} batch sizes; lower the window's N or train longer")
        span = self.times[n - 1] - self.times[w - 1]
        return {"samples_per_s": sum(self.sizes[w:n]) / span, "window_s": span,
                "startup_s": self.times[0] - self.t_begin, "after_s": self.t_end - self.times[n - 1],
                "wall_s": self.t_end - self.t_begin}


class ClockCallback(Callback):
    """mm_ptft side: stamp the clock at every ``on_step_end``. ``every_step``: called after every optimizer step
    without the trainer deciding on the host whether the step changed the weights (no extra sync)."""

    every_step = True

    def __init__(self, clock: StepClock) -> None:
        self.clock = clock

    def on_step_end(self, trainer: Any) -> None:
        self.clock.stamp()


def script_main(compare: Callable[..., dict[str, Any]], description: str) -> None:
    """The command line every comparison script shares: ``[--quick] [--seeds N] [--device D] [--threads T]``."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (flagged quick in the output)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--device", default="", help="cpu | cuda (default: cuda when available)")
    ap.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    args = ap.parse_args()
    set_threads(args.threads)
    print(render(compare(quick=args.quick, seeds=args.seeds, device=args.device)))


THREADS_HELP = ("torch intra-op threads (default 1: on a shared 2-core CPU, 2 threads per process ran a matmul "
                "4x slower than 1; 0 keeps torch's default)")


def set_threads(n: int) -> None:
    if n > 0:
        torch.set_num_threads(n)


def window_rule(warmup: int, steps: int) -> str:
    return (f"samples/s over steps ({warmup}, {steps}] (step-end `perf_counter` stamps taken outside each loop, "
            f"same w={warmup}, N={steps} on both sides); start-up = arm start → end of step 1; "
            f"after = end of step {steps} → arm end (final evaluation, checkpoint)")


# ---- statistics -------------------------------------------------------------------------------------

def mean_sd(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for a single value)."""
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def paired(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Paired difference a - b over seeds: mean, sd, and n."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired difference needs two equal, non-empty lists (got {len(a)} and {len(b)})")
    m, s = mean_sd([x - y for x, y in zip(a, b)])
    return {"mean": m, "sd": s, "n": len(a)}


def fmt(xs: Sequence[float], digits: int = 3) -> str:
    m, s = mean_sd(xs)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def fmt_paired(a: Sequence[float], b: Sequence[float], digits: int = 3) -> str:
    d = paired(a, b)
    return f"{d['mean']:+.{digits}f} ± {d['sd']:.{digits}f}"


def ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    return [x / y for x, y in zip(a, b)]


# ---- hardware / versions ----------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict[str, Any]:
    """What the figures were measured on."""
    def version(pkg: str) -> str:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return "absent"

    return {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
            "python": platform.python_version(),
            "torch": torch.__version__, **{pkg: version(pkg) for pkg in ("transformers", "timm", "open_clip_torch")},
            "load_avg_1min": round(os.getloadavg()[0], 1),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def hardware_line(hw: Mapping[str, Any]) -> str:
    return (f"Hardware: {hw['cpu']}, {hw['cores']} cores ({hw['torch_threads']} torch threads), GPU {hw['gpu']}; "
            f"python {hw['python']}, torch {hw['torch']}, transformers {hw['transformers']}, timm {hw['timm']}, "
            f"open_clip {hw['open_clip_torch']}; "
            f"load average {hw.get('load_avg_1min', '?')} when written; {hw['date']}")


# ---- sections (what every comparison returns) -------------------------------------------------------

def section(title: str, rule: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, seeds: int,
            quick: bool, notes: Sequence[str] = (), raw: Optional[dict[str, Any]] = None,
            status: str = "ok") -> dict[str, Any]:
    """A comparison's result: a markdown table plus its rule, seeds, hardware and the raw per-seed values."""
    return {"title": title, "rule": rule, "columns": list(columns), "rows": [[str(c) for c in r] for r in rows],
            "seeds": seeds, "quick": quick, "notes": list(notes), "raw": raw or {}, "status": status,
            "hardware": hardware()}


def render(sec: Mapping[str, Any]) -> str:
    """One section of RESULTS.md."""
    flag = " — **quick** (tiny sizes, not the README figures)" if sec["quick"] else ""
    lines = [f"## {sec['title']}{flag}", "", f"Status: {sec['status']}. Seeds: {sec['seeds']}."
             + (f" Took {sec['elapsed_s']:.0f} s." if "elapsed_s" in sec else ""), "",
             f"Rule: {sec['rule']}", ""]
    if sec["rows"]:
        lines += ["| " + " | ".join(sec["columns"]) + " |", "|" + "---|" * len(sec["columns"])]
        width = len(sec["columns"])
        lines += ["| " + " | ".join([*r, *[""] * (width - len(r))]) + " |" for r in sec["rows"]]
        lines.append("")
    lines += [*(f"- {n}" for n in sec["notes"]), *([""] if sec["notes"] else []), hardware_line(sec["hardware"]), ""]
    return "\n".join(lines)


def throughput_rows(arms: Mapping[str, Sequence[Mapping[str, float]]], keys: Sequence[str] = (
        "samples_per_s", "startup_s", "after_s", "wall_s")) -> list[list[str]]:
    """One row per arm: each timing key as mean ± sd over seeds (rates ``*_per_s`` to 1 decimal, counts
    ``*_tokens`` to whole numbers, seconds to 2)."""
    return [[name, *(fmt([r[k] for r in runs], 1 if k.endswith("_per_s") else 0 if k.endswith("_tokens") else 2)
                     for k in keys)] for name, runs in arms.items()]


def paired_rows(ours: Sequence[Mapping[str, float]], theirs: Sequence[Mapping[str, float]], label: str,
                keys: Sequence[str] = ("samples_per_s", "wall_s")) -> list[list[str]]:
    """Ratio and paired difference of ours vs theirs, per timing key, over the same seeds."""
    rows = []
    for k in keys:
        a, b = [r[k] for r in ours], [r[k] for r in theirs]
        rows.append([f"{label}: {k}", f"ratio {fmt(ratios(a, b))}", f"difference {fmt_paired(a, b, 2)}"])
    return rows
