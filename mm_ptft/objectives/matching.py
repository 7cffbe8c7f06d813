"""Image–text matching (ITM, ALBEF/BLIP): a fusion head decides whether an (image, text) pair matches, trained on
each batch's positives and hard negatives mined from the contrastive similarities of the same batch.

For every sample, one negative text is drawn for its image and one negative image for its text, with probability
softmax(similarity) over the batch with the positives excluded (its own pair, and every row whose caption is the
same token sequence: such a "negative" would be a true match), so near-misses are drawn most. The similarities come
from the run's contrastive objective (``clip``/``siglip`` over the pair, found in ``model.objectives`` or named by
``contrastive``) and are not back-propagated through (ALBEF). The loss is the 2-way cross-entropy (match / no
match) over the B positives and up to 2B negatives.

Under torchrun (training) the negatives come from the global batch, as BLIP mines them: each rank gathers every
rank's contrastive embeddings (no gradient) for the similarities, and the caption ids, image tokens and text tokens
with ``contrastive.gather_with_grad`` (gradients flow back to the rank that owns a row), so a rank's image may be
paired with another rank's caption. Each rank's loss sums its pairs' cross-entropy and divides by the global pair
count over the world size, so the ranks' mean (what DDP's gradient averaging optimises) is exactly the loss of one
process holding the concatenated batch with the same pairs. Evaluation stays local, as the contrastive losses do.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from mm_ptft.encoders.base import Encoder
from mm_ptft.encoders.fusion import build_fusion
from mm_ptft.objectives import (MODALITY_KEYS, OBJECTIVES, EncodedBatch, Objective, RandomObjective,
                                require_encoders, token_sequence)
from mm_ptft.objectives.contrastive import ContrastiveObjective, _world, gather_with_grad
from mm_ptft.types import TEXT, TEXT_MASK


def same_text(ids: torch.Tensor, mask: torch.Tensor, other_ids: Optional[torch.Tensor] = None,
              other_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, C) True where row i of ``ids`` and row j of ``other_ids`` (default: ``ids`` itself, C = B) hold the same
    token sequence (their padding aside; the two may be padded to different lengths)."""
    other_ids, other_mask = (ids, mask) if other_ids is None else (other_ids, other_mask)
    width = max(ids.shape[1], other_ids.shape[1])
    a = F.pad(ids.masked_fill(~mask.bool(), -1), (0, width - ids.shape[1]), value=-1)  # (B, W)
    b = F.pad(other_ids.masked_fill(~other_mask.bool(), -1), (0, width - other_ids.shape[1]), value=-1)  # (C, W)
    return (a[:, None, :] == b[None, :, :]).all(-1)  # (B, C)


def hard_negatives(sim: torch.Tensor, positive: torch.Tensor, generator: Optional[torch.Generator] = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of ``sim`` (B, C), one column drawn with probability softmax(sim row) over the columns that are
    not ``positive`` (B, C bool). Returns (indices (B,), valid (B,)): ``valid`` is False for a row whose every
    column is positive (it has no negative; its index is meaningless)."""
    weights = sim.float().softmax(-1).masked_fill(positive, 0.0)  # (B, C)
    valid = weights.sum(-1) > 0  # (B,)
    weights = torch.where(valid[:, None], weights, torch.ones_like(weights))  # any row: multinomial needs mass
    return torch.multinomial(weights, 1, generator=generator).squeeze(1), valid


class MatchPairs(NamedTuple):
    """The (image, text) pairs one rank scores: indices into the (gathered) rows, their labels (1 = match) and this
    rank's offset in the global batch. ``pairs_total``: every rank's pair count summed (the loss normaliser)."""

    image: tuple[torch.Tensor, torch.Tensor]  # tokens (N, T, D_i) and mask (N, T) of every rank's images
    text: tuple[torch.Tensor, torch.Tensor]  # tokens (N, T, D_t) and mask (N, T) of every rank's captions
    image_idx: torch.Tensor  # (P,)
    text_idx: torch.Tensor  # (P,)
    labels: torch.Tensor  # (P,)
    offset: int
    pairs_total: torch.Tensor  # () float
    world: int


def pack_tokens(img: torch.Tensor, img_mask: torch.Tensor, txt: torch.Tensor, txt_mask: torch.Tensor
                ) -> torch.Tensor:
    """Image tokens (B, M, D_i), text tokens (B, L, D_t) and their masks side by side along the channels, padded to
    T = max(M, L) tokens: (B, T, D_i + D_t + 2), so that one gather carries all four (one collective forward and
    one backward, in the same order on every rank)."""
    dtype = torch.promote_types(img.dtype, txt.dtype)
    t = max(img.shape[1], txt.shape[1])

    def part(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x.to(dtype), mask[..., None].to(dtype)], -1)  # (B, n, D + 1)
        return F.pad(x, (0, 0, 0, t - x.shape[1]))  # (B, T, D + 1)

    return torch.cat([part(img, img_mask), part(txt, txt_mask)], -1)  # (B, T, D_i + D_t + 2)


def unpack_tokens(packed: torch.Tensor, image_dim: int) -> tuple[tuple[torch.Tensor, torch.Tensor],
                                                                 tuple[torch.Tensor, torch.Tensor]]:
    """``pack_tokens``' inverse: ((image tokens, mask), (text tokens, mask)), each (N, T, D) and (N, T) bool."""
    img, img_mask = packed[..., :image_dim], packed[..., image_dim] > 0.5
    txt, txt_mask = packed[..., image_dim + 1:-1], packed[..., -1] > 0.5
    return (img, img_mask), (txt, txt_mask)


class MatchingObjective(RandomObjective):
    """ITM over ``(image, text)`` tokens fused by ``fusion`` (default: cross-attention) → 2 logits. Returns
    ``itm_loss``; in eval also ``itm_correct``/``itm_pairs`` (→ ``itm_accuracy``)."""

    modalities = ("image", "text")

    def __init__(self, dims: Mapping[str, int], fusion: Mapping[str, Any], contrastive: str = "",
                 where: str = "model.objectives.itm") -> None:
        super().__init__()
        self.fusion = build_fusion({"out_dim": 128, **dict(fusion)}, dims, f"{where}.fusion")
        self.image_dim, self.text_dim = int(dims["image"]), int(dims["text"])
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

    def similarities(self, feats: EncodedBatch, gather: bool = False) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Image→text (B, N) and text→image (B, N) similarities of this rank's rows against the batch's (with
        ``gather``: every rank's) rows, scaled by the contrastive temperature; no gradient. And this rank's offset."""
        if not self._similarity:
            raise ValueError(f"{self.where}: not bound to a contrastive objective (call bind(objectives))")
        obj = self._similarity[0]
        with torch.no_grad():
            img, txt = obj.embed(feats, "image"), obj.embed(feats, "text")  # (B, E)
            all_img, offset = gather_with_grad(img) if gather else (img, 0)  # (N, E)
            all_txt, _ = gather_with_grad(txt) if gather else (txt, 0)  # (N, E)
            scale = obj.losses["image_text"].scale
            return scale * img @ all_txt.T, scale * txt @ all_img.T, offset  # (B, N) each

    def match_logits(self, image: tuple[torch.Tensor, Optional[torch.Tensor]],
                     text: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """(P, 2) match logits of P (image tokens, text tokens) pairs."""
        fused = self.fusion({"image": image[0], "text": text[0]}, {"image": image[1], "text": text[1]})  # (P, D)
        return self.head(fused)  # (P, 2)

    def match_pairs(self, feats: EncodedBatch, batch: Mapping[str, Any]) -> MatchPairs:
        """This rank's positives and hard negatives: in training under torchrun mined from the global batch."""
        img, img_mask = token_sequence(feats["image"])  # (B, M, D_i)
        img_mask = torch.ones(img.shape[:2], dtype=torch.bool, device=img.device) if img_mask is None else img_mask
        text = feats["text"]
        txt, txt_mask = text.tokens, (text.mask if text.mask is not None else batch[TEXT_MASK]).bool()  # (B, L, D_t)
        gather = self.training and _world()[1] > 1
        sims = self.similarities(feats, gather)  # (B, N), (B, N), offset
        return self.mine(sims, (batch[TEXT], batch[TEXT_MASK].bool()), pack_tokens(img, img_mask, txt, txt_mask),
                         gather)

    def mine(self, sims: tuple[torch.Tensor, torch.Tensor, int], ids: tuple[torch.Tensor, torch.Tensor],
             packed: torch.Tensor, gather: bool) -> MatchPairs:
        """Draw one negative text per image and one negative image per text from the similarities' columns (every
        rank's rows with ``gather``); the caption ids (B, L) say which columns are positives."""
        sim_i2t, sim_t2i, offset = sims
        everyone = (lambda x: gather_with_grad(x)[0]) if gather else (lambda x: x)
        positive = same_text(ids[0], ids[1], everyone(ids[0]), everyone(ids[1].long()).bool())  # (B, N) own + dupes
        gen = self.generator(sim_i2t.device)
        neg_text, ok_t = hard_negatives(sim_i2t, positive, gen)  # (B,) a text for each image
        neg_image, ok_i = hard_negatives(sim_t2i, positive, gen)  # (B,) an image for each text
        rows = torch.arange(sim_i2t.shape[0], device=sim_i2t.device) + offset  # (B,) this rank's global rows
        i_idx = torch.cat([rows, rows[ok_t], neg_image[ok_i]])  # (P,)
        t_idx = torch.cat([rows, neg_text[ok_t], rows[ok_i]])  # (P,)
        labels = torch.cat([torch.ones_like(rows), torch.zeros_like(i_idx[len(rows):])])  # (P,) 1 = match
        total = everyone(torch.tensor([[float(len(labels))]], device=rows.device)).sum()
        if gather and torch.is_grad_enabled() and not packed.requires_grad:
            # frozen encoders, or a rank joining with no rows: its gather still needs its backward collective, as
            # every other rank's does
            packed = packed.detach().requires_grad_(True)
        image, text = unpack_tokens(everyone(packed), self.image_dim)  # (N, T, D_i), (N, T, D_t)
        return MatchPairs(image, text, i_idx, t_idx, labels, offset, total, _world()[1] if gather else 1)

    def pair_loss(self, p: MatchPairs) -> tuple[torch.Tensor, torch.Tensor]:
        """(this rank's loss: its pairs' summed cross-entropy over ``pairs_total / world``, the pairs' logits (P, 2)).
        A rank with no pairs gives an exact zero still joined to the gathered tokens (so its backward runs the
        gather's collective)."""
        if not len(p.labels):
            return p.image[0].sum() * 0.0, p.image[0].new_zeros(0, 2)
        logits = self.match_logits((p.image[0][p.image_idx], p.image[1][p.image_idx]),
                                   (p.text[0][p.text_idx], p.text[1][p.text_idx]))  # (P, 2)
        ce = F.cross_entropy(logits.float(), p.labels, reduction="sum")
        return ce * p.world / p.pairs_total.clamp(min=1.0), logits

    def join_collectives(self, device: torch.device, pairs: Any = ()) -> torch.Tensor:
        """Under torchrun, take part with no rows in the gathers of a batch another rank holds and this one lacks
        (as ``ContrastiveObjective.join_collectives``); the exact zero returned must join the loss."""
        zero = torch.zeros((), device=device)
        if not self.training or _world()[1] == 1:
            return zero
        obj = self._similarity[0]
        none = torch.zeros(0, obj.embed_dim, device=device)  # (0, E)
        with torch.no_grad():  # the similarities' two gathers, as ``similarities`` runs them
            everyone, offset = gather_with_grad(none)  # (N, E)
            gather_with_grad(none)
        empty_sim = none @ everyone.T  # (0, N)
        ids = torch.zeros(0, 1, dtype=torch.long, device=device)
        packed = pack_tokens(torch.zeros(0, 1, self.image_dim, device=device), torch.zeros(0, 1, device=device),
                             torch.zeros(0, 1, self.text_dim, device=device), torch.zeros(0, 1, device=device))
        p = self.mine((empty_sim, empty_sim, offset), (ids, ids.bool()), packed, True)
        return self.pair_loss(p)[0]

    def forward(self, feats: EncodedBatch, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        p = self.match_pairs(feats, batch)
        loss, logits = self.pair_loss(p)
        out = {"itm_loss": loss}
        if not self.training:
            out.update(itm_correct=(logits.argmax(-1) == p.labels).sum().float(),
                       itm_pairs=torch.tensor(float(len(p.labels)), device=logits.device))
        return out

    def applies_to(self, batch: Mapping[str, Any]) -> bool:
        return all(MODALITY_KEYS[m] in batch for m in self.modalities)


@OBJECTIVES.register()
def itm(encoders: Mapping[str, Encoder], fusion: Optional[dict[str, Any]] = None, contrastive: str = "",
        where: str = "model.objectives.itm") -> MatchingObjective:
    """Image–text matching with hard negatives mined in the (global, under torchrun) batch; needs a ``clip``/``siglip`` objective over
    [image, text] in the same run (``contrastive``: its key, default the first such)."""
    require_encoders(encoders, ["image", "text"], where)
    img = encoders["image"]
    dims = {"image": getattr(img, "token_dim", 0) or img.out_dim, "text": encoders["text"].out_dim}
    return MatchingObjective(dims, dict(fusion or {"name": "cross_attention"}), contrastive, where)


__all__ = ["MatchPairs", "MatchingObjective", "hard_negatives", "itm", "same_text"]
