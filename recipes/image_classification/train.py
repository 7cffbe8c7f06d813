"""Image classification: fine-tune any image encoder (timm, torchvision, HF, open_clip or built-in)
with a linear head.

    python recipes/image_classification/train.py recipes/image_classification/tiny.yaml [key.sub=value ...]

This is the whole path `mm-ptft train` takes, written out so it can be copied and edited.
"""
import json
import sys

from mm_ptft.config import load_config
from mm_ptft.tasks.image_classification import ImageClassification, ImageClassificationConfig
from mm_ptft.train.trainer import Trainer, seed_everything


def main(argv: list[str]) -> dict:
    # 1. The config: the recipe YAML, then `key.sub=value` overrides; unknown keys are errors.
    cfg = load_config(argv[0], argv[1:], schema=ImageClassificationConfig)
    seed_everything(cfg.seed)

    # 2. Data and model: image paths + labels from a table (or class folders), every file checked
    #    once; the encoder from `model.image`, whose own pretrained config sets size/mean/std;
    #    transforms (crop, flip, RandAugment...) and MixUp/CutMix from `data.augment`.
    prepared = ImageClassification.prepare(cfg)
    enc = prepared.task.encoder
    print(f"{len(prepared.train_data)} train / {len(prepared.eval_data)} eval images, labels {cfg.data.labels}, "
          f"encoder {type(enc).__name__} at {enc.preprocess.size}, skipped {prepared.counters or 'none'}",
          file=sys.stderr)

    # 3. Train: fine-tuning strategy (full / linear_probe / llrd / lora), optimizer, schedule, AMP,
    #    checkpoints, evaluation (top-1, macro-F1, top-5, and ema_* with model.ema_decay > 0).
    trainer = Trainer(prepared.task, cfg, prepared.train_data, prepared.eval_data, prepared.collate,
                      counters=prepared.counters)
    results = trainer.fit()

    # 4. The run directory now holds config.yaml, metrics.jsonl, checkpoints/, final_metrics.json,
    #    encoders/image/ (reloadable by path) and report.md.
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
