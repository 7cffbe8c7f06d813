"""Masked-modelling pretraining: MLM (text), MAE-style (images), masked spectrogram (audio), or
masked text conditioned on another modality — the objective is chosen by `model.objective`.

    python recipes/pretrain_masked/train.py recipes/pretrain_masked/tiny.yaml [key.sub=value ...]

This is the whole path `mm-ptft train` takes, written out so it can be copied and edited.
"""
import json
import sys

from mm_ptft.config import load_config
from mm_ptft.tasks.pretrain_masked import PretrainMasked, PretrainMaskedConfig
from mm_ptft.train.trainer import Trainer, seed_everything


def main(argv: list[str]) -> dict:
    # 1. The config: the recipe YAML, then `key.sub=value` overrides; unknown keys are errors.
    cfg = load_config(argv[0], argv[1:], schema=PretrainMaskedConfig)
    seed_everything(cfg.seed)

    # 2. Data and model: the manifest read for `data.modalities`, their encoders, and the masked
    #    objective with its light decoder (masks are random in training, fixed-seed in evaluation).
    prepared = PretrainMasked.prepare(cfg)
    print(f"{len(prepared.train_data)} train / {len(prepared.eval_data)} eval samples, objective "
          f"{cfg.model.objective['name']} on {cfg.data.modalities}", file=sys.stderr)

    # 3. Train; the eval metric is the objective's loss on the eval split (lower is better).
    trainer = Trainer(prepared.task, cfg, prepared.train_data, prepared.eval_data, prepared.collate,
                      train_lengths=prepared.train_lengths, eval_lengths=prepared.eval_lengths,
                      counters=prepared.counters)
    results = trainer.fit()

    # 4. encoders/<modality>/ in the run directory loads into any fine-tuning recipe by path.
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
