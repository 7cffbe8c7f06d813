"""Optimizers by name on the tiny text recipe: eval accuracy and training samples/s of each, same steps and data.

    python benchmarks/optimizers.py [--steps 100]

lr per optimizer as commonly advised relative to AdamW (Lion 3-10x smaller, LAMB larger: its trust ratio
scales each update to the weight norm); not tuned further. RAdam skips adaptive steps while its variance warms up.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from mm_ptft.run import load_config, train

TINY = "recipes/text_classification/tiny.yaml"
RUNS = {"adamw (built-in)": ["optim.name=adamw", "optim.lr=1e-3"],
        "lamb (timm)": ["optim.name=lamb", "optim.lr=1e-2"],
        "lion (timm)": ["optim.name=lion", "optim.lr=2e-4"],
        "torch.RAdam": ["optim.name=torch.RAdam", "optim.lr=1e-3", "optim.kwargs={decoupled_weight_decay: true}"],
        "torch.Adafactor": ["optim.name=torch.Adafactor", "optim.lr=1e-2"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("| optimizer | eval accuracy | training samples/s |\n|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, over in RUNS.items():
            out = Path(tmp) / name.split()[0]
            res = train(load_config(TINY, [f"output_dir={out}", f"train.max_steps={args.steps}", "train.report=false",
                                           *over]))
            rates = [json.loads(ln).get("samples_per_s") for ln in (out / "metrics.jsonl").read_text().splitlines()]
            rates = [r for r in rates if r]
            print(f"| {name} | {res['accuracy']:.3f} | {sum(rates) / len(rates):.0f} |")


if __name__ == "__main__":
    main()
