"""Text classification: fine-tune any text encoder (HF AutoModel or built-in) with a linear head.

    python recipes/text_classification/train.py recipes/text_classification/tiny.yaml [key.sub=value ...]

This is the whole path `mm-ptft train` takes (``mm_ptft.run.train``), written out so it can be copied and
edited; the other recipes' train.py call that shared path.
"""
import json
import sys
from pathlib import Path

from mm_ptft.train.finetune import prepare_for_training
from mm_ptft.run import save_best_encoders, start
from mm_ptft.tasks import load_config
from mm_ptft.tasks.text_classification import TextClassification, TextClassificationConfig
from mm_ptft.train.distributed import barrier, main_process_first
from mm_ptft.train.trainer import Trainer


def main(argv: list[str]) -> dict:
    # 1. The config: the recipe YAML, then `key.sub=value` overrides; unknown keys are errors.
    cfg = load_config(argv[0], argv[1:], schema=TextClassificationConfig)
    # Seed, and claim output_dir: another run there is refused unless resumed (train.resume=true)
    # or replaced (train.overwrite_output_dir=true).
    start(cfg)

    # 2. Data and model: CSV/JSON/parquet through HF datasets, labels learned from the training
    #    file, the encoder from `model.text` (hub id, local directory or random-init config).
    #    Under torchrun, rank 0 prepares (e.g. generates data) before the other ranks read it.
    with main_process_first(cfg.train.device):
        prepared = TextClassification.prepare(cfg)
    print(f"{len(prepared.train_data)} train / {len(prepared.eval_data)} eval samples, "
          f"labels {cfg.data.labels}, encoder {type(prepared.task.encoder).__name__}", file=sys.stderr)

    # 3. Fine-tuning strategy (full, linear_probe, freeze_layers, llrd, lora) and gradient checkpointing,
    #    applied once; the trainer gets the parameter groups (and any callbacks) and knows no model.
    group_builder = prepare_for_training(prepared.task, cfg)
    trainer = Trainer.from_prepared(prepared, cfg, group_builder=group_builder)

    # 4. Train: optimizer, schedule, AMP, checkpoints, evaluation, logging, resume.
    results = trainer.fit()

    # 5. Save the encoder as a reloadable directory (LoRA merged) from the best checkpoint, the one eval
    #    and predict use; under FSDP every rank helps gather it. A finished run resumed changes nothing.
    if trainer.already_finished is None:
        model = trainer.plain_model()
        if model is not None:
            save_best_encoders(model, Path(cfg.output_dir), trainer.weights_checkpoint())
        barrier()

    # The run directory now holds config.yaml, metrics.jsonl, checkpoints/, final_metrics.json,
    # encoders/text/ (reloadable by path) and report.md.
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
