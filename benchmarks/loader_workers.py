"""Loader workers: the same image-classification run (decode + augment per sample) with ``train.num_workers`` 0,
1 and ``auto`` (sized by the measured per-worker and step rates before the first step), seeds interleaved.
Question: does ``auto`` ever make a run slower than the best fixed count (whole run, probe included)?

Every arm is timed by ``benchmarks.common.StepClock`` over the same window, steps (w, N] of an N-step run; the
probe falls in the arm's start-up, so ``wall_s`` (the whole run) is the figure that says whether ``auto`` pays.

    python benchmarks/loader_workers.py [--quick] [--seeds 3] [--device cpu|cuda] [--threads 1]
        [--model tiny|vit_b16] [--arms 0 1 auto] [--size 160] [--batch 32] [--steps 40]

``--model vit_b16`` is the GPU check: a random-init timm ViT-B/16 at 224 px, bf16, on generated 256 px images.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (ClockCallback, StepClock, paired_rows, render, section, set_threads,  # noqa: E402
                               throughput_rows, window_rule)
from mm_ptft.data.generated import generate  # noqa: E402
from mm_ptft.run import load_config  # noqa: E402
from mm_ptft.tasks import get_recipe  # noqa: E402
from mm_ptft.train.trainer import Trainer  # noqa: E402

import mm_ptft.data.generated.images  # noqa: E402,F401  (registers image_shapes)

MODELS = {"tiny": ["model.image.img_size=64", "train.precision=fp32"],
          "vit_b16": ["model.image={name: timm, name_or_path: vit_base_patch16_224, pretrained: false}",
                      "train.precision=bf16"]}


def run_arm(clock: StepClock, data: dict[str, str], workers: str, model: str, batch: int, seed: int) -> int:
    """One run with ``train.num_workers=workers``; returns the worker count it used."""
    clock.begin()
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config("recipes/image_classification/tiny.yaml", [
            f"output_dir={out}", "data.generate=null", f"data.train_file={data['train_file']}",
            f"data.eval_file={data['eval_file']}", f"train.num_workers={workers}", f"train.batch_size={batch}",
            f"train.max_steps={clock.steps}", f"train.eval_every={clock.steps}", f"train.device={clock.device}",
            "train.log_every=1000", "train.report=false", "train.keep_last=0", "model.ema_decay=0.0",
            f"seed={seed}", *MODELS[model]])
        prepared = get_recipe(cfg.task).prepare(cfg)
        clock.count_forward(prepared.task)
        trainer = Trainer.from_prepared(prepared, cfg, callbacks=[ClockCallback(clock)])
        trainer.fit()
        clock.end()
        return trainer.train_loader.num_workers


def measure(arms: Sequence[str], steps: int, warmup: int, seeds: int, device: str, model: str, size: int,
            batch: int, root: str) -> tuple[dict[str, list[dict[str, float]]], dict[str, list[int]]]:
    """Each arm once per seed, the arm order rotated per seed so drift in machine load hits all alike."""
    # 10 batches of images at most (epochs roll over; every sample is decoded and augmented again each time)
    data = generate({"name": "image_shapes", "n_train": batch * min(steps + 2, 10), "n_eval": batch, "size": size,
                     "seed": 0}, root)
    run_arm(StepClock(1, 3, device), data, "0", model, batch, 0)  # warm-up run (imports, allocator), not recorded
    timings: dict[str, list[dict[str, float]]] = {a: [] for a in arms}
    used: dict[str, list[int]] = {a: [] for a in arms}
    for seed in range(seeds):
        for arm in arms[seed % len(arms):] + arms[:seed % len(arms)]:
            clock = StepClock(warmup, steps, device)
            used[arm].append(run_arm(clock, data, arm, model, batch, seed))
            timings[arm].append(clock.timing())
    return timings, used


def compare(quick: bool = False, seeds: int = 3, device: str = "", model: str = "tiny",
            arms: Sequence[str] = ("0", "1", "auto"), size: int = 160, batch: int = 32,
            steps: int = 0) -> dict[str, Any]:
    steps = steps or (12 if quick else 40)
    warmup = max(2, steps // 5)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as root:
        t, used = measure(list(arms), steps, warmup, seeds, device, model, size, batch, root)
    named = {f"num_workers={a}" + (f" (chose {sorted(set(used[a]))})" if a == "auto" else ""): t[a] for a in arms}
    rows = throughput_rows(named)
    if "auto" in t:
        for a in arms:
            if a != "auto":
                rows += paired_rows(t["auto"], t[a], f"auto vs {a}")
    return section("Loader workers: fixed counts vs auto", window_rule(warmup, steps),
                   ["arm", "samples/s", "start-up s", "after s", "wall s"], rows, seeds=seeds, quick=quick,
                   notes=[f"device {device}; model {model}, batch {batch}, generated {size} px PNGs decoded + "
                          f"RandomResizedCrop + flip per sample; torch threads {torch.get_num_threads()}"],
                   raw={"timings": t, "workers_used": used})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--device", default="")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the main process (0: default)")
    ap.add_argument("--model", choices=sorted(MODELS), default="tiny")
    ap.add_argument("--arms", nargs="+", default=["0", "1", "auto"])
    ap.add_argument("--size", type=int, default=160, help="generated image side (px): the decode cost")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=0, help="N (default 40; quick 12)")
    args = ap.parse_args()
    set_threads(args.threads)
    sec = compare(args.quick, args.seeds, args.device, args.model, args.arms, args.size, args.batch, args.steps)
    print(render(sec))
    for arm, runs in sec["raw"]["timings"].items():  # one line per arm (what a log's tail keeps)
        rate, wall = (sum(r[k] for r in runs) / len(runs) for k in ("samples_per_s", "wall_s"))
        print(f"num_workers={arm}: used {sec['raw']['workers_used'][arm]} workers, {rate:.1f} samples/s in the "
              f"window, {wall:.2f} s whole run (mean of {len(runs)})")


if __name__ == "__main__":
    main()
