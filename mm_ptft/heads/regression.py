"""Regression over one encoder's pooled embedding: dropout + linear → one scalar per sample; MSE loss."""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mm_ptft.contracts import ExportSpec, Task
from mm_ptft.encoders.base import Encoder
from mm_ptft.metrics.regression import RegressionMetrics
from mm_ptft.types import LABELS


class RegressionTask(Task):
    """Encoder → pooled (B, D) → dropout + linear → (B,). Targets are standardised with the training
    mean/std given at construction (saved as buffers), so the head learns a unit-scale output."""

    main_metric = "r2"

    def __init__(self, encoder: Encoder, dropout: float = 0.1, target_mean: float = 0.0, target_std: float = 1.0) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.out_dim, 1)
        self.register_buffer("target_mean", torch.tensor(float(target_mean)))
        self.register_buffer("target_std", torch.tensor(float(target_std) or 1.0))

    def predict(self, batch: Mapping[str, Any]) -> torch.Tensor:
        z = self.head(self.dropout(self.encoder(batch).pooled)).squeeze(-1)  # (B,)
        return z.float() * self.target_std + self.target_mean  # (B,) in target units

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        out = {"predictions": self.predict(batch)}
        if LABELS in batch:  # MSE on the standardised scale: the same loss size whatever the target's units
            scaled = (out["predictions"] - batch[LABELS].float()) / self.target_std  # (B,)
            out["mse_loss"] = F.mse_loss(scaled, torch.zeros_like(scaled))
            out["loss"] = out["mse_loss"]
        return out

    def build_metrics(self) -> RegressionMetrics:
        return RegressionMetrics()

    def export_spec(self) -> ExportSpec:
        return ExportSpec(self.encoder.input_keys(), ["predictions"], {"predictions": {0: "batch"}},
                          {"postprocessing": "predictions (B,) are in the training targets' units"})

    def export_forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.predict(batch)  # (B,)
