"""Knowledge distillation's task model: a student trained against a frozen teacher's softened logits.

loss = alpha * KL(softmax(teacher / T) || softmax(student / T)) * T**2 + (1 - alpha) * cross-entropy
(Hinton et al., 2015)."""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mm_ptft.config import ConfigError
from mm_ptft.contracts import Task
from mm_ptft.types import IMAGE, LABELS


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(t / T) || softmax(s / T)) * T**2, averaged over the batch. (B, C), (B, C) → ()."""
    T = float(temperature)
    s = F.log_softmax(student_logits.float() / T, -1)  # (B, C)
    t = F.log_softmax(teacher_logits.float() / T, -1)  # (B, C)
    return F.kl_div(s, t, reduction="batchmean", log_target=True) * T * T


class DistillationTask(Task):
    """Student + frozen teacher (always in eval mode); returns ``{"loss", "kd_loss", "ce_loss", "logits"}``."""

    main_metric = "accuracy"

    def __init__(self, student: Task, teacher: Task, alpha: float = 0.5, temperature: float = 2.0) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"model.alpha={alpha}: must be in [0, 1]")
        if temperature <= 0:
            raise ConfigError(f"model.temperature={temperature}: must be > 0")
        self.student, self.teacher = student, teacher.eval().requires_grad_(False)
        self.alpha, self.temperature = alpha, temperature
        self.main_metric, self.greater_is_better = student.main_metric, student.greater_is_better

    def train(self, mode: bool = True) -> "DistillationTask":
        super().train(mode)
        self.teacher.eval()  # dropout off, batch-norm statistics fixed: the teacher is a constant
        return self

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        mix = getattr(self.student, "mix", None)  # image MixUp/CutMix: mix once, so both models see the same images
        if self.training and mix is not None and LABELS in batch:
            images, soft = mix(batch[IMAGE], batch[LABELS])  # (B, 3, H, W), (B, C)
            batch = {**batch, IMAGE: images, LABELS: soft}
            self.student.mix = None
            try:
                out = dict(self.student(batch))
            finally:
                self.student.mix = mix
        else:
            out = dict(self.student(batch))
        if LABELS not in batch:  # inference: the student alone
            return out
        with torch.no_grad():
            teacher_logits = self.teacher({k: v for k, v in batch.items() if k != LABELS})["logits"]  # (B, C)
        out["kd_loss"] = kd_loss(out["logits"], teacher_logits, self.temperature)
        out["loss"] = self.alpha * out["kd_loss"] + (1 - self.alpha) * out["ce_loss"]
        return out

    def build_metrics(self) -> Any:
        return self.student.build_metrics()

    def encoders(self) -> dict[str, nn.Module]:
        return self.student.encoders()  # the student's towers are what the run saves
