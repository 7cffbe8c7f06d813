"""Classification over one encoder's pooled embedding."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mm_ptft.contracts import ExportSpec, Task
from mm_ptft.encoders.base import Encoder
from mm_ptft.metrics.classification import ClassificationMetrics
from mm_ptft.types import LABELS


class ClassificationHead(nn.Module):
    """Dropout + linear layer: (B, D) → (B, C)."""

    def __init__(self, in_dim: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(in_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.dropout(x))  # (B, C)


def classification_outputs(logits: torch.Tensor, batch: Mapping[str, Any], smoothing: float = 0.0) -> dict[str, torch.Tensor]:
    """``{"logits"}``, plus cross-entropy as ``ce_loss`` and ``loss`` when the batch has labels
    (class indices (B,) or soft targets (B, C))."""
    out = {"logits": logits}
    if LABELS in batch:
        out["ce_loss"] = F.cross_entropy(logits.float(), batch[LABELS], label_smoothing=smoothing)
        out["loss"] = out["ce_loss"]
    return out


class ClassificationTask(Task):
    """Encoder → pooled embedding → classification head; cross-entropy with optional smoothing.

    ``labels`` may be class indices (B,) or soft targets (B, C) from mixup/cutmix."""

    main_metric = "accuracy"

    def __init__(self, encoder: Encoder, num_classes: int, dropout: float = 0.1,
                 label_smoothing: float = 0.0, labels: Sequence[str] = ()) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = ClassificationHead(encoder.out_dim, num_classes, dropout)
        self.num_classes, self.label_smoothing, self.labels = num_classes, label_smoothing, list(labels)

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        logits = self.head(self.encoder(batch).pooled)  # (B, C)
        return classification_outputs(logits, batch, self.label_smoothing if self.training else 0.0)

    def build_metrics(self) -> ClassificationMetrics:
        return ClassificationMetrics(self.num_classes, self.labels)

    def export_spec(self) -> ExportSpec:
        return classification_export_spec(self.encoder.input_keys(), self.labels)

    def export_forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.encoder(batch).pooled)  # (B, C): the live encoder, not an EMA copy or a loss

    def export_hf(self) -> nn.Module:
        """The encoder's transformers ``*For…Classification`` class with this head as its classifier."""
        names = self.labels or [f"LABEL_{i}" for i in range(self.num_classes)]
        return self.encoder.hf_with_head("classification", self.head.proj, {
            "num_labels": self.num_classes, "id2label": dict(enumerate(map(str, names))),
            "label2id": {str(n): i for i, n in enumerate(names)}})


def classification_export_spec(keys: Sequence[str], labels: Sequence[str]) -> ExportSpec:
    """Batch keys in, ``logits`` (B, C) out, with the class names a server needs."""
    return ExportSpec(list(keys), ["logits"], {"logits": {0: "batch"}},
                      {"labels": list(labels), "postprocessing": "softmax over logits (B, C); argmax is the label index"})
