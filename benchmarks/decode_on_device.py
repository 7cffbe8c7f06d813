"""Where decoding on the device pays: samples/s of the image input pipeline with ``data.decode_on=worker`` (loader
workers decode with PIL and run the v2 train transforms) vs ``data.decode_on=device`` (workers read JPEG bytes; the
trainer's process decodes them in one ``torchvision.io.decode_jpeg`` call on the device and runs the same v2 ops
there), on generated JPEGs at 224x224 and a larger photo size (500x375, ImageNet's typical), with CLIP's
preprocessing (224 px, bicubic, CLIP mean/std) and the recipe's default train augmentation (RandomResizedCrop +
horizontal flip).

    python benchmarks/decode_on_device.py --device cpu --workers 0 2 --n 256
    python benchmarks/decode_on_device.py --device cuda --workers 0 4 8 --n 2048 --batch 256 --dtype bf16

Each arm builds a ``StatefulDataLoader`` (persistent workers, pinned memory on CUDA) over the same files, runs one
untimed pass (worker start-up, lazy imports, cuDNN/nvjpeg handles), then times ``--repeats`` passes: every batch is
moved to the device and (device arm) decoded and transformed there; the clock stops after a device synchronise.
Reported per arm: samples/s (mean ± sd over repeats) and the trainer process's busy time per batch in
``to_device`` + ``on_device`` (the device arm's decode and transforms: on CUDA mostly launches, on CPU the work
itself; with 0 workers the loading itself also runs in that process, outside this figure). Per size, a parity row:
mean and max |device - worker| of the deterministic eval pipeline (the decoders' difference).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from typing import Any

import numpy as np
import torch
from PIL import Image

from mm_ptft.contracts import on_device
from mm_ptft.data.image import ImageAugment, ImageCollator, ImageDataset, classification_ops, load_image
from mm_ptft.data.image_device import DeviceDecode, EncodedReader
from mm_ptft.encoders.image import Preprocess
from mm_ptft.train.trainer import to_device

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def photo_jpeg(w: int, h: int, rng: np.random.Generator) -> bytes:
    """A photo-like JPEG (gradients, blocks, noise; quality 90): entropy data of a realistic size."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 / w, y * 255 / h, (x * y) % 256], -1).astype(np.float64)
    for _ in range(6):
        x0, y0 = rng.integers(0, w - w // 4), rng.integers(0, h - h // 4)
        img[y0: y0 + h // 4, x0: x0 + w // 4] = rng.integers(0, 255, 3)
    img += rng.normal(0, 10, img.shape)
    out = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def write_jpegs(root: str, n: int, w: int, h: int) -> list[str]:
    rng = np.random.default_rng(0)
    os.makedirs(root, exist_ok=True)
    paths = []
    for i in range(n):
        path = os.path.join(root, f"{i:05d}.jpg")
        with open(path, "wb") as f:
            f.write(photo_jpeg(w, h, rng))
        paths.append(path)
    return paths


def clip_ops() -> dict[bool, Any]:
    """The recipe's (train, eval) pipelines for a CLIP image tower: 224 px, bicubic, CLIP mean/std, no crop margin."""
    pre = Preprocess.make(224, CLIP_MEAN, CLIP_STD, "bicubic", crop_pct=1.0)
    return {t: classification_ops(pre, ImageAugment(), t) for t in (True, False)}


def parity(files: list[str], device: torch.device) -> dict[str, float]:
    """Mean and max |device - worker| of the eval pipeline (deterministic) on up to 64 of ``files``, normalised units:
    the decoders' difference (libjpeg-turbo vs nvjpeg on CUDA) after resize and normalisation."""
    files, ops = files[:64], clip_ops()
    worker = torch.stack([ops[False].compose()(load_image(f)) for f in files])  # (B, 3, 224, 224)
    collate = DeviceDecode(ImageCollator(), ops)
    items = [{"image": EncodedReader(False)(f, f)} for f in files]
    diff = (on_device(collate, collate(items), device)["image"].float().cpu() - worker).abs()
    return {"mean_abs_diff": float(diff.mean()), "max_abs_diff": float(diff.max())}


def loader(files: list[str], arm: str, workers: int, batch: int, device: torch.device) -> tuple[Any, Any]:
    """(StatefulDataLoader, collate) of one arm over ``files``, with the recipe's train pipeline at CLIP size."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    ops, labels = clip_ops(), [0] * len(files)
    if arm == "worker":
        data, collate = ImageDataset(files, labels, ops[True].compose()), ImageCollator()
    else:
        data, collate = ImageDataset(files, labels, None, read=EncodedReader(True)), DeviceDecode(ImageCollator(), ops)
    return StatefulDataLoader(data, batch_size=batch, shuffle=True, collate_fn=collate, num_workers=workers,
                              persistent_workers=workers > 0, pin_memory=device.type == "cuda",
                              prefetch_factor=4 if workers else None,
                              generator=torch.Generator().manual_seed(0)), collate


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def one_pass(dl: Any, collate: Any, device: torch.device, dtype: torch.dtype) -> tuple[int, float, float]:
    """(samples, seconds, seconds the trainer's process spent in to_device + on_device) of one pass."""
    n, busy = 0, 0.0
    sync(device)
    t0 = time.perf_counter()
    for batch in dl:
        t1 = time.perf_counter()
        batch = on_device(collate, to_device(batch, device), device)
        x = batch["image"].to(dtype)  # (B, 3, 224, 224): what a bf16 model consumes
        busy += time.perf_counter() - t1
        n += x.shape[0]
    sync(device)
    return n, time.perf_counter() - t0, busy


def measure(files: list[str], arm: str, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    device, dtype = torch.device(args.device), {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    dl, collate = loader(files, arm, workers, args.batch, device)
    one_pass(dl, collate, device, dtype)  # warm-up: workers, imports, decoder handles
    rates, busy = [], []
    for _ in range(args.repeats):
        n, secs, b = one_pass(dl, collate, device, dtype)
        rates.append(n / secs)
        busy.append(1000 * b / max(1, -(-n // args.batch)))
    del dl
    return {"arm": arm, "workers": workers, "samples_per_s": statistics.mean(rates),
            "sd": statistics.stdev(rates) if len(rates) > 1 else 0.0, "main_ms_per_batch": statistics.mean(busy)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--sizes", nargs="+", default=["224x224", "500x375"], help="WxH of the generated JPEGs")
    ap.add_argument("--n", type=int, default=256, help="images per size (one pass)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the trainer process (0: default)")
    ap.add_argument("--out", default="", help="write the rows as JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            w, h = (int(v) for v in size.split("x"))
            files = write_jpegs(os.path.join(tmp, size), args.n, w, h)
            check = {"size": size, "arm": "parity", **parity(files, torch.device(args.device))}
            rows.append(check)
            print(f"{size:>8} eval pipeline, device vs worker: mean |diff| {check['mean_abs_diff']:.2e}, "
                  f"max {check['max_abs_diff']:.2e} (normalised units)", flush=True)
            for workers in args.workers:
                for arm in ("worker", "device"):
                    row = {"size": size, **measure(files, arm, workers, args)}
                    rows.append(row)
                    print(f"{size:>8} {arm:>6} workers={workers}: {row['samples_per_s']:8.1f} ± {row['sd']:.1f} "
                          f"samples/s, trainer process {row['main_ms_per_batch']:.1f} ms/batch", flush=True)
    meta = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
            "torch": torch.__version__, "cpus": os.cpu_count(), **vars(args)}
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
