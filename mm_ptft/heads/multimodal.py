"""Multimodal classification over the fusion module: any subset of text/image/audio encoders → a fusion
module → a linear head. A sample's missing modality (``<modality>_present`` false) is masked out of the fusion."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from mm_ptft.contracts import ExportSpec, Task
from mm_ptft.encoders.base import Encoder
from mm_ptft.heads.classification import ClassificationHead, classification_export_spec, classification_outputs
from mm_ptft.metrics.classification import ClassificationMetrics


class MultimodalClassifier(Task):
    """Encoders → per-sample-masked fusion → linear head; cross-entropy."""

    main_metric = "accuracy"

    def __init__(self, encoders: dict[str, Encoder], fusion: nn.Module, num_classes: int, dropout: float = 0.1,
                 label_smoothing: float = 0.0, modality_dropout: float = 0.0, labels: Sequence[str] = ()) -> None:
        super().__init__()
        self.towers = nn.ModuleDict(encoders)
        self.fusion = fusion
        self.head = ClassificationHead(fusion.out_dim, num_classes, dropout)
        self.num_classes, self.label_smoothing, self.modality_dropout = num_classes, label_smoothing, modality_dropout
        self.labels = list(labels)

    def _presence(self, batch: dict[str, Any], names: list[str], B: int, device: torch.device) -> torch.Tensor:
        """(B, M) bool: which modality each sample has; in training, modality dropout hides some."""
        present = torch.stack([batch.get(f"{m}_present", torch.ones(B, dtype=torch.bool, device=device)).bool()
                               for m in names], 1)  # (B, M)
        if self.training and self.modality_dropout > 0:
            keep = torch.rand(present.shape, device=device) >= self.modality_dropout  # (B, M)
            kept = present & keep
            present = torch.where(kept.any(1, keepdim=True), kept, present)  # never hide every modality
        return present

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        names = [m for m in sorted(self.towers) if m in batch]
        B = len(batch[names[0]])
        present = self._presence(batch, names, B, batch[names[0]].device)  # (B, M)
        embeddings, masks = {}, {}
        for j, m in enumerate(names):
            out = self.towers[m](batch)
            tokens = out.tokens if out.tokens is not None else out.pooled.unsqueeze(1)  # (B, N, D)
            mask = out.mask if out.tokens is not None and out.mask is not None else \
                torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)  # (B, N)
            embeddings[m], masks[m] = tokens, mask.bool() & present[:, j:j + 1]
        logits = self.head(self.fusion(embeddings, masks))  # (B, C)
        return classification_outputs(logits, batch, self.label_smoothing if self.training else 0.0)

    def build_metrics(self) -> ClassificationMetrics:
        return ClassificationMetrics(self.num_classes, self.labels)

    def encoders(self) -> dict[str, nn.Module]:
        return dict(self.towers.items())

    def export_spec(self) -> ExportSpec:
        return classification_export_spec([k for m in sorted(self.towers) for k in self.towers[m].input_keys()],
                                          self.labels)

    def export_forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        for m in sorted(self.towers):  # every modality present; flags sized from the inputs (batch axis stays dynamic)
            first = batch[self.towers[m].input_keys()[0]]
            batch[f"{m}_present"] = torch.ones_like(first.flatten(1)[:, 0], dtype=torch.bool)  # (B,)
        return self(batch)["logits"]  # (B, C)
