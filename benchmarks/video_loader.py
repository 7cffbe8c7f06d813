"""Video loader vs the training step: clips/s the video-classification loader delivers (PyAV decode + frame
sampling + one crop per clip, ``train.num_workers`` 0, 1, 2) against clips/s of the training step of a small
video model (``tiny_3d``) on batches already in memory. Question: at which worker count does decoding stop being
the bottleneck of a CPU run?

Both sides are timed over the same window, batches (w, N], from the recipe's own dataset and collate (the
loader arm a ``DataLoader`` with that many workers, started before the window; the step arm forward + backward +
AdamW on N batches the loader made beforehand). Arms are interleaved per seed.

    python benchmarks/video_loader.py [--quick] [--seeds 3] [--device cpu|cuda] [--threads 1]
        [--workers 0 1 2] [--size 64] [--frames 32] [--num-frames 8] [--batch 8] [--steps 24]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import fmt, ratios, render, section, set_threads  # noqa: E402
from mm_ptft.run import load_config  # noqa: E402
from mm_ptft.tasks import get_recipe  # noqa: E402
from mm_ptft.train.loaders import to_device  # noqa: E402

TINY = str(Path(__file__).resolve().parents[1] / "recipes" / "video_classification" / "tiny.yaml")


def prepare(root: str, size: int, frames: int, num_frames: int, batch: int, steps: int, device: str) -> Any:
    """The recipe's prepared data and model on ``batch * (steps + 1)`` generated clips of ``frames`` frames."""
    cfg = load_config(TINY, [f"output_dir={root}", f"data.generate.n_train={batch * (steps + 1)}",
                             "data.generate.n_eval=4", f"data.generate.size={size}", f"data.generate.frames={frames}",
                             f"data.sampling.num_frames={num_frames}", f"model.video.img_size={size}",
                             f"train.device={device}", "train.report=false"])
    return get_recipe(cfg.task).prepare(cfg)


def loader_rate(prepared: Any, workers: int, batch: int, warmup: int, steps: int, seed: int) -> float:
    """Clips/s the loader yields over batches (warmup, steps], its workers started before the window."""
    loader = torch.utils.data.DataLoader(prepared.train_data, batch_size=batch, shuffle=True, num_workers=workers,
                                         collate_fn=prepared.collate, generator=torch.Generator().manual_seed(seed),
                                         prefetch_factor=1 if workers else None)
    clips, t0 = 0, None
    for i, b in enumerate(loader):
        if i == warmup:
            t0 = time.perf_counter()
        elif i > warmup:
            clips += len(b["video"])
        if i == steps:
            break
    return clips / (time.perf_counter() - t0)


def step_rate(prepared: Any, batches: Sequence[dict], device: str, warmup: int) -> float:
    """Clips/s of forward + backward + AdamW on ``batches`` (in memory) over batches (warmup, len]."""
    task = prepared.task.to(device).train()
    opt = torch.optim.AdamW(task.parameters(), lr=1e-3)
    clips, t0 = 0, None
    for i, b in enumerate(batches):
        if i == warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        elif i > warmup:
            clips += len(b["video"])
        task(to_device(b, torch.device(device)))["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    return clips / (time.perf_counter() - t0)


def measure(workers: Sequence[int], seeds: int, device: str, size: int, frames: int, num_frames: int, batch: int,
            steps: int, warmup: int) -> dict[str, list[float]]:
    """Per seed: each worker count's loader rate and the step rate, the order rotated per seed."""
    arms = [*(f"loader, num_workers={w}" for w in workers), "training step (batches in memory)"]
    rates: dict[str, list[float]] = {a: [] for a in arms}
    with tempfile.TemporaryDirectory() as root:
        prepared = prepare(root, size, frames, num_frames, batch, steps, device)
        batches = [prepared.collate([prepared.train_data[(i * batch + k) % len(prepared.train_data)]
                                     for k in range(batch)]) for i in range(steps + 1)]
        for seed in range(seeds):
            for arm in arms[seed % len(arms):] + arms[:seed % len(arms)]:
                if arm.startswith("loader"):
                    w = int(arm.rsplit("=", 1)[1])
                    rates[arm].append(loader_rate(prepared, w, batch, warmup, steps, seed))
                else:
                    rates[arm].append(step_rate(prepared, batches, device, warmup))
    return rates


def compare(quick: bool = False, seeds: int = 3, device: str = "", workers: Sequence[int] = (0, 1, 2),
            size: int = 0, frames: int = 0, num_frames: int = 8, batch: int = 8, steps: int = 0) -> dict[str, Any]:
    size, frames, steps = size or (32 if quick else 64), frames or (16 if quick else 32), steps or (12 if quick else 24)
    warmup = max(2, steps // 5)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    rates = measure(list(workers), seeds, device, size, frames, num_frames, batch, steps, warmup)
    step = rates["training step (batches in memory)"]
    rows = [[arm, fmt(r, 1), fmt(ratios(r, step), 2) if arm.startswith("loader") else "1"] for arm, r in rates.items()]
    return section("Video loader vs training step (video_classification, tiny_3d)",
                   f"clips/s over batches ({warmup}, {steps}], batch {batch}; loader workers started before the "
                   f"window; the step arm is forward + backward + AdamW on batches the loader made beforehand",
                   ["arm", "clips/s", "÷ step rate"], rows, seeds=seeds, quick=quick,
                   notes=[f"device {device}; generated moving_shapes H.264 mp4 clips of {frames} frames at {size} px; "
                          f"mode=stride, {num_frames} frames 2 apart, RandomResizedCrop per clip; torch threads "
                          f"{torch.get_num_threads()} in the main process (workers: 1 each)",
                          "÷ step rate > 1: the loader outruns the step (the run is compute-bound)",
                          f"prefetch_factor 1: at most num_workers batches were fetched before the window and count in "
                          f"it (an overstatement of at most workers / {steps - warmup} of a loader arm's rate)"],
                   raw={"rates": rates})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--device", default="")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the main process (0: default)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--size", type=int, default=0, help="frame side (px; default 64, quick 32)")
    ap.add_argument("--frames", type=int, default=0, help="frames per file (default 32, quick 16)")
    ap.add_argument("--num-frames", type=int, default=8, help="frames sampled per clip")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=0, help="N (default 24; quick 12)")
    args = ap.parse_args()
    set_threads(args.threads)
    print(render(compare(args.quick, args.seeds, args.device, args.workers, args.size, args.frames, args.num_frames,
                         args.batch, args.steps)))


if __name__ == "__main__":
    main()
