"""Metrics of several tasks in one evaluation: each task's own metrics under ``<task>/<metric>``, its mean eval
loss as ``<task>/loss`` (where its eval outputs have one), and ``loss``: those losses combined with the training
loss weights."""
from __future__ import annotations

import math
import warnings
from typing import Any, Mapping

import torch

from mm_ptft.contracts import Metrics


class MultiTaskMetrics:
    """``metrics``: task → its metrics object, for the tasks that have eval data; ``weights``: task → loss weight. ``update`` takes the
    multitask outputs ``{task: outputs}`` and the batch ``{task: sub-batch}``."""

    def __init__(self, metrics: Mapping[str, Metrics], weights: Mapping[str, float]) -> None:
        from torchmetrics import MeanMetric  # here, not at module import (see metrics.classification)

        self.metrics, self.weights = dict(metrics), dict(weights)
        self.losses = {name: MeanMetric() for name in self.metrics}  # torchmetrics: synced across ranks

    def to(self, device: torch.device) -> "MultiTaskMetrics":
        self.metrics = {n: m.to(device) for n, m in self.metrics.items()}
        self.losses = {n: m.to(device) for n, m in self.losses.items()}
        return self

    def update(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        for name, sub in batch.items():
            self.metrics[name].update(out[name], sub)
            if "loss" in out[name]:
                rows = len(next(iter(sub.values())))
                self.losses[name].update(out[name]["loss"].detach().float(), rows)

    def compute(self) -> dict[str, float]:
        results: dict[str, float] = {}
        total = 0.0
        for name in sorted(self.metrics):  # every task with eval data (each rank computes all: a collective)
            results.update({f"{name}/{k}": v for k, v in self.metrics[name].compute().items()})
            with warnings.catch_warnings():  # a task without an eval loss (detection): MeanMetric of nothing is nan
                warnings.filterwarnings("ignore", message=".*compute.*called before the.*update")
                loss = float(self.losses[name].compute())
            if not math.isnan(loss):
                results[f"{name}/loss"] = loss
                total += self.weights[name] * loss
        results["loss"] = total
        return results

    def artifacts(self) -> dict[str, Any]:
        """Each task's non-scalar results (a confusion matrix) as ``<task>_<stem>``."""
        return {f"{name}_{stem}": value for name, m in self.metrics.items() if hasattr(m, "artifacts")
                for stem, value in m.artifacts().items()}
