"""Where each side of ``vs_hf_trainer`` spends its time: per-step CPU time split into loading (sampler, fetch,
collate), forward, backward, gradient clipping, optimizer step and the rest (the trainer's own per-step Python:
device moves, loss bookkeeping, scheduler, callbacks, logging), forward+backward per token computed (padding
included), plus the CPU seconds of the start-up (``prepare``: the data and model both sides build alike; then the
trainer's own build and step 1) and of what follows the last step (the final evaluation; then the rest:
checkpoint, run-directory files), and the whole run's CPU seconds (paired ratio over seeds: on a shared
machine a steadier estimate of the quiet machine's wall-time ratio than wall time itself).

The same instruments on both sides (they call the same task module): the main thread's CPU time
(``time.thread_time``, so other processes on a shared machine do not count) around the DataLoader iterators'
``__next__``, the task's training forwards, ``Tensor.backward``, ``clip_grad_norm_`` and every optimizer step.

    python benchmarks/vs_hf_trainer_split.py [--quick] [--seeds 2] [--threads 1]
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils.data import dataloader as torch_loader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import StepClock, fmt, ratios, set_threads  # noqa: E402
from benchmarks.vs_hf_trainer import run_hf, run_ours, settings  # noqa: E402

PARTS = ("load", "forward", "backward", "clip", "optimizer", "other")  # per training step


class Split:
    """CPU seconds per part and per training step (``times`` at each step end, from the clock's stamps)."""

    def __init__(self) -> None:
        self.parts: dict[str, float] = defaultdict(float)
        self.step_parts: list[dict[str, float]] = []
        self.step_ends: list[float] = []
        self.t0 = time.thread_time()

    @contextlib.contextmanager
    def timed(self, part: str) -> Iterator[None]:
        t = time.thread_time()
        try:
            yield
        finally:
            self.parts[part] += time.thread_time() - t

    def step_end(self) -> None:
        self.step_ends.append(time.thread_time())
        self.step_parts.append(dict(self.parts))


def _wrap(owner: Any, name: str, split: Callable[[], Split], part: str) -> Callable[[], None]:
    """Time ``owner.name`` calls as ``part`` of the current split; returns the undo."""
    orig = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        with split().timed(part):
            return orig(*args, **kwargs)

    setattr(owner, name, timed)
    return lambda: setattr(owner, name, orig)


def instrument(current: Callable[[], Split]) -> list[Callable[[], None]]:
    # torchdata's StatefulDataLoader iterators call this one too (super().__next__)
    from transformers import Trainer as HFTrainer

    from benchmarks import vs_hf_trainer
    from mm_ptft.train.trainer import Trainer

    undo = [_wrap(vs_hf_trainer, "prepare", current, "prepare"),  # the data and model both sides start from
            _wrap(Trainer, "evaluate", current, "eval"), _wrap(HFTrainer, "evaluate", current, "eval"),
            _wrap(torch_loader._BaseDataLoaderIter, "__next__", current, "load"),
            _wrap(torch.Tensor, "backward", current, "backward"),
            _wrap(torch.nn.utils, "clip_grad_norm_", current, "clip")]
    starts: list[float] = []
    pre = register_optimizer_step_pre_hook(lambda opt, a, k: starts.append(time.thread_time()))
    post = register_optimizer_step_post_hook(
        lambda opt, a, k: current().parts.__setitem__("optimizer", current().parts["optimizer"] + time.thread_time() - starts.pop()))
    return [*undo, pre.remove, post.remove]


def measure(run: Callable[..., float], args: Any, seed: int, strategy: str) -> dict[str, float]:
    split = Split()
    undo = instrument(lambda: split)
    clock = StepClock(args.warmup, args.steps, args.device)
    stamp = clock.stamp
    clock.stamp = lambda samples=None: (stamp(samples), split.step_end())  # type: ignore[method-assign]
    fwd = {"t": 0.0}
    orig_count = clock.count_forward

    def count_forward(module: torch.nn.Module) -> Any:  # the task's training forwards, timed by hooks on it
        target = getattr(module, "task", module)
        target.register_forward_pre_hook(lambda m, a: fwd.__setitem__("t", time.thread_time()) if m.training else None)
        target.register_forward_hook(lambda m, a, o: split.parts.__setitem__(
            "forward", split.parts["forward"] + time.thread_time() - fwd["t"]) if m.training else None)
        return orig_count(module)

    clock.count_forward = count_forward  # type: ignore[method-assign]
    try:
        run(args, clock, seed, strategy)
    finally:
        for u in undo:
            u()
    end = time.thread_time()
    w, n = args.warmup, args.steps
    a, b = split.step_parts[w - 1], split.step_parts[n - 1]
    window = split.step_ends[n - 1] - split.step_ends[w - 1]
    per_step = {p: (b.get(p, 0.0) - a.get(p, 0.0)) / (n - w) * 1e3 for p in PARTS[:-1]}
    per_step["other"] = window / (n - w) * 1e3 - sum(per_step.values())
    tokens = sum(clock.tokens.steps[w:n])  # the window's tokens, padding included (vs_hf_trainer.TokenCount)
    fwd_bwd = sum(b.get(p, 0.0) - a.get(p, 0.0) for p in ("forward", "backward"))
    return {**{f"{p}_ms": v for p, v in per_step.items()}, "step_ms": window / (n - w) * 1e3,
            "tokens_per_step": tokens / (n - w), "fwd_bwd_us_per_token": fwd_bwd / tokens * 1e6,
            "prepare_s": split.parts["prepare"], "build_to_step1_s": split.step_ends[0] - split.t0 - split.parts["prepare"],
            "eval_s": split.parts["eval"], "after_eval_s": end - split.step_ends[n - 1] - split.parts["eval"],
            "run_cpu_s": end - split.t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    opts = ap.parse_args()
    set_threads(opts.threads)
    args = settings(opts.quick, "cpu")
    arms = {"mm_ptft": (run_ours, ""), "HF group_by_length": (run_hf, "group_by_length")}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in arms}
    for seed in range(opts.seeds):
        for name in (list(arms) if seed % 2 == 0 else list(arms)[::-1]):
            run, strategy = arms[name]
            results[name].append(measure(run, args, seed, strategy))
    keys = list(results["mm_ptft"][0])
    print("| arm | " + " | ".join(keys) + " |\n|" + "---|" * (len(keys) + 1))
    for name, runs in results.items():
        print(f"| {name} | " + " | ".join(fmt([r[k] for r in runs], 2) for k in keys) + " |")
    ours, theirs = ([r["run_cpu_s"] for r in results[name]] for name in arms)
    print(f"whole-run CPU time mm_ptft / HF group_by_length, paired over seeds: {fmt(ratios(ours, theirs))}")


if __name__ == "__main__":
    main()
