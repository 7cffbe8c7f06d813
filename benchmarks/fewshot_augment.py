"""Few-shot and text augmentation on the tiny text recipe (generated four-topic sentences, chance 0.25).

    python benchmarks/fewshot_augment.py [--steps 100] [--episodes 10]

1. Cost of ``data.augment`` (all four noises on) per training sample vs the plain records, in one worker.
2. ``mm-ptft fewshot`` (prototype and linear probe, K = 1 and 5) of the text encoder of a tiny run after
   ``--steps`` steps, against the same architecture untrained (the evaluation must tell them apart).
3. Fine-tuning on ``data.labels_per_class`` = 4 / 16 rows per class vs the whole training split.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from mm_ptft.workflows.fewshot import embed_file, few_shot_accuracy
from mm_ptft.run import load_config, train
from mm_ptft.tasks import get_recipe

TINY = "recipes/text_classification/tiny.yaml"
AUGMENT = "data.augment={token_mask: 0.1, token_dropout: 0.05, random_swap: 1, random_deletion: 0.1}"


def augment_cost(out: str, n: int = 2000) -> tuple[float, float]:
    """(plain, augmented) training samples per second."""
    cfg = load_config(TINY, [f"output_dir={out}", AUGMENT])
    ds = get_recipe(cfg.task).prepare(cfg).train_data
    rates = []
    for get in (lambda i: ds.base[i], ds.__getitem__):
        t0 = time.perf_counter()
        for i in range(n):
            get(i % len(ds))
        rates.append(n / (time.perf_counter() - t0))
    return rates[0], rates[1]


def fewshot_table(run: Path, eval_file: str, episodes: int) -> list[str]:
    from mm_ptft.run.components import load_encoder

    rows = []
    trained = load_encoder(run / "encoders" / "text")
    untrained = get_recipe("text_classification").prepare(
        load_config(TINY, [f"output_dir={run}_untrained", f"model.text.tokenizer={run / 'tokenizer'}"]), train=False
    ).task.encoder
    for name, enc in (("after training", trained), ("untrained (random init)", untrained)):
        data = embed_file(enc, eval_file, "text")
        for method in ("prototype", "linear_probe"):
            for k in (1, 5):
                r = few_shot_accuracy(data, k, method, episodes)
                rows.append(f"| {name} | {method} | {k} | {r['accuracy']:.3f} ± {r['accuracy_ci95']:.3f} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--episodes", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        plain, aug = augment_cost(f"{tmp}/aug")
        print(f"augmentation: {plain:,.0f} plain vs {aug:,.0f} augmented samples/s "
              f"({1e6 / aug - 1e6 / plain:.1f} µs added per sample)")
        run = Path(tmp) / "run"
        full = train(load_config(TINY, [f"output_dir={run}", f"train.max_steps={args.steps}", "train.report=false"]))
        cfg = load_config(run / "config.yaml")
        print("\n| encoder | method | shots | accuracy ± 95% CI |\n|---|---|---|---|")
        print("\n".join(fewshot_table(run, cfg.data.eval_file, args.episodes)))
        print(f"\n| training rows | eval accuracy |\n|---|---|\n| all (tiny.yaml, {args.steps} steps) | "
              f"{full['accuracy']:.3f} |")
        for k in (4, 16):
            r = train(load_config(TINY, [f"output_dir={tmp}/k{k}", f"data.labels_per_class={k}", "train.epochs=20",
                                         "train.batch_size=8", "train.report=false"]))
            print(f"| {k} per class (20 epochs) | {r['accuracy']:.3f} |")


if __name__ == "__main__":
    main()
