"""Metrics built on torchmetrics (which also syncs them across ranks)."""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torchmetrics
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from mm_ptft.types import LABELS


class ClassificationMetrics:
    """Top-1 accuracy, macro-F1 and (with more than 5 classes) top-5 accuracy from ``out['logits']``."""

    def __init__(self, num_classes: int) -> None:
        parts: dict[str, torchmetrics.Metric] = {
            "accuracy": MulticlassAccuracy(num_classes, average="micro"),
            "macro_f1": MulticlassF1Score(num_classes, average="macro"),
        }
        if num_classes > 5:
            parts["top5_accuracy"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
        self.metrics = torchmetrics.MetricCollection(parts)

    def to(self, device: torch.device) -> "ClassificationMetrics":
        self.metrics = self.metrics.to(device)
        return self

    def update(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        labels = batch[LABELS]
        if labels.ndim == 2:  # soft targets
            labels = labels.argmax(-1)
        self.metrics.update(out["logits"].float(), labels)

    def compute(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.metrics.compute().items()}


class EmaMetrics:
    """Classification metrics for the live weights and, under an ``ema_`` prefix, the EMA weights."""

    def __init__(self, num_classes: int) -> None:
        self.live, self.ema = ClassificationMetrics(num_classes), ClassificationMetrics(num_classes)

    def to(self, device: torch.device) -> "EmaMetrics":
        self.live, self.ema = self.live.to(device), self.ema.to(device)
        return self

    def update(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        self.live.update(out, batch)
        self.ema.update({"logits": out["ema_logits"]}, batch)

    def compute(self) -> dict[str, float]:
        return {**self.live.compute(), **{f"ema_{k}": v for k, v in self.ema.compute().items()}}
