"""Contrastive image-text pretraining: mm_ptft vs open_clip's own training loop
(``open_clip_train.train.train_one_epoch``) on the same towers, batch and precision, in one run.
Prints samples/s and peak GPU memory of both, their ratios, and the model FLOPs utilisation.

    python benchmarks/vs_open_clip.py --model ViT-B-16 --batch 128 --steps 20 --precision bf16   # GPU
    python benchmarks/vs_open_clip.py --model ViT-S-32 --batch 16 --steps 4 --image-size 64       # CPU smoke

Both sides train CLIP's symmetric InfoNCE with a learnable temperature, AdamW and clipping at 1.0;
mm_ptft adds its (tiny) per-modality projection heads on top of open_clip's projected towers.
MFU = model FLOPs per step (counted with torch.utils.flop_counter) / step time / peak dense bf16 rate.
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from types import SimpleNamespace

import torch
from torch.utils.data import DataLoader, Dataset

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


def run_ours(args, data: Dataset) -> tuple[float, float, int]:
    from mm_ptft.config import RunConfig
    from mm_ptft.data.multimodal import MultimodalCollator
    from mm_ptft.train.trainer import Trainer

    task, _ = build_ours(args.model, args.image_size)
    n_params = sum(p.numel() for p in task.parameters())
    with tempfile.TemporaryDirectory() as out:
        cfg = RunConfig(task="pretrain_contrastive", output_dir=out)
        cfg.train.max_steps, cfg.train.batch_size, cfg.train.log_every = 2 * args.steps, args.batch, args.steps
        cfg.train.precision, cfg.train.device, cfg.train.report = args.precision, args.device, False
        cfg.train.group_by_length, cfg.train.num_workers, cfg.train.keep_last = False, args.workers, 0
        cfg.optim.lr, cfg.sched.name = 5e-4, "constant"
        trainer = Trainer(task, cfg, data, None, MultimodalCollator(0))
        torch.cuda.reset_peak_memory_stats() if args.device == "cuda" else None
        trainer.fit()
        import json

        logs = [json.loads(ln) for ln in open(f"{out}/metrics.jsonl") if '"train"' in ln]
        rate = logs[-1]["samples_per_s"]  # steps S+1..2S: after warm-up, before the final save
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else float("nan")
    return rate, peak, n_params


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


def run_open_clip(args, data: Synthetic) -> tuple[float, float]:
    import open_clip
    from open_clip_train.train import train_one_epoch

    torch.manual_seed(0)
    model = open_clip.create_model(args.model, force_image_size=args.image_size, output_dict=True).to(args.device)
    ctx = model.context_length

    def collate(items):
        texts = torch.zeros(len(items), ctx, dtype=torch.long)
        for i, it in enumerate(items):
            texts[i, : len(it["text"])] = torch.tensor(it["text"][:ctx])
        return torch.stack([it["image"] for it in items]), texts

    subset = torch.utils.data.Subset(data, range(args.steps * args.batch))  # one epoch = exactly `steps` batches
    loader = DataLoader(subset, batch_size=args.batch, shuffle=True, drop_last=True, collate_fn=collate,
                        num_workers=args.workers, pin_memory=args.device == "cuda")
    loader.num_batches, loader.num_samples = args.steps, args.steps * args.batch
    info = SimpleNamespace(dataloader=loader, set_epoch=lambda epoch: None)  # open_clip_train.data.DataInfo's shape
    opt, scaler, oargs = open_clip_train_setup(model, args)
    loss = open_clip.ClipLoss()
    train_one_epoch(model, {"train": info}, loss, 0, opt, scaler, None, None, oargs)  # warm-up epoch
    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    train_one_epoch(model, {"train": info}, loss, 1, opt, scaler, None, None, oargs)
    if args.device == "cuda":
        torch.cuda.synchronize()
    rate = args.steps * args.batch / (time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else float("nan")
    return rate, peak


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    import open_clip

    tok = open_clip.get_tokenizer(args.model)
    data = Synthetic(args.steps * args.batch, args.image_size, tok.sot_token_id, tok.eot_token_id)
    theirs, theirs_mem = run_open_clip(args, data)
    ours, ours_mem, n_params = run_ours(args, data)
    flops = step_flops(args)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), math.nan)
    print(f"device={name} model={args.model} image={args.image_size} batch={args.batch} steps={args.steps} "
          f"precision={args.precision} params={n_params / 1e6:.1f}M step_flops={flops / 1e12:.2f}T")
    print(f"open_clip train_one_epoch : {theirs:9.1f} samples/s  peak {theirs_mem:6.2f} GiB  "
          f"MFU {flops * theirs / args.batch / peak:.1%}")
    print(f"mm_ptft Trainer           : {ours:9.1f} samples/s  peak {ours_mem:6.2f} GiB  "
          f"MFU {flops * ours / args.batch / peak:.1%}")
    print(f"speed ratio (mm_ptft / open_clip): {ours / theirs:.3f}   memory ratio: {ours_mem / theirs_mem:.3f}")


if __name__ == "__main__":
    main()
