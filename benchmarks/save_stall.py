"""Step time lost per checkpoint: synchronous writes vs ``train.async_save`` (a CPU snapshot on the training thread,
the write on a background thread), for a ~100M-parameter model through the real Trainer.

Three arms, interleaved per seed (ABC, CBA, …): no checkpoints in the window, checkpoints written in-line, and
``train.async_save``. Every arm ends with the same final checkpoint (written and waited for), so the difference of an
arm's time from the end of step w to the end of the fit, minus the no-checkpoint arm's, divided by the checkpoints
in the window, is the time each checkpoint cost the run — the in-line write, or the snapshot plus what the
background write took from the steps beside it (on a shared 2-core CPU it competes with them for the cores).

    python benchmarks/save_stall.py [--quick] [--seeds 3] [--device cpu|cuda] [--threads 1]
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ClockCallback, StepClock, fmt, script_main, section  # noqa: E402
from benchmarks.trainer_overhead import bert  # noqa: E402
from mm_ptft.run import load_config  # noqa: E402
from mm_ptft.tasks.text_classification import TextClassification  # noqa: E402
from mm_ptft.train.trainer import Trainer, seed_everything  # noqa: E402

ARMS = {"no checkpoint": ("train.save_every=0", "train.async_save=false"),
        "sync": ("train.save_every={every}", "train.async_save=false"),
        "async": ("train.save_every={every}", "train.async_save=true")}


def sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {"model": bert(64, 2, 4), "name": "BERT h64 L2", "batch": 4, "steps": 8, "every": 2, "warmup": 1}
    return {"model": bert(768, 14, 12), "name": "BERT h768 L14", "batch": 2, "steps": 14, "every": 3, "warmup": 2}


def run(arm: str, size: dict[str, Any], device: str, seed: int) -> dict[str, float]:
    clock, load_start = StepClock(size["warmup"], size["steps"], device), os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config("recipes/text_classification/tiny.yaml", [
            f"output_dir={out}", f"train.max_steps={size['steps']}", f"train.batch_size={size['batch']}",
            f"train.device={device}", "train.precision=fp32", "train.group_by_length=false", "train.report=false",
            "train.log_every=1000", "train.eval_every=100000", "train.keep_last=2", "data.max_length=32",
            f"seed={seed}", *size["model"], *(o.format(every=size["every"]) for o in ARMS[arm])])
        seed_everything(seed)
        p = TextClassification.prepare(cfg)
        clock.count_forward(p.task)
        params = sum(t.numel() for t in p.task.parameters())
        trainer = Trainer(p.task, cfg, p.train_data, None, p.collate, callbacks=[ClockCallback(clock)])
        clock.begin()
        trainer.fit()  # ends with the final checkpoint, waited for in every arm
        clock.end()
    w, n, times = size["warmup"], size["steps"], clock.times
    steps_ms = [1000 * (b - a) for a, b in zip(times[w - 1:n - 1], times[w:n])]  # steps w+1 … N
    saved = [k for k in range(w, n) if k % size["every"] == 0]  # a checkpoint after step k: in step k+1's time
    return {"to_end_s": clock.t_end - times[w - 1], "params": params, "saves": len(saved) if arm != "no checkpoint"
            else 0, "after_save_ms": [steps_ms[k - w] for k in saved], "steps_ms": steps_ms,
            "load": (load_start, os.getloadavg()[0])}


def compare(quick: bool, seeds: int, device: str) -> dict[str, Any]:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    size = sizes(quick)
    run("sync", sizes(True), device, 0)  # warm-up (imports, allocator), not recorded
    raw: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    for seed in range(seeds):
        for arm in (list(ARMS) if seed % 2 == 0 else list(ARMS)[::-1]):
            raw[arm].append(run(arm, size, device, seed))
    base = raw["no checkpoint"]
    rows = []
    for arm in ("sync", "async"):
        lost = [1000 * (r["to_end_s"] - b["to_end_s"]) / r["saves"] for r, b in zip(raw[arm], base)]
        spikes = [ms - statistics.median(b["steps_ms"]) for r, b in zip(raw[arm], base) for ms in r["after_save_ms"]]
        rows.append([arm, fmt(lost, 0), f"{statistics.median(spikes):.0f} ({min(spikes):.0f} … {max(spikes):.0f})",
                     fmt([statistics.median(r["steps_ms"]) for r in raw[arm]], 0)])
    rows.append(["no checkpoint", "0", "—", fmt([statistics.median(b["steps_ms"]) for b in base], 0)])
    saves, params = raw["sync"][0]["saves"], raw["sync"][0]["params"]
    return section(f"Checkpoint stall: sync vs train.async_save ({size['name']}, {params / 1e6:.0f} M params, "
                   f"{device})",
                   f"steps ({size['warmup']}, {size['steps']}], a checkpoint every {size['every']} steps ({saves} in "
                   f"the window) + the final one in every arm; lost per checkpoint = (end of step w → end of fit, "
                   f"minus the no-checkpoint arm's, same seed) / {saves}; arms interleaved per seed",
                   ["arm", "ms lost per checkpoint (mean ± sd over seeds)",
                    "ms added to the step after a checkpoint: median (min … max)", "median step ms"],
                   rows, seeds=seeds, quick=quick, raw=raw,
                   notes=[f"batch {size['batch']} × 32 tokens, fp32, AdamW (the checkpoint holds weights + 2 moments: "
                          f"~{12 * params / 1e9:.1f} GB per checkpoint), keep_last=2; each write is checksummed "
                          "(SHA-256) and fsynced",
                          "async: the step after a checkpoint pays the CPU snapshot (weights + optimizer state "
                          "copied into the previous snapshot's buffers); the write then runs beside the next steps, "
                          "on the same cores",
                          "load average (1 min) at the start/end of each run: "
                          + "; ".join(f"{arm} " + ", ".join(f"{r['load'][0]:.1f}-{r['load'][1]:.1f}" for r in runs)
                                      for arm, runs in raw.items())])


if __name__ == "__main__":
    script_main(compare, __doc__.splitlines()[0])
