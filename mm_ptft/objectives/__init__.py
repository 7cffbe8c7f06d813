"""Pretraining objectives: contrastive (CLIP, SigLIP) and masked modelling (MLM, MAE, spectrogram).

Each objective is a pure loss function plus an ``Objective`` module owning its learnable parts.
``OBJECTIVES`` maps config names to builders; a builder receives the run's encoders (runtime
argument ``encoders``) to size its heads. ``Objective.forward(feats, batch)`` returns a dict of
named parts ending in ``_loss``.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
from torch import nn

from mm_ptft.encoders.base import Encoder
from mm_ptft.registry import Registry
from mm_ptft.types import AUDIO, IMAGE, TEXT, VIDEO, EncoderOutput

OBJECTIVES: Registry["Objective"] = Registry("objective")

#: the batch key that must be present for a modality to be usable
MODALITY_KEYS = {"text": TEXT, "image": IMAGE, "audio": AUDIO, "video": VIDEO}


class EncodedBatch:
    """Encoder outputs of one batch, computed on first use and shared by the objectives."""

    def __init__(self, encoders: Mapping[str, Encoder], batch: Mapping[str, Any]) -> None:
        self.encoders, self.batch = encoders, batch
        self._cache: dict[str, EncoderOutput] = {}

    def __getitem__(self, modality: str) -> EncoderOutput:
        if modality not in self._cache:
            self._cache[modality] = self.encoders[modality](self.batch)
        return self._cache[modality]


class Objective(nn.Module):
    """Base: ``modalities`` it needs in a batch; ``forward(feats, batch) -> {"<name>_loss": …}``."""

    modalities: tuple[str, ...] = ()
    name: str = "objective"

    def applies_to(self, batch: Mapping[str, Any]) -> bool:
        """True when the batch carries every modality this objective needs."""
        return all(MODALITY_KEYS[m] in batch for m in self.modalities)

    def forward(self, feats: EncodedBatch, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError


class RandomObjective(Objective):
    """An objective that draws random choices (masks, negatives): from the global RNG in training (seeded and
    resumed by the trainer), from a fixed-seed generator in eval (restarted whenever training resumes), so eval
    losses are comparable across steps."""

    def __init__(self) -> None:
        super().__init__()
        self._eval_gen: Optional[torch.Generator] = None

    def train(self, mode: bool = True) -> "RandomObjective":
        self._eval_gen = None
        return super().train(mode)

    def generator(self, device: torch.device) -> Optional[torch.Generator]:
        if self.training:
            return None
        if self._eval_gen is None:
            self._eval_gen = torch.Generator(device).manual_seed(1234)
        return self._eval_gen


def token_sequence(out: EncoderOutput) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """An encoder's tokens (B, M, D) with their mask (True = real), or its pooled vector as one token (B, 1, D)."""
    if out.tokens is not None:
        return out.tokens, out.mask
    return out.pooled.unsqueeze(1), None


def require_encoders(encoders: Mapping[str, Encoder], needed: tuple[str, ...] | list[str], where: str) -> None:
    """Clear error when an objective names a modality without a configured encoder."""
    missing = [m for m in needed if m not in encoders]
    if missing:
        raise KeyError(f"{where}: needs encoder(s) for {missing}; configure model.{missing[0]} "
                       f"(configured: {sorted(encoders)})")


__all__ = ["OBJECTIVES", "EncodedBatch", "MODALITY_KEYS", "Objective", "RandomObjective", "require_encoders",
           "token_sequence"]
