"""The training thread's share of an asynchronous checkpoint (``train.async_save``), by snapshot design, for a
~100M-parameter model + AdamW on the CPU, without the write (which the writer thread does in every design):

- ``copy at the save``: the whole snapshot (weights + moments) copied on the training thread at the save into fresh
  tensors (``async_save.snapshot`` without buffers to reuse: what ``train.async_save`` did first);
- ``copy at the save into reused buffers``: the same copy into the previous snapshot's buffers (``async_save.snapshot``
  with ``reuse``: what ``train.async_save`` does; no fresh pages per checkpoint, the buffers held for the run);
- ``copy beside the step``: the tensors copied by another thread while the next forward/backward runs (they do not
  change them); the training thread waits for that copy before the optimizer step (a fence).

Lost per checkpoint = (snapshot + forward/backward + fence wait) − a forward/backward alone, arms interleaved
(plain, copy at the save, copy beside the step; then reversed), on the machine as it is.

    python benchmarks/snapshot_stall.py [--quick] [--seeds 5]
"""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import fmt, script_main, section  # noqa: E402
from mm_ptft.train import async_save  # noqa: E402
from mm_ptft.train import checkpoint as ckpt  # noqa: E402

ARMS = ("forward/backward alone", "copy at the save", "copy at the save into reused buffers", "copy beside the step")


def live_tensors(model: nn.Module, opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    """What a checkpoint copies: the weights and the optimizer's state tensors."""
    state = [t for per in opt.state.values() for t in per.values() if isinstance(t, torch.Tensor)]
    return [*ckpt.weights_of(model).tensors.values(), *state]


def build(quick: bool) -> tuple[nn.Module, torch.optim.Optimizer, torch.Tensor]:
    dim, layers = (128, 2) if quick else (768, 14)
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(dim, 8 if quick else 12, 4 * dim, batch_first=True),
                                  layers)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(2, 32, dim)  # (B, T, D)
    model(x).sum().backward()
    opt.step()  # the moments exist
    opt.zero_grad(set_to_none=True)
    return model, opt, x


def one(arm: str, model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, reused: list[torch.Tensor]) -> float:
    """Seconds the training thread spends from the save to the optimizer step (the step itself not included)."""
    t0 = time.perf_counter()
    filler = None
    if arm == "copy at the save":
        async_save.snapshot(ckpt.weights_of(model), {"optimizer": opt.state_dict()})
    elif arm == "copy at the save into reused buffers":
        async_save.snapshot(ckpt.weights_of(model), {"optimizer": opt.state_dict()}, reused)
    elif arm == "copy beside the step":
        live = live_tensors(model, opt)
        buffers = [torch.empty_like(t) for t in live]
        filler = threading.Thread(target=torch._foreach_copy_, args=(buffers, live))
        filler.start()
    model(x).sum().backward()
    if filler is not None:
        filler.join()  # the fence
    took = time.perf_counter() - t0
    opt.step()
    opt.zero_grad(set_to_none=True)
    return took


def compare(quick: bool, seeds: int, device: str = "") -> dict[str, Any]:
    model, opt, x = build(quick)
    reused = async_save.snapshot(ckpt.weights_of(model), {"optimizer": opt.state_dict()})[2]  # the first checkpoint's
    params = sum(p.numel() for p in model.parameters())
    raw: dict[str, list[float]] = {arm: [] for arm in ARMS}
    loads = []
    for seed in range(seeds):
        loads.append(os.getloadavg()[0])
        for arm in ARMS if seed % 2 == 0 else ARMS[::-1]:
            raw[arm].append(one(arm, model, opt, x, reused))
    base = raw[ARMS[0]]
    rows = [[ARMS[0], fmt([1000 * b for b in base], 0), "0"]]
    for arm in ARMS[1:]:
        rows.append([arm, fmt([1000 * t for t in raw[arm]], 0),
                     fmt([1000 * (t - b) for t, b in zip(raw[arm], base)], 0)])
    return section(f"Async checkpoint: the training thread's stall by snapshot design ({params / 1e6:.0f} M params + "
                   "AdamW, cpu)",
                   "save → optimizer step on the training thread (snapshot, forward/backward, fence), the write left "
                   f"out; lost = minus the forward/backward alone of the same repeat; arms interleaved, {seeds} repeats",
                   ["arm", "ms save → step", "ms lost per checkpoint"], rows, seeds=seeds, quick=quick, raw=raw,
                   notes=[f"weights + 2 moments: ~{12 * params / 1e9:.1f} GB copied per checkpoint; batch 2 × 32 "
                          f"tokens, fp32, {torch.get_num_threads()} intra-op thread(s)",
                          "load average (1 min) at each repeat's start: " + ", ".join(f"{v:.1f}" for v in loads)])


if __name__ == "__main__":
    script_main(compare, __doc__.splitlines()[0])
