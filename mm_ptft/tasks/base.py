"""The Task contract the trainer runs, and what a recipe prepares for it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset


class Metrics(Protocol):
    """Accumulates eval outputs; ``compute`` returns metric name → float (synced across ranks)."""

    def update(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> None: ...

    def compute(self) -> dict[str, float]: ...

    def to(self, device: torch.device) -> "Metrics": ...


class Task(nn.Module):
    """A trainable model. In training ``forward(batch)`` returns ``{"loss": total, "<part>_loss": …}``;
    in eval mode it returns what ``build_metrics()`` consumes (and ``loss`` where labels exist)."""

    main_metric: str = "loss"
    greater_is_better: bool = True

    def train(self, mode: bool = True) -> "Task":
        """``nn.Module.train``, except that frozen parts stay in eval mode (see ``keep_frozen_in_eval``).
        Wrappers (DDP, FSDP2, ``torch.compile``) reach this through ``nn.Module.train`` of their child."""
        super().train(mode)
        if mode:
            keep_frozen_in_eval(self)
        return self

    def build_metrics(self) -> Metrics:
        raise NotImplementedError

    def encoders(self) -> dict[str, nn.Module]:
        """Modality → encoder, for fine-tuning strategies and for saving encoder directories."""
        from mm_ptft.encoders.base import Encoder

        return {m.modality: m for m in self.modules() if isinstance(m, Encoder)}


def frozen_parts(module: nn.Module) -> list[nn.Module]:
    """The outermost sub-modules (``module`` itself included) that hold parameters and train none."""
    params = list(module.parameters())
    if params and not any(p.requires_grad for p in params):
        return [module]
    return [part for child in module.children() for part in frozen_parts(child)]


def keep_frozen_in_eval(module: nn.Module) -> None:
    """Put every frozen part of ``module`` in eval mode: a linear-probed encoder, the layers
    ``freeze_layers`` froze, the BatchNorms beside LoRA adapters, a distillation teacher. Their
    BatchNorm running statistics (and counters) then stay as loaded and their dropout is off;
    parameter-free modules among trainable ones (a head's dropout) keep training mode."""
    for part in frozen_parts(module):
        part.eval()


@dataclass
class Prepared:
    """Everything a recipe hands the trainer."""

    task: Task
    train_data: Optional[Dataset]
    eval_data: Optional[Dataset]
    collate: Callable[[list[Any]], dict[str, Any]]
    train_lengths: Optional[Sequence[int]] = None  # for length-grouped batching
    eval_lengths: Optional[Sequence[int]] = None
    counters: dict[str, int] = field(default_factory=dict)  # skipped/dropped/truncated samples
