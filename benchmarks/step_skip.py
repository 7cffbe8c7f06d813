"""The NaN/Inf skip of optimizers without a fused ``found_inf`` input (non-fused SGD, RAdam): decided on the host
(``bool(found_inf)``: one sync per step) vs rolled back on the device (``train.undo_skips``: a copy of params +
state before the step, a ``torch.where`` after it), with an unchecked step (no skip at all) as the floor.

The same hand loop (an MLP on pre-made batches: no data loading) runs every arm, seeds interleaved, timed by
``benchmarks.common.StepClock`` over the same window. On CPU a sync costs nothing (the host runs the kernels), so
the rollback's copy is pure cost there; on a GPU the sync stalls the queue once per step, which the rollback avoids.

    python benchmarks/step_skip.py [--quick] [--seeds 5] [--device cpu|cuda] [--threads 1]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import StepClock, paired_rows, script_main, section, throughput_rows, window_rule  # noqa: E402
from mm_ptft.train import step as S  # noqa: E402

OPTIMIZERS: dict[str, Callable[[Any, bool], torch.optim.Optimizer]] = {
    "sgd": lambda ps, cuda: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, weight_decay=1e-4, fused=False),
    # capturable on CUDA: its step counters on the GPU (CPU ones could not be rolled back without a sync)
    "radam": lambda ps, cuda: torch.optim.RAdam(ps, lr=1e-3, weight_decay=1e-4, capturable=cuda),
}
ARMS = ("host", "undo", "unchecked")


def sizes(quick: bool, device: str) -> dict[str, int]:
    if quick:
        return {"width": 128, "depth": 2, "batch": 16, "warmup": 3, "steps": 12}
    if device.startswith("cuda"):
        return {"width": 2048, "depth": 8, "batch": 256, "warmup": 10, "steps": 110}
    return {"width": 512, "depth": 4, "batch": 64, "warmup": 5, "steps": 45}


def run(arm: str, optim: str, size: dict[str, int], device: str, seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    w, dev = size["width"], torch.device(device)
    layers = [m for _ in range(size["depth"]) for m in (nn.Linear(w, w), nn.GELU())]
    model = nn.Sequential(*layers, nn.Linear(w, 10)).to(dev)
    opt, undo = OPTIMIZERS[optim](model.parameters(), dev.type == "cuda"), S.Undo()
    batches = [(torch.randn(size["batch"], w, device=dev), torch.randint(0, 10, (size["batch"],), device=dev))
               for _ in range(4)]  # (B, W), (B,)
    clock, skip_s = StepClock(size["warmup"], size["steps"], device), []
    clock.begin()
    for k in range(size["steps"]):
        x, y = batches[k % len(batches)]
        nn.functional.cross_entropy(model(x), y).backward()
        found_inf = S.nonfinite(S.grad_norm(S.params_of(opt), 1.0))
        t0 = time.perf_counter()
        if arm == "unchecked" or k == 0:  # step 1 creates the state: host-decided in every arm
            S.step_unless(opt, found_inf, on_device=False) if arm != "unchecked" else opt.step()
        else:
            S.step_unless(opt, found_inf, on_device=False, undo=undo if arm == "undo" else None)
        skip_s.append(time.perf_counter() - t0)
        assert arm != "undo" or k == 0 or S.Undo.ready(opt), f"{optim} cannot be rolled back on {device}"
        opt.zero_grad(set_to_none=True)
        clock.stamp(size["batch"])
    clock.end()
    window = sorted(skip_s[size["warmup"]:])
    return {**clock.timing(), "step_ms": 1000 * clock.timing()["window_s"] / (size["steps"] - size["warmup"]),
            "opt_ms": 1000 * window[len(window) // 2]}


def compare(quick: bool, seeds: int, device: str) -> dict[str, Any]:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    size = sizes(quick, device)
    results = {f"{o} {a}": [] for o in OPTIMIZERS for a in ARMS}
    for seed in range(seeds):  # interleaved: drift in the machine's load hits every arm alike
        for name, runs in results.items():
            optim, arm = name.split()
            runs.append(run(arm, optim, size, device, seed))
    rows = throughput_rows(results, ("samples_per_s", "step_ms", "opt_ms"))
    for optim in OPTIMIZERS:
        rows += paired_rows(results[f"{optim} undo"], results[f"{optim} host"], f"{optim} undo vs host",
                            ("samples_per_s",))
    params = size["depth"] * (size["width"] ** 2 + size["width"]) + 10 * size["width"] + 10
    return section(f"NaN/Inf skip without a fused kernel: host sync vs device rollback ({device})",
                   window_rule(size["warmup"], size["steps"]), ["arm", "samples/s", "ms per step", "ms in the optimizer step (median)"], rows,
                   seeds=seeds, quick=quick, raw=results,
                   notes=[f"MLP {size['depth']}x{size['width']} ({params / 1e6:.2f} M params), batch {size['batch']}, "
                          f"fp32, grad clip 1.0; host: `bool(found_inf)` each step; undo: `train.undo_skips`; "
                          "unchecked: `opt.step()` with no skip (the floor)",
                          "ms in the optimizer step: host time from the NaN flag to the end of the step (skip "
                          "decision, step, rollback); on CUDA the host only queues it, the stall shows in ms per step"])


if __name__ == "__main__":
    script_main(compare, __doc__.splitlines()[0])
