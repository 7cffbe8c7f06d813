"""Image–text matching (ITM, ALBEF/BLIP): a fusion head decides whether an (image, text) pair matches, trained on
each batch's positives and hard negatives mined from the contrastive similarities of the same batch.

For every sample, one negative text is drawn for its image and one negative image for its text, with probability
softmax(similarity) over the batch with the positives excluded (its own pair, and every row whose caption is the
same token sequence: such a "negative" would be a true match), so near-misses are drawn most. The similarities come
from the run's contrastive objective (``clip``/``siglip`` over the pair, found in ``model.objectives`` or named by
``contrastive``) and are not back-propagated through (ALBEF). The loss is the 2-way cross-entropy (match / no
match) over the B positives and up to 2B negatives. Under torchrun the negatives are mined from the local batch.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from mm_ptft.encoders.base import Encoder
from mm_ptft.encoders.fusion import build_fusion
from mm_ptft.objectives import (MODALITY_KEYS, OBJECTIVES, EncodedBatch, Objective, RandomObjective,
                                require_encoders, token_sequence)
from mm_ptft.objectives.contrastive import ContrastiveObjective
from mm_ptft.types import TEXT, TEXT_MASK


def same_text(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, B) True where rows i and j hold the same token sequence (their padding aside)."""
    ids = ids.masked_fill(~mask.bool(), -1)  # (B, L)
    return (ids[:, None, :] == ids[None, :, :]).all(-1)  # (B, B)


def hard_negatives(sim: torch.Tensor, positive: torch.Tensor, generator: Optional[torch.Generator] = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of ``sim`` (B, C), one column drawn with probability softmax(sim row) over the columns that are
    not ``positive`` (B, C bool). Returns (indices (B,), valid (B,)): ``valid`` is False for a row whose every
    column is positive (it has no negative; its index is meaningless)."""
    weights = sim.float().softmax(-1).masked_fill(positive, 0.0)  # (B, C)
    valid = weights.sum(-1) > 0  # (B,)
    weights = torch.where(valid[:, None], weights, torch.ones_like(weights))  # any row: multinomial needs mass
    return torch.multinomial(weights, 1, generator=generator).squeeze(1), valid


class MatchingObjective(RandomObjective):
    """ITM over ``(image, text)`` tokens fused by ``fusion`` (default: cross-attention) → 2 logits. Returns
    ``itm_loss``; in eval also ``itm_correct``/``itm_pairs`` (→ ``itm_accuracy``)."""

    modalities = ("image", "text")

    def __init__(self, dims: Mapping[str, int], fusion: Mapping[str, Any], contrastive: str = "",
                 where: str = "model.objectives.itm") -> None:
        super().__init__()
        self.fusion = build_fusion({"out_dim": 128, **dict(fusion)}, dims, f"{where}.fusion")
        self.head = nn.Linear(self.fusion.out_dim, 2)
        self.contrastive_key, self.where = contrastive, where
        self._similarity: tuple[ContrastiveObjective, ...] = ()  # a reference, not a submodule (no duplicate weights)

    def bind(self, objectives: Mapping[str, Objective]) -> None:
        """Find the contrastive objective whose similarities pick the hard negatives (PretrainTask calls this)."""
        found = [(k, o) for k, o in sorted(objectives.items()) if isinstance(o, ContrastiveObjective)
                 and ("image", "text") in o.pairs and (not self.contrastive_key or k == self.contrastive_key)]
        if not found:
            named = f"named {self.contrastive_key!r} " if self.contrastive_key else ""
            raise ValueError(f"{self.where}: ITM mines hard negatives from a contrastive objective {named}over "
                             f"[image, text]; add one to model.objectives (e.g. clip: {{name: clip, pairs: "
                             f"[[image, text]]}})")
        self._similarity = (found[0][1],)

    def similarities(self, feats: EncodedBatch) -> torch.Tensor:
        """Image→text similarity (B, B) of the contrastive objective, scaled by its temperature; no gradient."""
        if not self._similarity:
            raise ValueError(f"{self.where}: not bound to a contrastive objective (call bind(objectives))")
        obj = self._similarity[0]
        with torch.no_grad():
            return obj.losses["image_text"].scale * obj.embed(feats, "image") @ obj.embed(feats, "text").T

    def match_logits(self, image: tuple[torch.Tensor, Optional[torch.Tensor]],
                     text: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """(P, 2) match logits of P (image tokens, text tokens) pairs."""
        fused = self.fusion({"image": image[0], "text": text[0]}, {"image": image[1], "text": text[1]})  # (P, D)
        return self.head(fused)  # (P, 2)

    def forward(self, feats: EncodedBatch, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        img, img_mask = token_sequence(feats["image"])  # (B, N, D_i)
        img_mask = torch.ones(img.shape[:2], dtype=torch.bool, device=img.device) if img_mask is None else img_mask
        text = feats["text"]
        txt, txt_mask = text.tokens, (text.mask if text.mask is not None else batch[TEXT_MASK]).bool()  # (B, L, D_t)
        sim = self.similarities(feats)  # (B, B)
        positive = same_text(batch[TEXT], batch[TEXT_MASK])  # (B, B) the diagonal and duplicate captions
        gen = self.generator(sim.device)
        neg_text, ok_t = hard_negatives(sim, positive, gen)  # (B,) a text for each image
        neg_image, ok_i = hard_negatives(sim.T, positive.T, gen)  # (B,) an image for each text
        rows = torch.arange(img.shape[0], device=img.device)
        i_idx = torch.cat([rows, rows[ok_t], neg_image[ok_i]])  # (P,)
        t_idx = torch.cat([rows, neg_text[ok_t], rows[ok_i]])  # (P,)
        labels = torch.cat([torch.ones_like(rows), torch.zeros_like(i_idx[len(rows):])])  # (P,) 1 = match
        logits = self.match_logits((img[i_idx], img_mask[i_idx]), (txt[t_idx], txt_mask[t_idx]))  # (P, 2)
        out = {"itm_loss": F.cross_entropy(logits.float(), labels)}
        if not self.training:
            out.update(itm_correct=(logits.argmax(-1) == labels).sum().float(),
                       itm_pairs=torch.tensor(float(len(labels)), device=logits.device))
        return out

    def applies_to(self, batch: Mapping[str, Any]) -> bool:
        return all(MODALITY_KEYS[m] in batch for m in self.modalities)


@OBJECTIVES.register()
def itm(encoders: Mapping[str, Encoder], fusion: Optional[dict[str, Any]] = None, contrastive: str = "",
        where: str = "model.objectives.itm") -> MatchingObjective:
    """Image–text matching with in-batch hard negatives; needs a ``clip``/``siglip`` objective over
    [image, text] in the same run (``contrastive``: its key, default the first such)."""
    require_encoders(encoders, ["image", "text"], where)
    img = encoders["image"]
    dims = {"image": getattr(img, "token_dim", 0) or img.out_dim, "text": encoders["text"].out_dim}
    return MatchingObjective(dims, dict(fusion or {"name": "cross_attention"}), contrastive, where)


__all__ = ["MatchingObjective", "hard_negatives", "itm", "same_text"]
