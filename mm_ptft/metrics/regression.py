"""Regression metrics from ``out['predictions']`` (B,) against ``batch['labels']`` (B,): MSE, MAE and R²
(torchmetrics, synced across ranks)."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from mm_ptft.types import LABELS


class RegressionMetrics:
    """``mse``, ``mae`` and ``r2`` (1 - residual / total sum of squares: 0 for the mean predictor)."""

    def __init__(self) -> None:
        import torchmetrics  # here, not at module import (see metrics.classification)
        from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError, R2Score

        self.metrics = torchmetrics.MetricCollection({"mse": MeanSquaredError(), "mae": MeanAbsoluteError(),
                                                      "r2": R2Score()})

    def to(self, device: torch.device) -> "RegressionMetrics":
        self.metrics = self.metrics.to(device)
        return self

    def update(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        self.metrics.update(out["predictions"].float(), batch[LABELS].float())

    def compute(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.metrics.compute().items()}
