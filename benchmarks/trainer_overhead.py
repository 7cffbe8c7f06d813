"""Trainer overhead: the same model, data and steps through mm_ptft's Trainer and a minimal
hand-written PyTorch loop, in one run. Prints samples/s of both and their ratio (goal >= 0.97).

Both are timed over the same steady-state window, steps N+1..2N of a 2N-step run (after warm-up,
before the trainer's final evaluation and checkpoint). The trainer's logged rate covers the wall time
since its previous log, so it includes the checkpoint it writes at each epoch end inside the window
(the hand loop writes none); ``train_time_s`` leaves checkpoints and evaluations out, and both ratios
are printed: "wall" (what a user gets) and "train-only" (the per-step overhead).

    python benchmarks/trainer_overhead.py [--steps 60] [--device cpu|cuda] [--repeats 3]
        [--batch 32] [--hidden 256] [--layers 4]
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

SIZE = {"batch": 32, "hidden": 256, "layers": 4}  # set from the command line


def model_overrides() -> list[str]:
    h = SIZE["hidden"]
    return [f"model.text.config.hidden_size={h}", f"model.text.config.num_hidden_layers={SIZE['layers']}",
            f"model.text.config.num_attention_heads={max(1, h // 64)}", f"model.text.config.intermediate_size={4 * h}"]


def build(out: str, steps: int, device: str):
    cfg = load_config("recipes/text_classification/tiny.yaml",
                      [f"output_dir={out}", f"train.max_steps={steps}", f"train.batch_size={SIZE['batch']}",
                       f"train.device={device}", "train.group_by_length=false", "train.report=false",
                       "train.log_every=1000", *model_overrides()])
    seed_everything(0)
    return cfg, TextClassification.prepare(cfg)


def run_trainer(steps: int, device: str) -> tuple[float, float]:
    """samples/s over steps N+1..2N as the trainer logs it: over the wall time, and over its train time."""
    with tempfile.TemporaryDirectory() as out:
        cfg, p = build(out, 2 * steps, device)
        cfg.train.log_every = steps
        Trainer(p.task, cfg, p.train_data, None, p.collate).fit()
        last = [json.loads(ln) for ln in open(f"{out}/metrics.jsonl") if '"train"' in ln][-1]
        samples = last["samples_per_s"] * (last["train_time_s"] + last["eval_time_s"] + last["save_time_s"])
        return last["samples_per_s"], samples / last["train_time_s"]


def run_hand_loop(steps: int, device: str) -> float:
    """What a user would write by hand: DataLoader, AdamW, linear warmup schedule, clipping."""
    with tempfile.TemporaryDirectory() as out:
        cfg, p = build(out, steps, device)
        model = p.task.to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                fused=True)  # the fastest a hand loop gets; the trainer uses fused kernels too
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10) * max(0.0, 1 - s / (2 * steps)))
        loader = torch.utils.data.DataLoader(p.train_data, batch_size=SIZE["batch"], shuffle=True, collate_fn=p.collate,
                                             pin_memory=device.startswith("cuda"))
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
        return steps * SIZE["batch"] / (time.perf_counter() - t0)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    for key, default in SIZE.items():
        ap.add_argument(f"--{key}", type=int, default=default)
    args = ap.parse_args()
    SIZE.update({k: getattr(args, k) for k in SIZE})
    run_hand_loop(5, args.device), run_trainer(5, args.device)  # warm-up (allocator, kernels, caches)
    hand, wall, train_only = [], [], []
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
        hand.append(run_hand_loop(args.steps, args.device))
        w, t = run_trainer(args.steps, args.device)
        wall.append(w), train_only.append(t)
    h = statistics.median(hand)
    runs = lambda xs: ", ".join(f"{x:.1f}" for x in xs)  # noqa: E731
    print(f"device={args.device} steps={args.steps} batch={SIZE['batch']} hidden={SIZE['hidden']} "
          f"layers={SIZE['layers']} repeats={args.repeats}")
    print(f"hand-written loop          : {h:8.1f} samples/s  (runs: {runs(hand)})")
    for name, xs in (("wall, checkpoint included", wall), ("train time only", train_only)):
        print(f"mm_ptft Trainer ({name}): {statistics.median(xs):8.1f} samples/s  (runs: {runs(xs)})")
    print(f"throughput ratio (Trainer / hand loop): wall {statistics.median(wall) / h:.3f}, "
          f"train-only {statistics.median(train_only) / h:.3f}")


if __name__ == "__main__":
    main()
