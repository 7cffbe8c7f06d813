"""Pretraining from the same WebDataset shards: mm_ptft's stream (``data.streaming``: ``ShardStream`` +
``PairedRecord`` in a ``StatefulDataLoader``) vs open_clip_train's webdataset pipeline
(``open_clip_train.data.get_wds_dataset``, what ``--dataset-type webdataset`` builds), in one run.

    # CPU, pipeline only (data loading, no model step)
    nice -n 10 python benchmarks/wds_vs_open_clip.py --mode pipeline --batch 64 --workers 2 --warmup 5 --window 20
    # GPU: pipeline, then the full training step (ViT-B-32, bf16)
    python benchmarks/wds_vs_open_clip.py --mode both --shards 16 --per-shard 800 --batch 256 --workers 8 \
        --warmup 8 --window 20 --precision bf16
    # CPU smoke of the training step (tiny sizes)
    python benchmarks/wds_vs_open_clip.py --mode train --model ViT-S-32 --image-size 64 --batch 16 --workers 2 \
        --warmup 2 --window 4 --repeats 1

It writes ``--shards`` tar shards of ``--per-shard`` samples in the open_clip / img2dataset layout
(``{key}.jpg``: 320×240 photo-like JPEG, quality 90; ``{key}.txt``: caption) with ``webdataset.TarWriter``,
plus one small eval shard (our side evaluates it once at the end of training; open_clip has none).

Both sides use the same open_clip model (``--model``, random weights, ``--image-size``), its tokenizer, batch
size and loader workers, and each runs in its own subprocess; repetitions alternate which side goes first.
A side times batches (w, w+N] after the same warm-up w (``--warmup``, ``--window``) and reports samples/s,
peak RSS of the main process and of its largest loader worker (``getrusage`` SELF / CHILDREN; a worker's
RSS counts the pages it shares with the main process), the peak of main + workers' PSS sampled every 0.5 s
(psutil; shared pages counted once: the memory the side really holds) over the whole run (model building
included) and within the timed window (steady state), and on CUDA the peak GPU memory.

**Pipeline mode** iterates the training loader and copies each batch to the device, nothing else.
**Train mode** runs the full step: ours ``mm_ptft.run.train`` (``pretrain_contrastive``, open_clip image and
text towers, CLIP loss; our task adds its small projection heads), open_clip ``train_one_epoch`` driven
directly (the loop ``open_clip_train.main`` runs) with AdamW (lr 5e-4, wd 0.01), clipping at 1.0, no schedule.

What differs in the work per sample (same JPEG decode by PIL on both sides):
- image: ours decodes (with EXIF transpose) and resizes the whole image to S×S (uint8 tensor, bilinear,
  antialiased: ``multimodal.load_image``, the size and normalisation ``media_config`` takes from the
  encoder); open_clip's *val* transform (used here so both do comparable work; its train transform is a
  RandomResizedCrop) resizes the short side to S (PIL bicubic) and centre-crops. Ours squashes the
  aspect ratio, open_clip crops it; both end at (3, S, S) normalised float32. Ours resizes bilinearly
  although the open_clip tower declares bicubic, and a uint8 tensor resize is much cheaper than PIL's
  bicubic one (one process, 320×240 → 224: ours ~0.83 ms/sample, open_clip ~1.4 ms, of which PIL's
  resize ~0.7 ms), so part of our speed comes from doing a cheaper resize, not from the pipeline.
- text: both call open_clip's tokenizer per caption; ours trims the padding and the collator pads to the
  longest caption in the batch, open_clip keeps every caption at the context length (77), so our text
  tower sees shorter sequences in train mode.
- order: ours shuffles shards per pass and records in blocks of ``data.shuffle_block`` (1000); open_clip
  shuffles shards (buffer 2000) and samples (buffer 5000, 1000 before the first sample).
- pinning: ours pins batches on CUDA (``train.loaders.build_loader``); open_clip's ``WebLoader`` does not.
"""
from __future__ import annotations

import argparse
import gc
import io
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import Pool
from types import SimpleNamespace
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

COLORS = {"red": (200, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 200), "yellow": (230, 210, 50),
          "white": (240, 240, 240), "black": (20, 20, 20), "orange": (240, 140, 30), "purple": (130, 50, 160)}
SHAPES = ("circle", "square", "triangle", "bar")


# ------------------------------------------------------------------------------------------ shards
def photo(rng: np.random.Generator, w: int = 320, h: int = 240) -> tuple[bytes, str]:
    """A photo-like JPEG (colour gradient, two filled shapes, soft blur, sensor noise; quality 90) and its caption."""
    from PIL import Image, ImageDraw, ImageFilter

    c0, c1 = (np.array(COLORS[c], float) for c in rng.choice(list(COLORS), 2, replace=False))
    t = np.linspace(0, 1, w)[None, :, None] * np.cos(rng.uniform(0, np.pi)) + np.linspace(0, 1, h)[:, None, None] * 0.5
    base = c0 + (c1 - c0) * np.clip(t, 0, 1)  # (H, W, 3)
    img = Image.fromarray(base.astype(np.uint8), "RGB")
    draw, words = ImageDraw.Draw(img), []
    for _ in range(2):
        color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
        x, y, r = int(rng.integers(30, w - 30)), int(rng.integers(30, h - 30)), int(rng.integers(15, 70))
        box = [x - r, y - r, x + r, y + r]
        {"circle": lambda: draw.ellipse(box, fill=COLORS[color]),
         "square": lambda: draw.rectangle(box, fill=COLORS[color]),
         "triangle": lambda: draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=COLORS[color]),
         "bar": lambda: draw.rectangle([x - r, y - r // 4, x + r, y + r // 4], fill=COLORS[color])}[shape]()
        words.append(f"a {color} {shape}")
    x = np.asarray(img.filter(ImageFilter.GaussianBlur(1.2)), float) + rng.normal(0, 6, (h, w, 3))  # (H, W, 3)
    buf = io.BytesIO()
    Image.fromarray(np.clip(x, 0, 255).astype(np.uint8), "RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue(), f"a photo of {words[0]} and {words[1]}"


def write_shard(job: tuple[str, int, int]) -> None:
    import webdataset as wds

    path, index, n = job
    rng = np.random.default_rng(index)
    with wds.TarWriter(path) as sink:
        for i in range(n):
            jpg, caption = photo(rng)
            sink.write({"__key__": f"{index:05d}_{i:05d}", "jpg": jpg, "txt": caption})


def write_shards(folder: str, shards: int, per_shard: int, eval_samples: int) -> tuple[str, str]:
    """(brace pattern of the training shards, eval shard path), written in parallel."""
    jobs = [(os.path.join(folder, f"{i:05d}.tar"), i, per_shard) for i in range(shards)]
    jobs.append((os.path.join(folder, "eval.tar"), 99999, eval_samples))
    with Pool(min(len(jobs), os.cpu_count() or 1)) as pool:
        pool.map(write_shard, jobs)
    return os.path.join(folder, f"{{00000..{shards - 1:05d}}}.tar"), jobs[-1][0]


# ------------------------------------------------------------------------------------------ measuring
class RssSampler:
    """Peak of (main + child processes) PSS — each shared page counted once, split among its sharers — sampled
    every ``every`` seconds in a thread."""

    def __init__(self, every: float = 0.5) -> None:
        import psutil

        self.proc, self.every, self.peak, self.window_peak, self.in_window = psutil.Process(), every, 0, 0, False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(self.every):
            total = 0
            for p in [self.proc, *self.proc.children(recursive=True)]:
                try:
                    total += p.memory_full_info().pss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self.window_peak = max(self.window_peak, total) if self.in_window else 0

    def start_window(self) -> None:
        self.in_window = True

    def stop(self) -> tuple[float, float]:
        """(peak over the whole run, peak since ``start_window``) in MiB."""
        self._stop.set()
        self._thread.join()
        return self.peak / 2**20, self.window_peak / 2**20


def memory(sampler: RssSampler, device: str) -> dict[str, float]:
    """Peak RSS (MiB) of this process and of its largest finished child (a loader worker), sampled PSS total;
    peak GPU GiB."""
    gc.collect()  # loaders dropped: their workers are joined, so RUSAGE_CHILDREN counts them
    pss, pss_window = sampler.stop()
    return {"rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "pss_mb": pss, "pss_window_mb": pss_window,
            "gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else math.nan}


class Window:
    """Wall time of steps (warmup, warmup + window]: ``tick(step)`` after each step (synchronising CUDA at the ends)."""

    def __init__(self, warmup: int, window: int, device: str, on_start: Callable[[], None] = lambda: None) -> None:
        self.warmup, self.window, self.device, self.on_start = warmup, window, device, on_start
        self.t0 = self.t1 = math.nan

    def tick(self, step: int) -> None:
        if step in (self.warmup, self.warmup + self.window):
            torch.cuda.synchronize() if self.device == "cuda" else None
            if step == self.warmup:
                self.on_start()
                self.t0 = time.perf_counter()
            else:
                self.t1 = time.perf_counter()

    def rate(self, batch: int) -> float:
        return self.window * batch / (self.t1 - self.t0)


def drain(batches: Iterable[Any], window: Window, device: str) -> None:
    """Copy ``warmup + window`` batches to the device (a dict, or open_clip's (images, texts) tuple)."""
    dev = torch.device(device)
    for step, batch in enumerate(batches, 1):
        parts = batch.values() if isinstance(batch, dict) else batch
        [p.to(dev, non_blocking=True) for p in parts if isinstance(p, torch.Tensor)]
        window.tick(step)
        if step == window.warmup + window.window:
            return
    raise RuntimeError(f"the loader ended after {step} batches; need {window.warmup + window.window}: more shards")


# ------------------------------------------------------------------------------------------ the two sides
def ours_config(args, out: str) -> Any:
    from mm_ptft.tasks import load_config

    towers = {"name": "open_clip", "name_or_path": args.model}
    return load_config({
        "task": "pretrain_contrastive", "output_dir": out, "seed": 0,
        "train": {"precision": args.precision, "device": args.device, "max_steps": args.warmup + args.window,
                  "eval_every": args.warmup + args.window, "batch_size": args.batch, "num_workers": args.workers,
                  "log_every": args.window, "group_by_length": False, "report": False, "keep_last": 0,
                  "grad_clip": 1.0},
        "optim": {"name": "adamw", "lr": 5e-4, "weight_decay": 0.01}, "sched": {"name": "constant"},
        "data": {"train_file": args.train, "eval_file": args.eval, "streaming": True, "modalities": ["image", "text"],
                 "prompt_templates": [], "label_column": "", "max_length": 77},
        "model": {"image": {**towers, "image_size": args.image_size}, "text": towers, "audio": None,
                  "objective": {"name": "clip"}}})


def ours_pipeline(args, window: Window) -> None:
    from torchdata.stateful_dataloader import StatefulDataLoader

    from mm_ptft.tasks import get_recipe

    with tempfile.TemporaryDirectory() as out:
        p = get_recipe("pretrain_contrastive").prepare(ours_config(args, out))
        loader = StatefulDataLoader(p.train_data, batch_size=args.batch, collate_fn=p.collate,  # as loaders.build_loader
                                    num_workers=args.workers, pin_memory=args.device == "cuda",
                                    persistent_workers=False, generator=torch.Generator().manual_seed(0))
        drain(loader, window, args.device)


def ours_train(args, window: Window) -> None:
    from mm_ptft.contracts import Callback
    from mm_ptft.run import train

    class Timer(Callback):
        def on_step_end(self, trainer: Any) -> None:
            window.tick(trainer.step)

    with tempfile.TemporaryDirectory() as out:
        train(ours_config(args, out), callbacks=[Timer()])


def webdataset_compat() -> None:
    """open_clip_train 3.3's ``group_by_keys_nothrow`` fails (KeyError 'fname') on the end-of-shard marker ``{}``
    that webdataset >= 0.2.96 yields (mlfoundations/open_clip#935; the fix there: ``eof_value=None``): drop the
    markers before it groups, as the older webdataset did."""
    import open_clip_train.data as D

    if not getattr(D.group_by_keys_nothrow, "drops_eof", False):
        group = D.group_by_keys_nothrow

        def without_eof(data: Iterable[dict], *a: Any, **kw: Any) -> Iterator[dict]:
            return group((s for s in data if s), *a, **kw)

        without_eof.drops_eof = True  # type: ignore[attr-defined]
        D.group_by_keys_nothrow = without_eof


def open_clip_data(args) -> tuple[Any, Any]:
    """(open_clip model on the device, its ``DataInfo`` from ``get_wds_dataset``) as ``open_clip_train.main`` builds them."""
    import open_clip
    from open_clip_train.data import get_wds_dataset

    webdataset_compat()
    torch.manual_seed(0)
    model, _, val_transform = open_clip.create_model_and_transforms(args.model, force_image_size=args.image_size,
                                                                    output_dict=True)
    dargs = SimpleNamespace(train_data=args.train, train_num_samples=args.shards * args.per_shard,
                            dataset_resampled=False, batch_size=args.batch, workers=args.workers, world_size=1,
                            seed=0, train_data_upsampling_factors=None)
    info = get_wds_dataset(dargs, val_transform, True, 0, tokenizer=open_clip.get_tokenizer(args.model))
    return model.to(args.device), info


class Timed:
    """The first ``warmup + window`` batches of an open_clip loader, ticking ``window`` with the steps done so far
    before each request (and after the last step)."""

    def __init__(self, loader: Any, window: Window, batch: int) -> None:
        self.loader, self.window = loader, window
        self.num_batches = window.warmup + window.window
        self.num_samples = self.num_batches * batch

    def __iter__(self) -> Iterator[Any]:
        batches = iter(self.loader)
        for step in range(self.num_batches):
            self.window.tick(step)
            yield next(batches)
        self.window.tick(self.num_batches)


def open_clip_pipeline(args, window: Window) -> None:
    _, info = open_clip_data(args)
    drain(info.dataloader, window, args.device)


def open_clip_train(args, window: Window) -> None:
    import open_clip
    from open_clip_train.train import train_one_epoch
    from vs_open_clip import open_clip_train_setup

    model, info = open_clip_data(args)
    opt, scaler, oargs = open_clip_train_setup(model, args)
    timed = Timed(info.dataloader, window, args.batch)
    train_one_epoch(model, {"train": SimpleNamespace(dataloader=timed, set_epoch=info.set_epoch)},
                    open_clip.ClipLoss(), 0, opt, scaler, None, None, oargs)


SIDES: dict[tuple[str, str], Callable[[Any, Window], None]] = {
    ("ours", "pipeline"): ours_pipeline, ("open_clip", "pipeline"): open_clip_pipeline,
    ("ours", "train"): ours_train, ("open_clip", "train"): open_clip_train}


def run_side(args) -> None:
    """In the subprocess: one side, one mode; prints its figures as one JSON line."""
    import logging

    logging.disable(logging.INFO)
    sampler = RssSampler()
    window = Window(args.warmup, args.window, args.device, sampler.start_window)
    SIDES[(args.side, args.mode)](args, window)
    print(json.dumps({"rate": window.rate(args.batch), **memory(sampler, args.device)}))


# ------------------------------------------------------------------------------------------ driver
def spawn(args, side: str, mode: str) -> dict[str, float]:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("side", "mode", "repeats")]
    cmd = [sys.executable, os.path.abspath(__file__), f"--side={side}", f"--mode={mode}", *flags]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if res.returncode != 0:
        raise RuntimeError(f"{side} {mode} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def mean_sd(xs: list[float]) -> str:
    if any(math.isnan(x) for x in xs):
        return "n/a"
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.3f}"


def compare(args, mode: str) -> None:
    runs: dict[str, list[dict[str, float]]] = {"ours": [], "open_clip": []}
    for rep in range(args.repeats):
        for side in (("ours", "open_clip") if rep % 2 == 0 else ("open_clip", "ours")):
            runs[side].append(spawn(args, side, mode))
            r = runs[side][-1]
            print(f"  {mode} rep {rep} {side:9s} {r['rate']:8.1f} samples/s  RSS main {r['rss_main_mb']:6.0f} MiB  "
                  f"worker {r['rss_worker_mb']:6.0f} MiB  PSS {r['pss_mb']:6.0f} MiB (window {r['pss_window_mb']:6.0f})  "
                  f"GPU {r['gpu_gib']:.2f} GiB",
                  flush=True)
    ratios = {k: [o[k] / t[k] for o, t in zip(runs["ours"], runs["open_clip"])]
              for k in ("rate", "rss_main_mb", "rss_worker_mb", "pss_mb", "pss_window_mb", "gpu_gib")}
    print(f"{mode}: ours/open_clip over {args.repeats} reps: samples/s {mean_sd(ratios['rate'])}   "
          f"RSS main {mean_sd(ratios['rss_main_mb'])}  worker {mean_sd(ratios['rss_worker_mb'])}  "
          f"PSS {mean_sd(ratios['pss_mb'])} (window {mean_sd(ratios['pss_window_mb'])})  GPU mem {mean_sd(ratios['gpu_gib'])}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", default="pipeline", choices=["pipeline", "train", "both"])
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--window", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--per-shard", type=int, default=500)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--data-dir", default="", help="where to write the shards (default: a temporary folder)")
    ap.add_argument("--side", default="", help=argparse.SUPPRESS)
    ap.add_argument("--train", default="", help=argparse.SUPPRESS)
    ap.add_argument("--eval", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        return run_side(args)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.data_dir or tmp
        t0 = time.perf_counter()
        args.train, args.eval = write_shards(folder, args.shards, args.per_shard, args.batch)
        print(f"{args.shards} shards x {args.per_shard} JPEG 320x240 q90 + captions in {folder} "
              f"({time.perf_counter() - t0:.0f} s); model={args.model} image={args.image_size} batch={args.batch} "
              f"workers={args.workers} warmup={args.warmup} window={args.window} device={args.device}", flush=True)
        for mode in (("pipeline", "train") if args.mode == "both" else (args.mode,)):
            compare(args, mode)


if __name__ == "__main__":
    main()
