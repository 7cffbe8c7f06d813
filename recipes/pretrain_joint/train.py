"""Joint pretraining: several weighted objectives in one run, each source dataset mixed in by weight.

    python recipes/pretrain_joint/train.py recipes/pretrain_joint/tiny.yaml [key.sub=value ...]

This is the whole path `mm-ptft train` takes, written out so it can be copied and edited.
"""
import json
import sys

from mm_ptft.config import load_config
from mm_ptft.tasks.pretrain_joint import PretrainJoint, PretrainJointConfig
from mm_ptft.train.trainer import Trainer, seed_everything


def main(argv: list[str]) -> dict:
    # 1. The config: the recipe YAML, then `key.sub=value` overrides; unknown keys are errors.
    cfg = load_config(argv[0], argv[1:], schema=PretrainJointConfig)
    seed_everything(cfg.seed)

    # 2. Data and model: each of `data.sources` is a manifest read for its own modalities; the
    #    mixture draws `weight` of every epoch from each. Encoders for every modality in use, and
    #    the objectives of `model.objectives` with their weights.
    prepared = PretrainJoint.prepare(cfg)
    print(f"epoch mix {prepared.train_data.counts()}, objectives {list(cfg.model.objectives)}", file=sys.stderr)

    # 3. Train: a batch is {source: sub-batch}; each objective takes the sub-batches carrying its
    #    modalities, and every *_loss part is logged on its own next to the weighted total.
    trainer = Trainer(prepared.task, cfg, prepared.train_data, prepared.eval_data, prepared.collate,
                      counters=prepared.counters)
    results = trainer.fit()

    # 4. final_metrics.json: per-objective eval losses, retrieval recall@K, zero-shot accuracy;
    #    encoders/<modality>/ for fine-tuning recipes.
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
