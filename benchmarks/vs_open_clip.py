"""Contrastive image-text pretraining: mm_ptft vs open_clip's own training loop
(``open_clip_train.train.train_one_epoch``) on the same towers, batch and precision, in one process, seeds
interleaved. Reports samples/s and peak GPU memory of both, their ratios, and the model FLOPs utilisation.
GPU only: on a CPU ``compare`` returns a "skipped: needs CUDA" section (never a CPU number in its place).

    python benchmarks/vs_open_clip.py [--quick] [--seeds 5]        # ViT-B/16, batch 128, bf16, on CUDA

Both sides train CLIP's symmetric InfoNCE with a learnable temperature, AdamW and clipping at 1.0;
mm_ptft adds its (tiny) per-modality projection heads on top of open_clip's projected towers. Both are
timed by ``benchmarks.common.StepClock`` over the same window (w, N] (open_clip's side: a stamp after each
``optimizer.step``). MFU = model FLOPs per step (torch.utils.flop_counter) / step time / peak dense bf16 rate.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (ClockCallback, StepClock, fmt, paired_rows, script_main, section,  # noqa: E402
                               throughput_rows, window_rule)

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense tensor-core FLOP/s, datasheet


class Synthetic(Dataset):
    """Random images (3, S, S) and captions of 8-20 random BPE tokens, fixed by seed."""

    def __init__(self, n: int, size: int, sot: int, eot: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, size, size, generator=g)
        lens = torch.randint(8, 21, (n,), generator=g)
        self.texts = [[sot, *torch.randint(300, 40000, (int(k),), generator=g).tolist(), eot] for k in lens]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "text": self.texts[i]}


def build_ours(model: str, size: int):
    from mm_ptft.encoders import TEXT_ENCODERS, build_encoder
    from mm_ptft.encoders.image import IMAGE_ENCODERS
    from mm_ptft.heads.pretraining import PretrainTask
    from mm_ptft.objectives import OBJECTIVES

    torch.manual_seed(0)
    towers = {"image": build_encoder(IMAGE_ENCODERS, {"name": "open_clip", "name_or_path": model, "image_size": size},
                                     "model.image"),
              "text": build_encoder(TEXT_ENCODERS, {"name": "open_clip", "name_or_path": model}, "model.text")}
    clip = OBJECTIVES.build({"name": "clip", "embed_dim": towers["text"].out_dim}, "model.objective", encoders=towers)
    return PretrainTask(towers, {"clip": clip}), towers["text"].tokenizer


def ours_config(args: Any, out: str) -> Any:
    """mm_ptft's run config for ``args.steps``/``batch``/``precision``/``device``/``workers``: AdamW at a constant
    5e-4 (as open_clip's side), one log line, no report."""
    from mm_ptft.config import RunConfig

    cfg = RunConfig(task="pretrain_contrastive", output_dir=out)
    cfg.train.max_steps, cfg.train.batch_size, cfg.train.log_every = args.steps, args.batch, args.steps
    cfg.train.precision, cfg.train.device, cfg.train.report = args.precision, args.device, False
    cfg.train.group_by_length, cfg.train.num_workers, cfg.train.keep_last = False, args.workers, 0
    cfg.optim.lr, cfg.sched.name = 5e-4, "constant"
    return cfg


def run_ours(args: Any, data: Dataset, clock: StepClock) -> None:
    from mm_ptft.data.multimodal import MultimodalCollator
    from mm_ptft.train.trainer import Trainer

    clock.begin()
    task, _ = build_ours(args.model, args.image_size)
    clock.count_forward(task)
    with tempfile.TemporaryDirectory() as out:
        cfg = ours_config(args, out)
        torch.cuda.reset_peak_memory_stats()
        Trainer(task, cfg, data, None, MultimodalCollator(0), callbacks=[ClockCallback(clock)]).fit()
        clock.end()


def open_clip_train_setup(model: torch.nn.Module, args) -> tuple[torch.optim.Optimizer, object, SimpleNamespace]:
    """(AdamW, GradScaler or None, the ``args`` namespace ``open_clip_train.train.train_one_epoch`` reads) for
    ``args.device``/``precision``/``batch``: clipping at 1.0, no scheduler, no logging."""
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01, fused=args.device == "cuda")
    precision = {"bf16": "amp_bf16", "fp16": "amp", "fp32": "fp32"}[args.precision]
    scaler = torch.amp.GradScaler() if precision == "amp" else None
    oargs = SimpleNamespace(device=args.device, precision=precision, distill=False, accum_freq=1, skip_scheduler=True,
                            grad_clip_norm=1.0, horovod=False, world_size=1, rank=0, local_rank=0,
                            log_every_n_steps=10**9, batch_size=args.batch, wandb=False, save_logs=False)
    return opt, scaler, oargs


def run_open_clip(args: Any, data: Synthetic, clock: StepClock) -> None:
    import open_clip
    from open_clip_train.train import train_one_epoch

    clock.begin()
    torch.manual_seed(0)
    model = open_clip.create_model(args.model, force_image_size=args.image_size, output_dict=True).to(args.device)
    ctx = model.context_length

    def collate(items):
        texts = torch.zeros(len(items), ctx, dtype=torch.long)
        for i, it in enumerate(items):
            texts[i, : len(it["text"])] = torch.tensor(it["text"][:ctx])
        return torch.stack([it["image"] for it in items]), texts

    loader = DataLoader(data, batch_size=args.batch, shuffle=True, drop_last=True, collate_fn=collate,
                        num_workers=args.workers, pin_memory=True)  # len(data) = steps * batch: one epoch = N steps
    loader.num_batches, loader.num_samples = args.steps, args.steps * args.batch
    info = SimpleNamespace(dataloader=loader, set_epoch=lambda epoch: None)  # open_clip_train.data.DataInfo's shape
    opt, scaler, oargs = open_clip_train_setup(model, args)
    step = opt.step

    def stamped_step(*a: Any, **kw: Any) -> Any:  # the clock from outside their loop: after each optimizer step
        out = step(*a, **kw)
        clock.stamp(args.batch)  # drop_last: every batch is full
        return out

    opt.step = stamped_step
    torch.cuda.reset_peak_memory_stats()
    train_one_epoch(model, {"train": info}, open_clip.ClipLoss(), 0, opt, scaler, None, None, oargs)
    clock.end()


def step_flops(args) -> float:
    """FLOPs of one forward+backward of our task on one batch (torch's flop counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    from mm_ptft.data.multimodal import MultimodalCollator
    from mm_ptft.train.trainer import to_device

    task, tok = build_ours(args.model, args.image_size)
    task.to(args.device).train()
    data = Synthetic(args.batch, args.image_size, tok.cls_token_id or 49406, tok.sep_token_id or 49407)
    batch = to_device(MultimodalCollator(0)([data[i] for i in range(args.batch)]), torch.device(args.device))
    with FlopCounterMode(display=False) as fc:
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            task(batch)["loss"].backward()
    return float(fc.get_total_flops())


SIZES = {"quick": {"steps": 15, "warmup": 5}, "full": {"steps": 40, "warmup": 10}}
ARMS = {"open_clip train_one_epoch": run_open_clip, "mm_ptft Trainer": run_ours}


def compare(quick: bool = False, seeds: int = 5, device: str = "") -> dict[str, Any]:
    title = "CLIP pretraining vs open_clip (ViT-B/16, batch 128, bf16)"
    if not (device or "cuda").startswith("cuda") or not torch.cuda.is_available():
        return section(title, "GPU only", [], [], seeds=0, quick=quick, status="skipped: needs CUDA",
                       notes=["no CUDA device here: no figure recorded (run `python -m benchmarks.run_all --only "
                              "vs_open_clip` on a GPU machine)"])
    import open_clip

    args = argparse.Namespace(model="ViT-B-16", batch=128, image_size=224, precision="bf16", workers=4, device="cuda",
                              **SIZES["quick" if quick else "full"])
    tok = open_clip.get_tokenizer(args.model)
    data = Synthetic(args.steps * args.batch, args.image_size, tok.sot_token_id, tok.eot_token_id)
    t: dict[str, list[dict[str, float]]] = {name: [] for name in ARMS}
    for seed in range(seeds):
        for name in (list(ARMS) if seed % 2 == 0 else list(ARMS)[::-1]):
            clock = StepClock(args.warmup, args.steps, args.device)
            ARMS[name](args, data, clock)
            t[name].append({**clock.timing(), "peak_gib": torch.cuda.max_memory_allocated() / 2**30})
    flops, gpu = step_flops(args), torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in gpu), math.nan)
    mfu = {name: [flops * r["samples_per_s"] / args.batch / peak for r in runs] for name, runs in t.items()}
    rows = [[*r, fmt([x["peak_gib"] for x in t[name]], 2), fmt(mfu[name])] for r, name in zip(throughput_rows(t), t)]
    rows += [[*r, "", ""] for r in paired_rows(t["mm_ptft Trainer"], t["open_clip train_one_epoch"], "mm_ptft vs open_clip",
                                               ("samples_per_s", "peak_gib"))]
    return section(title, window_rule(args.warmup, args.steps),
                   ["arm", "samples/s", "start-up s", "after s", "wall s", "peak GiB", "MFU"], rows, seeds=seeds,
                   quick=quick, raw=t, notes=[f"{gpu}; {flops / 1e12:.2f} TFLOP per step (flop counter), peak "
                                              f"{peak / 1e12:.0f} TFLOP/s dense bf16; synthetic batches built on the CPU "
                                              f"by {args.workers} workers; goal: ≥ 1.05× open_clip at ≤ its memory, ≥ 45% MFU"])


def main() -> None:
    script_main(compare, __doc__.split("\n")[0])


if __name__ == "__main__":
    main()
