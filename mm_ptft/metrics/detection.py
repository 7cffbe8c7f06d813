"""COCO box mAP (torchmetrics ``MeanAveragePrecision`` on the pycocotools backend) and the COCO
results JSON of the evaluated detections."""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional, Sequence

import torch

from mm_ptft.types import TARGETS

REPORTED = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100")


class DetectionMetrics:
    """mAP@[.5:.95], mAP@50, mAP@75 (+ size breakdown and recall) from ``out['detections']``.

    ``category_ids[label - 1]`` maps a contiguous label back to the dataset's category id, so the
    results file can be scored by pycocotools against the original annotations."""

    def __init__(self, category_ids: Sequence[int], results_path: Optional[str] = None) -> None:
        from torchmetrics.detection import MeanAveragePrecision

        self.map = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
        self.category_ids, self.results_path = list(category_ids), results_path
        self.results: list[dict[str, Any]] = []

    def to(self, device: torch.device) -> "DetectionMetrics":
        self.map = self.map.to(device)
        return self

    def update(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        preds = [{"boxes": d["boxes"].float(), "scores": d["scores"].float(), "labels": d["labels"]}
                 for d in out["detections"]]
        targets = [{"boxes": t["boxes"].float(), "labels": t["labels"],
                    **({"iscrowd": t["iscrowd"]} if "iscrowd" in t else {})} for t in batch[TARGETS]]
        self.map.update(preds, targets)
        for d, t in zip(preds, batch[TARGETS]):
            self.results += self._coco_results(d, int(t["image_id"]))

    def _coco_results(self, det: Mapping[str, torch.Tensor], image_id: int) -> list[dict[str, Any]]:
        xyxy = det["boxes"].detach().cpu()  # (N, 4)
        xywh = torch.cat([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], 1)  # (N, 4)
        return [{"image_id": image_id, "category_id": self.category_ids[int(lab) - 1],
                 "bbox": [round(float(v), 2) for v in box], "score": round(float(s), 5)}
                for box, lab, s in zip(xywh, det["labels"].cpu(), det["scores"].cpu())]

    def compute(self) -> dict[str, float]:
        values = self.map.compute()
        self._write_results()
        return {k: float(values[k]) for k in REPORTED if k in values}

    def _write_results(self) -> None:
        """Gather every rank's detections and write them as one COCO results JSON (rank 0)."""
        if not self.results_path:
            return
        results = self.results
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            parts: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, results)
            if torch.distributed.get_rank() != 0:
                return
            results = [r for part in parts for r in part]
        os.makedirs(os.path.dirname(os.path.abspath(self.results_path)), exist_ok=True)
        tmp = self.results_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f)
        os.replace(tmp, self.results_path)
