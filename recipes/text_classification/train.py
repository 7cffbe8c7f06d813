"""Text classification: fine-tune any text encoder (HF AutoModel or built-in) with a linear head.

    python recipes/text_classification/train.py recipes/text_classification/tiny.yaml [key.sub=value ...]

This is the whole path `mm-ptft train` takes, written out so it can be copied and edited.
"""
import json
import sys

from mm_ptft.config import load_config
from mm_ptft.tasks.text_classification import TextClassification, TextClassificationConfig
from mm_ptft.train.trainer import Trainer, seed_everything


def main(argv: list[str]) -> dict:
    # 1. The config: the recipe YAML, then `key.sub=value` overrides; unknown keys are errors.
    cfg = load_config(argv[0], argv[1:], schema=TextClassificationConfig)
    seed_everything(cfg.seed)

    # 2. Data and model: CSV/JSON/parquet through HF datasets, labels learned from the training
    #    file, the encoder from `model.text` (hub id, local directory or random-init config).
    prepared = TextClassification.prepare(cfg)
    print(f"{len(prepared.train_data)} train / {len(prepared.eval_data)} eval samples, "
          f"labels {cfg.data.labels}, encoder {type(prepared.task.encoder).__name__}", file=sys.stderr)

    # 3. Train: fine-tuning strategy, optimizer, schedule, AMP, checkpoints, evaluation, logging.
    trainer = Trainer(prepared.task, cfg, prepared.train_data, prepared.eval_data, prepared.collate,
                      train_lengths=prepared.train_lengths, eval_lengths=prepared.eval_lengths,
                      counters=prepared.counters)
    results = trainer.fit()

    # 4. The run directory now holds config.yaml, metrics.jsonl, checkpoints/, final_metrics.json,
    #    encoders/text/ (reloadable by path) and report.md.
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
