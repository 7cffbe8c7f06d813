"""Distilled student vs the same student trained alone, over several seeds (tiny text data, CPU).

    python benchmarks/distillation.py [--seeds 5] [--epochs 5] [--out runs/distill_bench]

Teacher: the tiny text recipe's 2-layer BERT (4 epochs). Student: the built-in 1-layer, 32-wide transformer
with the teacher's tokenizer, the same data, optimiser, schedule and epochs; alone (cross-entropy) or
distilled (recipes/distillation/tiny.yaml: alpha 0.7, T 2). Prints eval accuracy per seed and the means.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from mm_ptft.run import load_config
from mm_ptft.run import train

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--out", default="runs/distill_bench")
    args = ap.parse_args()
    out = Path(args.out)
    teacher = out / "teacher"
    quiet = ["train.report=false", "train.log_every=1000"]
    if not (teacher / "checkpoints").is_dir():
        train(load_config(ROOT / "recipes/text_classification/tiny.yaml", [f"output_dir={teacher}", *quiet]))
    student = ("{name: tiny, dim: 32, depth: 1, heads: 2, max_length: 64, tokenizer: %s}"
               % (teacher / "tokenizer").resolve())
    alone, kd = [], []
    for seed in range(args.seeds):
        common = [f"seed={seed}", f"train.epochs={args.epochs}", "train.overwrite_output_dir=true", *quiet]
        a = train(load_config(ROOT / "recipes/text_classification/tiny.yaml",
                              [f"output_dir={out / f'alone_{seed}'}", f"model.text={student}", "optim.lr=0.002",
                               "sched.warmup_steps=5", *common]))["accuracy"]
        k = train(load_config(ROOT / "recipes/distillation/tiny.yaml",
                              [f"output_dir={out / f'kd_{seed}'}", f"model.teacher_run={teacher}", *common]))["accuracy"]
        alone.append(a), kd.append(k)
        print(f"seed {seed}: student alone {a:.3f}   distilled {k:.3f}", flush=True)
    print(f"mean over {args.seeds} seeds: alone {statistics.mean(alone):.3f}  distilled {statistics.mean(kd):.3f}  "
          f"(distilled better in {sum(k > a for a, k in zip(alone, kd))}/{args.seeds})")


if __name__ == "__main__":
    main()
