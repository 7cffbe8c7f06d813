"""Trainer overhead: the same model, data and steps through mm_ptft's Trainer and a minimal
hand-written PyTorch loop, in one run. Prints samples/s of both and their ratio (goal >= 0.97).

Both are timed over the same steady-state window, steps N+1..2N of a 2N-step run (after warm-up,
before the trainer's final evaluation and checkpoint), so the ratio is the per-step overhead.

    python benchmarks/trainer_overhead.py [--steps 60] [--device cpu|cuda] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from mm_ptft.run import load_config
from mm_ptft.tasks.text_classification import TextClassification
from mm_ptft.train.trainer import Trainer, seed_everything, to_device

MODEL = ["model.text.config.hidden_size=256", "model.text.config.num_hidden_layers=4",
         "model.text.config.num_attention_heads=4", "model.text.config.intermediate_size=1024"]


def build(out: str, steps: int, device: str):
    cfg = load_config("recipes/text_classification/tiny.yaml",
                      [f"output_dir={out}", f"train.max_steps={steps}", "train.batch_size=32", f"train.device={device}",
                       "train.group_by_length=false", "train.report=false", "train.log_every=1000", *MODEL])
    seed_everything(0)
    return cfg, TextClassification.prepare(cfg)


def run_trainer(steps: int, device: str) -> float:
    """samples/s over steps N+1..2N, as the trainer itself logs it."""
    with tempfile.TemporaryDirectory() as out:
        cfg, p = build(out, 2 * steps, device)
        cfg.train.log_every = steps
        Trainer(p.task, cfg, p.train_data, None, p.collate).fit()
        logs = [json.loads(ln) for ln in open(f"{out}/metrics.jsonl") if '"train"' in ln]
        return logs[-1]["samples_per_s"]


def run_hand_loop(steps: int, device: str) -> float:
    """What a user would write by hand: DataLoader, AdamW, linear warmup schedule, clipping."""
    with tempfile.TemporaryDirectory() as out:
        cfg, p = build(out, steps, device)
        model = p.task.to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                fused=True)  # the fastest a hand loop gets; the trainer uses fused kernels too
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10) * max(0.0, 1 - s / (2 * steps)))
        loader = torch.utils.data.DataLoader(p.train_data, batch_size=32, shuffle=True, collate_fn=p.collate)
        t0, done = time.perf_counter(), 0
        while done < 2 * steps:
            for batch in loader:
                loss = model(to_device(batch, torch.device(device)))["loss"]
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                sched.step()
                done += 1
                if done == steps:  # start the clock after the first N steps, like the trainer's window
                    _sync(device)
                    t0 = time.perf_counter()
                if done == 2 * steps:
                    break
        _sync(device)
        return steps * 32 / (time.perf_counter() - t0)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    run_hand_loop(5, args.device), run_trainer(5, args.device)  # warm-up (allocator, kernels, caches)
    hand, ours = [], []
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
        hand.append(run_hand_loop(args.steps, args.device))
        ours.append(run_trainer(args.steps, args.device))
    h, o = statistics.median(hand), statistics.median(ours)
    print(f"device={args.device} steps={args.steps} batch=32 repeats={args.repeats}")
    print(f"hand-written loop : {h:8.1f} samples/s  (runs: {', '.join(f'{x:.1f}' for x in hand)})")
    print(f"mm_ptft Trainer   : {o:8.1f} samples/s  (runs: {', '.join(f'{x:.1f}' for x in ours)})")
    print(f"throughput ratio (Trainer / hand loop): {o / h:.3f}")


if __name__ == "__main__":
    main()
