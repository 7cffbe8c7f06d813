"""Object detection on any COCO-format dataset with any image encoder (through the feature-pyramid
adapter) and a torchvision detector; COCO mAP via torchmetrics/pycocotools."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict

import torch

from mm_ptft.config import ConfigError, RunConfig, SkipBadSamples, SplitData
from mm_ptft.contracts import Prepared
import mm_ptft.data.generated.images  # noqa: F401  (registers the detection_shapes generator)
from mm_ptft.data.coco import (CocoDetection, CocoRecord, DetectionAugment, coco_records, detection_collate,
                               detection_transforms, read_coco)
from mm_ptft.data.image import load_image
from mm_ptft.data.tables import DataError, seeded_split
from mm_ptft.encoders.base import build_encoder
from mm_ptft.encoders.image import IMAGE_ENCODERS
from mm_ptft.heads.detection import DetectionTask, build_detector, transform_kwargs
from mm_ptft.tasks import recipe
from mm_ptft.tasks.common import needs_train_file, resolve_files
from mm_ptft.types import IMAGE


@dataclass
class DetectionData(SplitData, SkipBadSamples):
    """train_file/eval_file: COCO instances JSON (no eval_file: a seeded split of train_file's images)."""

    image_root: str = ""  # folder that train_file's file_name entries are relative to; empty: the JSON's folder
    eval_image_root: str = ""  # the same for eval_file (COCO keeps train2017/ and val2017/ apart)
    labels: list[str] = field(default_factory=list)  # category names (filled from the training JSON)
    category_ids: list[int] = field(default_factory=list)  # their COCO ids, same order
    verify_images: bool = True  # decode every image once at load time
    augment: DetectionAugment = field(default_factory=DetectionAugment)


@dataclass
class DetectionModel:
    RANGES: ClassVar[dict[str, str]] = {
        "neck_channels": ">0", "min_size": ">0", "max_size": ">0", "fixed_size": ">0", "score_threshold": "[0, 1]"
    }  # checked by config.parse
    image: Dict[str, Any] = field(default_factory=lambda: {"name": "tiny_cnn"})
    detector: Dict[str, Any] = field(default_factory=lambda: {"name": "faster_rcnn"})
    neck: Dict[str, Any] = field(default_factory=lambda: {"name": "auto"})  # auto | fpn | simple_pyramid
    neck_channels: int = 256
    min_size: list[int] = field(default_factory=lambda: [800])  # shorter side; several: multi-scale training
    max_size: int = 1333
    fixed_size: list[int] = field(default_factory=list)  # [H, W]: resize exactly (fixed-size ViTs)
    score_threshold: float = 0.3  # predict: detections below this score are not returned


@dataclass
class DetectionConfig(RunConfig):
    task: str = "detection"
    data: DetectionData = field(default_factory=DetectionData)
    model: DetectionModel = field(default_factory=DetectionModel)


def _categories(cfg: DetectionConfig, coco: Any, where: str) -> None:
    """Fill data.labels / data.category_ids from a COCO index (sorted by id) unless given."""
    d = cfg.data
    if d.labels and d.category_ids:
        if len(d.labels) != len(d.category_ids) or len(set(d.category_ids)) != len(d.category_ids):
            raise ConfigError(f"data.labels ({len(d.labels)}) and data.category_ids ({d.category_ids}) must pair up: "
                              f"one distinct COCO id per label name")
        return
    cats = sorted(coco.cats.values(), key=lambda c: c["id"])
    if not cats:
        raise DataError(f"{where}: no categories")
    d.labels, d.category_ids = [str(c["name"]) for c in cats], [int(c["id"]) for c in cats]


def _records(cfg: DetectionConfig, path: str, key: str, image_root: str, counters: dict[str, int]) -> list[CocoRecord]:
    d = cfg.data
    coco = read_coco(path, key)
    _categories(cfg, coco, path)
    label_of = {cid: i + 1 for i, cid in enumerate(d.category_ids)}
    return coco_records(coco, path, image_root, label_of, counters, d.skip_bad_samples, d.verify_images)


def prepare(cfg: DetectionConfig, train: bool = True) -> Prepared:
    """Read COCO JSONs (cleaning boxes), build encoder → pyramid → detector, and the datasets."""
    d, m = cfg.data, cfg.model
    resolve_files(d, cfg.output_dir)
    counters: dict[str, int] = {}
    tr = ev = None
    if needs_train_file(d, train, learn=not d.labels):
        tr = _records(cfg, d.train_file, "data.train_file", d.image_root, counters)
    if d.eval_file:
        ev = _records(cfg, d.eval_file, "data.eval_file", d.eval_image_root, counters)
    elif tr is not None:
        keep, held = seeded_split(tr, d.eval_fraction, cfg.seed)
        tr, ev = [tr[i] for i in keep], [tr[i] for i in held]
    if not d.labels:
        raise ValueError("data.labels is empty and there is no data.train_file to read the categories from")
    encoder = build_encoder(IMAGE_ENCODERS, m.image, "model.image")
    detector = build_detector(encoder, m.detector, len(d.labels),
                              transform_kwargs(encoder, m.min_size, m.max_size, m.fixed_size), m.neck,
                              m.neck_channels)
    task = DetectionTask(detector, d.category_ids, os.path.join(cfg.output_dir, "detections_eval.json"))
    train_ds = CocoDetection(tr, detection_transforms(d.augment), train=True) if train and tr else None
    eval_ds = CocoDetection(ev, detection_transforms(None), train=False) if ev else None
    return Prepared(task, train_ds, eval_ds, detection_collate, counters=counters)


def predict(cfg: DetectionConfig, prepared: Prepared, paths: list[str]) -> list[dict[str, Any]]:
    """Boxes (xyxy pixels), class names and scores above ``model.score_threshold`` per image file."""
    task, names = prepared.task, cfg.data.labels
    device = next(task.parameters()).device
    from torchvision.transforms.v2 import functional as F

    images = [F.to_dtype(F.to_image(load_image(p)), torch.float32, scale=True).as_subclass(torch.Tensor).to(device)
              for p in paths]  # each (3, H, W) in [0, 1]
    results = []
    for p, det in zip(paths, task({IMAGE: images})["detections"]):
        keep = det["scores"] >= cfg.model.score_threshold
        results.append({"path": p, "detections": [
            {"label": names[int(lab) - 1], "score": float(s), "box": [round(float(v), 2) for v in box]}
            for box, lab, s in zip(det["boxes"][keep], det["labels"][keep], det["scores"][keep])]})
    return results


Detection = recipe(DetectionConfig, prepare, predict)
