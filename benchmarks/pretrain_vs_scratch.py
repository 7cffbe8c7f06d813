"""Does cross-modal pretraining help few-label fine-tuning? Pretrained vs from-scratch, per modality.

    python benchmarks/pretrain_vs_scratch.py --out runs/bench_pretrain_vs_scratch

1. Pretrain with the joint recipe (``recipes/pretrain_joint/tiny.yaml``: image-text + audio-text
   CLIP and caption MLM) on the generated paired shapes; labels are never used.
2. For each modality, fine-tune a shape classifier (4 classes) on ``--labels-per-class`` labelled
   training samples: once from the pretrained encoder directory (``name_or_path=RUN/encoders/<m>``,
   the handoff every fine-tuning recipe uses) and once from random init with the same architecture.
3. Print accuracy on the 200-sample eval split (mean ± sd over ``--seeds``) as a markdown table.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def pretrain(out: Path, epochs: int) -> tuple[Path, Any]:
    """Run the joint recipe; return its run directory and resolved config."""
    from mm_ptft.run import load_config
    from mm_ptft.run import train

    cfg = load_config(ROOT / "recipes/pretrain_joint/tiny.yaml",
                      [f"output_dir={out / 'pretrain'}", f"train.epochs={epochs}", "train.report=false",
                       "train.overwrite_output_dir=true"])
    results = train(cfg)
    print(f"pretraining: {json.dumps({k: round(v, 3) for k, v in results.items()})}", file=sys.stderr)
    return out / "pretrain", cfg


def few_label_rows(manifest: str, per_class: int, seed: int) -> list[int]:
    """Row indices of ``per_class`` samples of each shape."""
    rows = [json.loads(line)["label"] for line in open(manifest)]
    rng = random.Random(seed)
    picked = []
    for label in sorted(set(rows)):
        idx = [i for i, r in enumerate(rows) if r == label]
        picked += rng.sample(idx, per_class)
    return sorted(picked)


def finetune(modality: str, spec: dict[str, Any], train_rows: list[int], cfg: Any, out: Path, seed: int,
             epochs: int, lr: float) -> float:
    """Fine-tune a shape classifier on ``train_rows`` of the training manifest; eval accuracy."""
    from mm_ptft.config import RunConfig, parse
    from mm_ptft.data.multimodal import MultimodalCollator
    from mm_ptft.data.tables import LabelMap, load_table
    from mm_ptft.heads.classification import ClassificationTask
    from mm_ptft.tasks.pretrain_common import build_encoders, media_config, paired_split
    from mm_ptft.train.trainer import Trainer, seed_everything

    seed_everything(seed)
    d = cfg.data
    table, eval_table = load_table(d.train_file), load_table(d.eval_file)
    labels = LabelMap.from_values(table["label"])
    specs = type(cfg.model)(**{modality: spec})
    encoders = build_encoders(specs, [modality], str(out), None)
    media, counters = media_config(encoders, d), {}
    tr = paired_split(table.select(train_rows), d.train_file, [modality], d, media, encoders, labels, counters)
    ev = paired_split(eval_table, d.eval_file, [modality], d, media, encoders, labels, counters)
    run_cfg = parse(RunConfig, {"task": "bench", "output_dir": str(out), "seed": seed,
                                "train": {"epochs": epochs, "batch_size": 16, "log_every": 1000, "report": False,
                                          "group_by_length": False, "keep_last": 0},
                                "optim": {"lr": lr, "weight_decay": 0.01}, "sched": {"name": "cosine"}})
    task = ClassificationTask(encoders[modality], len(labels), dropout=0.1)
    pad = encoders["text"].tokenizer.pad_token_id if modality == "text" else 0
    return Trainer(task, run_cfg, tr, ev, MultimodalCollator(pad)).fit()["accuracy"]


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/bench_pretrain_vs_scratch")
    ap.add_argument("--labels-per-class", type=int, default=4)
    ap.add_argument("--pretrain-epochs", type=int, default=8)
    ap.add_argument("--finetune-epochs", type=int, default=20)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--modalities", nargs="+", default=["image", "audio", "text"])
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default; "
                    "1 is fastest for these tiny models on a busy CPU)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    t0 = time.time()
    run, cfg = pretrain(out, args.pretrain_epochs)
    t_pre = time.time() - t0
    rows = []
    for m in args.modalities:
        scratch_spec = dict(getattr(cfg.model, m))  # the architecture the pretraining run used
        pretrained_spec = {"name_or_path": str(run / "encoders" / m)}
        acc: dict[str, list[float]] = {"scratch": [], "pretrained": []}
        for seed in args.seeds:
            picked = few_label_rows(cfg.data.train_file, args.labels_per_class, seed)
            for init, spec in (("scratch", scratch_spec), ("pretrained", pretrained_spec)):
                acc[init].append(finetune(m, spec, picked, cfg, out / f"ft_{m}_{init}_{seed}", seed,
                                          args.finetune_epochs, args.lr))
        rows.append({"modality": m, "labels": 4 * args.labels_per_class, **{k: v for k, v in acc.items()}})
    print_table(rows, args, t_pre, time.time() - t0)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    return rows


def _fmt(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.3f} ± {sd:.3f}"


def print_table(rows: list[dict[str, Any]], args: Any, t_pre: float, t_all: float) -> None:
    print(f"\nFew-label shape classification (4 classes, chance 0.25), accuracy on 200 eval samples, "
          f"mean ± sd over seeds {args.seeds}; pretraining {t_pre:.0f} s, total {t_all:.0f} s\n")
    print("| modality | labelled samples | from scratch | pretrained (joint CLIP + MLM) | gain |")
    print("|---|---|---|---|---|")
    for r in rows:
        gain = statistics.mean(r["pretrained"]) - statistics.mean(r["scratch"])
        print(f"| {r['modality']} | {r['labels']} | {_fmt(r['scratch'])} | {_fmt(r['pretrained'])} | {gain:+.3f} |")


if __name__ == "__main__":
    main()
