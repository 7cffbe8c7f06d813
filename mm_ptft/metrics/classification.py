"""Metrics built on torchmetrics (which also syncs them across ranks). torchmetrics is imported when metrics are
built, not with this module: its package import loads its image, audio and plotting stacks (seconds)."""
from __future__ import annotations

import re
import warnings
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from mm_ptft.types import LABELS

if TYPE_CHECKING:
    import torchmetrics


def _metric_names(num_classes: int, labels: Sequence[str]) -> list[str]:
    """Class names safe in a metric key (``precision_<name>``); class indices when names are missing or clash."""
    names = [re.sub(r"[^\w.-]+", "_", str(n)) for n in labels]
    return names if len(names) == num_classes and len(set(names)) == num_classes else [str(i) for i in range(num_classes)]


class ClassificationMetrics:
    """Top-1 accuracy, macro-F1, macro and per-class precision/recall (``precision_<label>``,
    ``recall_<label>``), AUROC (binary for 2 classes, else macro one-vs-rest over the classes present in
    the eval labels; absent when undefined) and (with more than 5 classes) top-5 accuracy from ``out['logits']``.

    The confusion matrix (counts, rows = true class) is not a scalar: :meth:`artifacts` gives it, and the
    trainer writes it to ``confusion_matrix.json`` in the run directory at the final evaluation."""

    def __init__(self, num_classes: int, labels: Sequence[str] = ()) -> None:
        self.num_classes, self.labels = num_classes, list(labels)
        self.names = _metric_names(num_classes, self.labels)
        import torchmetrics
        from torchmetrics.classification import (MulticlassAccuracy, MulticlassAUROC, MulticlassConfusionMatrix,
                                                 MulticlassF1Score, MulticlassPrecision, MulticlassRecall)

        parts: dict[str, torchmetrics.Metric] = {
            "accuracy": MulticlassAccuracy(num_classes, average="micro"),
            "macro_f1": MulticlassF1Score(num_classes, average="macro"),
            "precision": MulticlassPrecision(num_classes, average=None),
            "recall": MulticlassRecall(num_classes, average=None),
            "auroc": MulticlassAUROC(num_classes, average=None),
            "confusion": MulticlassConfusionMatrix(num_classes),
        }
        if num_classes > 5:
            parts["top5_accuracy"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
        self.metrics = torchmetrics.MetricCollection(parts, compute_groups=False)
        self._confusion: list[list[int]] = []

    def to(self, device: torch.device) -> "ClassificationMetrics":
        self.metrics = self.metrics.to(device)
        return self

    def update(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        labels = batch[LABELS]
        if labels.ndim == 2:  # soft targets
            labels = labels.argmax(-1)
        self.metrics.update(out["logits"].float(), labels)

    def compute(self) -> dict[str, float]:
        with warnings.catch_warnings():  # a class absent from the eval labels: handled below
            warnings.filterwarnings("ignore", message=".*(positive|negative) samples.*")
            values = self.metrics.compute()
        cm = values.pop("confusion").long().cpu()
        self._confusion = cm.tolist()
        precision, recall, auroc = (values.pop(k).float().cpu() for k in ("precision", "recall", "auroc"))
        # macro means over the classes seen in the labels or the predictions (sklearn's convention; an
        # undefined precision/recall counts 0); a class never seen would otherwise drag them down
        predicted, present = cm.sum(0) > 0, cm.sum(1) > 0
        seen = predicted | present
        results = {k: float(v) for k, v in values.items()}
        results["macro_precision"] = float(precision[seen].mean()) if seen.any() else 0.0
        results["macro_recall"] = float(recall[seen].mean()) if seen.any() else 0.0
        # AUROC needs positives and negatives: one-vs-rest over the classes present (not all of them)
        has_both = present & (cm.sum() - cm.sum(1) > 0)
        # (left out when undefined: an eval set of one class)
        if self.num_classes == 2:  # binary: the AUROC of the class-1 score (equal for both one-vs-rest halves)
            if has_both.all():
                results["auroc"] = float(auroc[1])
        elif has_both.any():
            results["auroc"] = float(auroc[has_both].mean())
        for i, name in enumerate(self.names):
            results[f"precision_{name}"] = float(precision[i])
            results[f"recall_{name}"] = float(recall[i])
        return results

    def artifacts(self) -> dict[str, Any]:
        """Non-scalar results of the last :meth:`compute`, by file stem (written as ``<stem>.json``)."""
        return {"confusion_matrix": {"labels": self.labels or list(range(self.num_classes)),
                                     "matrix": self._confusion}} if self._confusion else {}


class EmaMetrics:
    """Classification metrics for the live weights and, under an ``ema_`` prefix, the EMA weights."""

    def __init__(self, num_classes: int, labels: Sequence[str] = ()) -> None:
        self.live, self.ema = ClassificationMetrics(num_classes, labels), ClassificationMetrics(num_classes, labels)

    def to(self, device: torch.device) -> "EmaMetrics":
        self.live, self.ema = self.live.to(device), self.ema.to(device)
        return self

    def update(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        self.live.update(out, batch)
        self.ema.update({"logits": out["ema_logits"]}, batch)

    def compute(self) -> dict[str, float]:
        return {**self.live.compute(), **{f"ema_{k}": v for k, v in self.ema.compute().items()}}

    def artifacts(self) -> dict[str, Any]:
        return self.live.artifacts()
