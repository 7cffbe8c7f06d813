"""Accuracy and CPU latency vs sparsity of a pruned tiny text run, with and without fine-tuning after pruning.

    nice -n 10 python benchmarks/prune_sparsity.py [--amounts 0 0.3 0.5 0.7 0.9] [--finetune-steps 30]
                                                   [--out runs/prune_bench] [--run TRAINED_RUN]

Trains the tiny text recipe (2-layer BERT, 4 epochs) once (or takes ``--run``), then ``mm-ptft prune`` (``prune_run``) at each amount,
unstructured (global L1) and structured (L2 rows per layer), without and with ``--finetune-steps`` of fine-tuning
with the masks kept. Accuracy: the pruned run's eval accuracy. Latency: median forward time of one eval batch
(32 rows) on CPU, one thread, over 30 repeats, of the exported (masks folded) model: zeros in dense weights make
no kernel faster, so latency is expected flat; the sparsity shows in compressed size, not speed, unless rows are
physically removed.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from mm_ptft.run.prune import prune_run
from mm_ptft.run import load_config, load_run, train

ROOT = Path(__file__).resolve().parents[1]


def latency_ms(run_dir: Path, reps: int = 30) -> float:
    _, prepared, _ = load_run(run_dir)
    batch = prepared.collate([prepared.eval_data[i] for i in range(min(32, len(prepared.eval_data)))])
    torch.set_num_threads(1)
    times = []
    with torch.inference_mode():
        for i in range(reps + 3):
            t0 = time.perf_counter()
            prepared.task(batch)
            if i >= 3:  # warm-up left out
                times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--amounts", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7, 0.9])
    ap.add_argument("--finetune-steps", type=int, default=30)
    ap.add_argument("--out", default="runs/prune_bench")
    ap.add_argument("--run", default=None, help="an already trained text classification run (default: train one)")
    args = ap.parse_args()
    out = Path(args.out)
    base = Path(args.run) if args.run else out / "trained"
    if not (base / "final_metrics.json").is_file():  # trained to the end (else trained again)
        train(load_config(ROOT / "recipes/text_classification/tiny.yaml",
                          [f"output_dir={base}", "train.report=false", "train.report_to=[]", "train.log_every=1000",
                           "train.overwrite_output_dir=true"]))
    rows = []
    for structured in (False, True):
        for amount in args.amounts:
            for steps in (0, args.finetune_steps):
                dest = out / f"{'rows' if structured else 'l1'}_{round(amount * 100)}_ft{steps}"
                s = prune_run(base, amount, structured, out=dest, finetune_steps=steps)
                acc = (s["metrics_after_finetune"] or s["metrics_after"])["accuracy"]
                rows.append({"method": "structured" if structured else "unstructured", "amount": amount,
                             "finetune_steps": steps, "sparsity": s["sparsity"], "accuracy": acc,
                             "accuracy_unpruned": s["metrics_before"]["accuracy"], "latency_ms": latency_ms(dest)})
                print(json.dumps(rows[-1]), flush=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    print("\n| method | amount | sparsity | acc (no ft) | acc (ft %d steps) | latency ms (no ft) |" % args.finetune_steps)
    print("|---|---|---|---|---|---|")
    for r0, r1 in zip(rows[::2], rows[1::2]):
        print(f"| {r0['method']} | {r0['amount']:.1f} | {r0['sparsity']:.3f} | {r0['accuracy']:.3f} | "
              f"{r1['accuracy']:.3f} | {r0['latency_ms']:.2f} |")


if __name__ == "__main__":
    main()
