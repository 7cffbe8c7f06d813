"""Multimodal classification: text/image/audio encoders → fusion (gated, concat, cross-attention,
bottleneck) → linear head; rows may lack a modality.

    python recipes/multimodal_classification/train.py recipes/multimodal_classification/tiny.yaml [key=value ...]
"""
import json
import sys

from mm_ptft.config import load_config
from mm_ptft.tasks.multimodal_classification import MultimodalClassification, MultimodalClassificationConfig
from mm_ptft.train.trainer import Trainer, seed_everything


def main(argv: list[str]) -> dict:
    # 1. Config: recipe YAML + `key.sub=value` overrides (unknown keys are errors that name the key).
    cfg = load_config(argv[0], argv[1:], schema=MultimodalClassificationConfig)
    seed_everything(cfg.seed)

    # 2. Data and model: a manifest with a caption, image path and audio path per row; one encoder per
    #    modality in data.modalities (registry name, hub id, or a directory from a pretraining run).
    prepared = MultimodalClassification.prepare(cfg)
    print(f"modalities {cfg.data.modalities}, fusion {cfg.model.fusion['name']}, labels {cfg.data.labels}, "
          f"{len(prepared.train_data)} train / {len(prepared.eval_data)} eval rows", file=sys.stderr)

    # 3. Train and evaluate; the run directory gets config.yaml, metrics.jsonl, checkpoints/,
    #    final_metrics.json, encoders/<modality>/ and report.md.
    trainer = Trainer(prepared.task, cfg, prepared.train_data, prepared.eval_data, prepared.collate,
                      train_lengths=prepared.train_lengths, eval_lengths=prepared.eval_lengths,
                      counters=prepared.counters)
    results = trainer.fit()
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
