"""Data pipeline throughput per modality: decode + augment samples/s in one worker, so users can
size ``train.num_workers`` (needed workers ≈ training samples/s ÷ the figure here).

    python benchmarks/data_pipeline.py [--n 300]

Each row prepares a recipe's tiny.yaml (generated data, the recipe's own transforms) and times
``dataset[i]`` for n samples (decode, resample/features, augmentation), then collation into batches.
Text is tokenised once at load time, so its row times tokenisation of the raw texts instead.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from mm_ptft.run import load_config
from mm_ptft.tasks import get_recipe

RECIPES = {"image (image_classification, train augmentation)": "image_classification",
           "audio (speech_recognition, SpecAugment + perturbation)": "speech_recognition",
           "image+audio+text (multimodal_classification)": "multimodal_classification"}


def per_item(dataset, n: int, collate) -> tuple[float, float]:
    n = min(n, len(dataset))
    dataset[0]  # warm-up: lazy imports, caches
    t0 = time.perf_counter()
    items = [dataset[i % len(dataset)] for i in range(n)]
    t_items = time.perf_counter() - t0
    t0 = time.perf_counter()
    for s in range(0, n, 32):
        collate(items[s:s + 32])
    return n / t_items, n / (time.perf_counter() - t0)


def text_rate(n: int) -> float:
    from mm_ptft.data.tables import load_table
    from mm_ptft.data.text import tokenize

    with tempfile.TemporaryDirectory() as out:
        cfg = load_config("recipes/text_classification/tiny.yaml", [f"output_dir={out}"])
        p = get_recipe(cfg.task).prepare(cfg)
        texts = load_table(cfg.data.train_file)["text"][:n]
        t0 = time.perf_counter()
        tokenize(p.task.encoder.tokenizer, texts, 128, "bench", False, {})
        return len(texts) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(1)  # one DataLoader worker = one thread
    rows = {"text (tokenise, WordPiece fast tokenizer)": (text_rate(args.n), float("nan"))}
    for name, recipe in RECIPES.items():
        with tempfile.TemporaryDirectory() as out:
            cfg = load_config(f"recipes/{recipe}/tiny.yaml", [f"output_dir={out}"])
            p = get_recipe(cfg.task).prepare(cfg)
            rows[name] = per_item(p.train_data, args.n, p.collate)
    print(f"{'pipeline':58s} {'samples/s/worker':>17s} {'collate samples/s':>18s}")
    for name, (rate, coll) in rows.items():
        print(f"{name:58s} {rate:17.0f} {coll:18.0f}")


if __name__ == "__main__":
    main()
