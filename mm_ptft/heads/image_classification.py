"""Image classification: ``ClassificationTask`` plus MixUp/CutMix in training and optional EMA weights,
evaluated alongside the live ones (``ema_*`` metrics) and updated by ``EmaCallback`` after each optimizer step."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch import nn

from mm_ptft.contracts import Callback
from mm_ptft.encoders.base import Encoder
from mm_ptft.heads.classification import ClassificationTask
from mm_ptft.metrics.classification import ClassificationMetrics, EmaMetrics
from mm_ptft.types import IMAGE, LABELS


class ImageClassificationTask(ClassificationTask):
    """``ClassificationTask`` plus batch-level MixUp/CutMix in training and optional EMA weights.

    Mixing happens here rather than in the collator because the trainer uses one collate function
    for training and evaluation; evaluation batches must keep their hard labels. The EMA copy is made
    at the first training forward (after fine-tuning strategies such as LoRA changed the model) and
    folded in by ``EmaCallback`` after every optimizer step."""

    def __init__(self, encoder: Encoder, num_classes: int, dropout: float = 0.0, label_smoothing: float = 0.0,
                 mix: Optional[Callable[..., tuple[torch.Tensor, torch.Tensor]]] = None,
                 ema_decay: float = 0.0, labels: Sequence[str] = ()) -> None:
        super().__init__(encoder, num_classes, dropout, label_smoothing, labels)
        self.mix, self.ema_decay = mix, ema_decay
        self.ema: Optional[nn.Module] = None
        self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))  # saved: EMA warm-up survives resume

    def encoders(self) -> dict[str, nn.Module]:
        return {self.encoder.modality: self.encoder}  # not the EMA copy

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        if self.training and self.mix is not None and LABELS in batch:
            images, soft = self.mix(batch[IMAGE], batch[LABELS])  # (B, 3, H, W), (B, C)
            batch = {**batch, IMAGE: images, LABELS: soft}
        if self.training and self.ema_decay > 0 and self.ema is None:
            self._make_ema()
        out = super().forward(batch)
        if self.ema is not None and not self.training:
            ema = self.ema.module
            out["ema_logits"] = ema["head"](ema["encoder"](batch).pooled)  # (B, C)
        return out

    def _live(self) -> nn.ModuleDict:
        return nn.ModuleDict({"encoder": self.encoder, "head": self.head})

    def _make_ema(self) -> None:
        from timm.utils import ModelEmaV3

        # round to nearest (no stochastic rounding of bf16 copies): the device-gated update below is timm's lerp
        self.ema = ModelEmaV3(self._live(), decay=self.ema_decay or 0.999, use_warmup=True,
                              stochastic_rounding=False).requires_grad_(False)

    @torch.no_grad()
    def update_ema(self, found_inf: Optional[torch.Tensor] = None) -> None:
        """Fold the live weights into the EMA copy: one optimizer step's worth, as timm's ``ModelEmaV3.update``
        with its warmed-up decay, or nothing where ``found_inf`` (the step's 0-d NaN/Inf flag, 1.0: the optimizer
        skipped the step) is set. Decided on the device: no host sync."""
        if self.ema is None:
            self._make_ema()
        took = torch.ones((), device=self.ema_steps.device) if found_inf is None else 1 - found_inf  # (), 0 or 1
        self.ema_steps += took.to(self.ema_steps.dtype)
        weight = (1 - ema_decay(self.ema, self.ema_steps)) * took.double()  # (), 0 on a skipped step
        ema_lerp_(self.ema.module, self._live(), weight)

    def build_metrics(self) -> Any:
        return EmaMetrics(self.num_classes, self.labels) if self.ema is not None else \
            ClassificationMetrics(self.num_classes, self.labels)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Create the EMA copy first when the checkpoint holds one (resume, evaluation)."""
        if self.ema is None and any(k.startswith("ema.") for k in state_dict):
            self._make_ema()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def ema_decay(ema: Any, steps: torch.Tensor) -> torch.Tensor:
    """timm's ``ModelEmaV3.get_decay(steps)`` computed on the device from the step-count buffer: a float64 0-d
    tensor (the same double arithmetic as timm's Python floats), no host sync."""
    t = (steps - ema.update_after_step - 1).clamp(min=0).double()  # ()
    if ema.use_warmup:
        d = (1 - (1 + t / ema.warmup_gamma) ** -ema.warmup_power).clamp(max=ema.decay).clamp(min=ema.min_decay)
    else:
        d = torch.full_like(t, ema.decay)
    return torch.where(t > 0, d, torch.zeros_like(d))


def ema_lerp_(ema: nn.Module, live: nn.Module, weight: torch.Tensor) -> None:
    """``ema += weight * (live - ema)`` for every floating tensor of the state dicts (timm's ``_foreach_lerp_``,
    with the weight a 0-d device tensor), integer buffers copied where ``weight > 0``."""
    pairs = list(zip(ema.state_dict().values(), live.state_dict().values()))
    floats = [(e, m) for e, m in pairs if e.is_floating_point()]
    if floats:
        by_dtype = {e.dtype: weight.to(e.dtype) for e, _ in floats}  # (), one per dtype
        torch._foreach_lerp_([e for e, _ in floats], [m for _, m in floats], [by_dtype[e.dtype] for e, _ in floats])
    for e, m in pairs:
        if not e.is_floating_point():  # e.g. BatchNorm's num_batches_tracked
            e.copy_(torch.where(weight > 0, m, e))


class EmaCallback(Callback):
    """Updates a task's EMA weights after every optimizer step (the trainer's ``on_step_end`` hook), gated on the
    device by the step's NaN/Inf flag (``trainer.found_inf``): a skipped step leaves the EMA as it was, and the
    trainer need not learn each step's verdict on the host."""

    every_step = True

    def __init__(self, task: ImageClassificationTask) -> None:
        self.task = task

    def on_step_end(self, trainer: Any) -> None:
        self.task.update_ema(trainer.found_inf)
