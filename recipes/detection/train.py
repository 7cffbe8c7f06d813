"""Object detection: Faster R-CNN / RetinaNet / FCOS (torchvision) on any image encoder through a
feature-pyramid adapter, trained on any COCO-format dataset.

    python recipes/detection/train.py recipes/detection/tiny.yaml [key.sub=value ...]

This is the whole path `mm-ptft train` takes, written out so it can be copied and edited.
"""
import json
import sys

from mm_ptft.config import load_config
from mm_ptft.tasks.detection import Detection, DetectionConfig
from mm_ptft.train.trainer import Trainer, seed_everything


def main(argv: list[str]) -> dict:
    # 1. The config: the recipe YAML, then `key.sub=value` overrides; unknown keys are errors.
    cfg = load_config(argv[0], argv[1:], schema=DetectionConfig)
    seed_everything(cfg.seed)

    # 2. Data and model: COCO instances JSONs (boxes clipped to the image, empty ones dropped and
    #    counted); the encoder from `model.image`, an FPN (CNN) or simple pyramid (ViT) on its
    #    feature maps, and the detector from `model.detector`.
    prepared = Detection.prepare(cfg)
    print(f"{len(prepared.train_data)} train / {len(prepared.eval_data)} eval images, classes {cfg.data.labels}, "
          f"encoder {type(prepared.task.detector.backbone.encoder).__name__}, "
          f"data fixes {prepared.counters or 'none'}", file=sys.stderr)

    # 3. Train: the detector returns its named losses, the task sums them; evaluation computes
    #    COCO mAP (pycocotools) and writes detections_eval.json (COCO results format).
    trainer = Trainer(prepared.task, cfg, prepared.train_data, prepared.eval_data, prepared.collate,
                      counters=prepared.counters)
    results = trainer.fit()

    # 4. The run directory now holds config.yaml, metrics.jsonl, checkpoints/, final_metrics.json,
    #    detections_eval.json, encoders/image/ and report.md.
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
