"""Contrastive pretraining (CLIP / SigLIP) between any modality pairs of a paired manifest.

    python recipes/pretrain_contrastive/train.py recipes/pretrain_contrastive/tiny.yaml [key.sub=value ...]

This is the whole path `mm-ptft train` takes, written out so it can be copied and edited.
"""
import json
import sys

from mm_ptft.config import load_config
from mm_ptft.tasks.pretrain_contrastive import PretrainContrastive, PretrainContrastiveConfig
from mm_ptft.train.trainer import Trainer, seed_everything


def main(argv: list[str]) -> dict:
    # 1. The config: the recipe YAML, then `key.sub=value` overrides; unknown keys are errors.
    cfg = load_config(argv[0], argv[1:], schema=PretrainContrastiveConfig)
    seed_everything(cfg.seed)

    # 2. Data and model: a paired manifest read for `data.modalities`, one encoder per modality,
    #    a CLIP/SigLIP objective over their pairs (projections + learnable temperature), and
    #    class-name prompts for zero-shot evaluation.
    prepared = PretrainContrastive.prepare(cfg)
    print(f"{len(prepared.train_data)} train / {len(prepared.eval_data)} eval pairs, modalities "
          f"{cfg.data.modalities}, pairs {prepared.task.retrieval.pairs}", file=sys.stderr)

    # 3. Train. Under torchrun every rank's embeddings are all-gathered (with gradients), so the
    #    negatives come from the global batch.
    trainer = Trainer(prepared.task, cfg, prepared.train_data, prepared.eval_data, prepared.collate,
                      counters=prepared.counters)
    results = trainer.fit()

    # 4. The run directory holds final_metrics.json (retrieval recall@1/5/10 both ways, zero-shot
    #    accuracy) and encoders/<modality>/: load them in a fine-tuning recipe with
    #    model.<modality>.name_or_path=RUN_DIR/encoders/<modality>.
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
