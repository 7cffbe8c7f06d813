"""Contrastive objectives between any pair of modalities: CLIP (InfoNCE) and SigLIP (pairwise sigmoid).

Under ``torchrun`` the negatives come from every process: each rank gathers the other ranks'
embeddings with ``torch.distributed.nn.functional.all_gather`` (which carries gradients back) and
scores its own rows against the whole global batch. The per-rank losses then average (as DDP
averages gradients) to exactly the loss and gradients of one process holding the global batch.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mm_ptft.encoders.base import Encoder
from mm_ptft.objectives import MODALITY_KEYS, OBJECTIVES, EncodedBatch, Objective, require_encoders

LossFn = Callable[..., torch.Tensor]


def _world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor, pad_value: float = 0) -> tuple[torch.Tensor, int]:
    """Concatenate ``x`` (B_r, ...) from every rank in rank order → (sum B_r, ...), and the offset of
    this rank's rows in it. Gradients flow back to each rank's own rows. Ranks may hold different
    (even zero) row counts and different sizes along the other axes (token sequences of another
    length): every axis is padded with ``pad_value`` to the largest size for the collective, and the
    row padding dropped (the other axes stay padded: the caller masks them). Integer tensors gather
    too (without gradient). Identity outside a process group."""
    rank, world = _world()
    if world == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather

    shape = torch.tensor(list(x.shape), device=x.device)
    shapes = [torch.zeros_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape)
    largest = torch.stack(shapes).amax(0).tolist()
    counts = [int(s[0]) for s in shapes]
    pad = [p for d in reversed(range(x.dim())) for p in (0, int(largest[d]) - x.shape[d])]
    padded = F.pad(x, pad, value=pad_value).contiguous()  # (B_max, ...max)
    parts = all_gather(padded)  # world x (B_max, ...), differentiable
    return torch.cat([p[:c] for p, c in zip(parts, counts)], 0), sum(counts[:rank])  # (sum B_r, ...)


def clip_loss(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor | float,
              gather: bool = True) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP): cross-entropy of a→b and b→a over L2-normalised embeddings,
    averaged. ``logit_scale`` multiplies the cosine similarities (CLIP's ``exp(t)``).
    a, b: (B, D) with row i of ``a`` paired to row i of ``b``. With ``gather`` under torchrun,
    the other ranks' rows are extra negatives."""
    a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)  # (B, D)
    all_a, offset = gather_with_grad(a) if gather else (a, 0)  # (N, D)
    all_b, _ = gather_with_grad(b) if gather else (b, 0)  # (N, D)
    labels = torch.arange(a.shape[0], device=a.device) + offset  # (B,)
    logits_ab = logit_scale * a @ all_b.T  # (B, N)
    logits_ba = logit_scale * b @ all_a.T  # (B, N)
    # sum / B rather than mean: a rank with no rows (it only joins the gathers) gives an exact,
    # differentiable 0 through the same operations, so its backward runs the same collectives
    n = max(a.shape[0], 1)
    ce = F.cross_entropy(logits_ab, labels, reduction="sum") + F.cross_entropy(logits_ba, labels, reduction="sum")
    return 0.5 * ce / n


def siglip_loss(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor | float,
                logit_bias: torch.Tensor | float, gather: bool = True) -> torch.Tensor:
    """Pairwise sigmoid loss (SigLIP, Zhai et al. 2023): every (a_i, b_j) is a binary
    match/no-match problem; summed over pairs and divided by the batch size.
    a, b: (B, D), L2-normalised here."""
    a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)  # (B, D)
    all_b, offset = gather_with_grad(b) if gather else (b, 0)  # (N, D)
    logits = logit_scale * a @ all_b.T + logit_bias  # (B, N)
    labels = -torch.ones_like(logits)  # (B, N)
    rows = torch.arange(a.shape[0], device=a.device)  # (B,)
    labels[rows, rows + offset] = 1.0
    # each rank holds B of the N rows; dividing by the local B makes the rank mean the global loss
    return -F.logsigmoid(labels * logits).sum() / max(a.shape[0], 1)


class ContrastiveLoss(nn.Module):
    """One contrastive loss with its own learnable temperature (and bias for SigLIP).

    ``kind``: ``clip`` or ``siglip``. The temperature is stored as log-scale and clamped at
    ``max_scale`` (CLIP's 100) so it cannot run away."""

    def __init__(self, kind: str = "clip", init_scale: Optional[float] = None, init_bias: float = -10.0,
                 learn_scale: bool = True, max_scale: float = 100.0) -> None:
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"contrastive loss kind {kind!r}; choose one of {sorted(LOSSES)}")
        self.kind, self.max_scale = kind, max_scale
        init = init_scale if init_scale is not None else (1 / 0.07 if kind == "clip" else 10.0)
        self.log_scale = nn.Parameter(torch.tensor(math.log(init)), requires_grad=learn_scale)
        self.bias = nn.Parameter(torch.tensor(float(init_bias))) if kind == "siglip" else None

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=self.max_scale)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Gathers negatives from all ranks in training; evaluation stays local (ranks' eval
        batches differ in number)."""
        bias = () if self.bias is None else (self.bias,)
        return LOSSES[self.kind](a, b, self.scale, *bias, gather=self.training)


LOSSES: dict[str, LossFn] = {"clip": clip_loss, "siglip": siglip_loss}


class Projection(nn.Module):
    """Encoder embedding → shared contrastive space: linear (CLIP) or 2-layer MLP."""

    def __init__(self, in_dim: int, embed_dim: int, hidden: int = 0) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.net = (nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, embed_dim)) if hidden
                    else nn.Linear(in_dim, embed_dim, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, E)


def resolve_pairs(modalities: Sequence[str], pairs: Any, anchor: str = "") -> list[tuple[str, str]]:
    """Modality pairs to contrast, each sorted: explicit ``[[a, b], ...]``, ``"all"`` pairs, or every
    modality against ``anchor`` (ImageBind-style)."""
    mods = sorted(set(modalities))
    if anchor:
        if anchor not in mods:
            raise ValueError(f"anchor modality {anchor!r} is not among {mods}")
        found = [tuple(sorted((anchor, m))) for m in mods if m != anchor]
    elif pairs in (None, "all", []):
        found = list(itertools.combinations(mods, 2))
    else:
        found = [tuple(sorted(p)) for p in pairs]
        bad = [p for p in found if len(p) != 2 or p[0] == p[1] or not set(p) <= set(mods)]
        if bad:
            raise ValueError(f"pairs {bad}: each pair needs two different modalities from {mods}")
    if not found:
        raise ValueError(f"no modality pair to contrast among {mods}: need at least two modalities")
    return sorted(set(found))  # type: ignore[arg-type]


class ContrastiveObjective(Objective):
    """Contrastive learning over one or more modality pairs with shared per-modality projections
    and one learnable temperature per pair. Returns ``{kind}_{a}_{b}_loss`` for each pair."""

    def __init__(self, dims: Mapping[str, int], pairs: Sequence[tuple[str, str]], kind: str = "clip",
                 embed_dim: int = 128, proj_hidden: int = 0, init_scale: Optional[float] = None,
                 init_bias: float = -10.0, learn_scale: bool = True) -> None:
        super().__init__()
        self.pairs = [tuple(sorted(p)) for p in pairs]
        self.modalities = tuple(sorted({m for p in self.pairs for m in p}))
        self.kind, self.embed_dim = kind, embed_dim
        self.proj = nn.ModuleDict({m: Projection(dims[m], embed_dim, proj_hidden) for m in self.modalities})
        self.losses = nn.ModuleDict({f"{a}_{b}": ContrastiveLoss(kind, init_scale, init_bias, learn_scale)
                                     for a, b in self.pairs})

    def applies_to(self, batch: Mapping[str, Any]) -> bool:
        return any(all(MODALITY_KEYS[m] in batch for m in p) for p in self.pairs)

    def embed(self, feats: EncodedBatch, modality: str) -> torch.Tensor:
        """Projected, L2-normalised embedding of one modality: (B, E)."""
        return F.normalize(self.proj[modality](feats[modality].pooled).float(), dim=-1)  # (B, E)

    def forward(self, feats: EncodedBatch, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        out = {}
        for a, b in self.pairs:
            if MODALITY_KEYS[a] in batch and MODALITY_KEYS[b] in batch:
                out[f"{self.kind}_{a}_{b}_loss"] = self.losses[f"{a}_{b}"](self.embed(feats, a), self.embed(feats, b))
        return out

    def join_collectives(self, device: torch.device, pairs: Sequence[tuple[str, str]]) -> torch.Tensor:
        """Under torchrun, take part in the all-gathers of ``pairs`` with no rows (for a rank whose
        batch lacks a source that another rank's mixed batch has). Returns an exact zero that must
        join the loss, so that this rank's backward runs the gathers' collectives too."""
        zero = torch.zeros((), device=device)
        if not self.training or _world()[1] == 1:
            return zero
        for a, b in sorted(pairs):
            empty_a = self.proj[a](torch.zeros(0, self.proj[a].in_dim, device=device))  # (0, E)
            empty_b = self.proj[b](torch.zeros(0, self.proj[b].in_dim, device=device))  # (0, E)
            zero = zero + self.losses[f"{a}_{b}"](empty_a, empty_b)
        return zero


def _build(kind: str, encoders: Mapping[str, Encoder], modalities: Sequence[str], pairs: Any, anchor: str,
           embed_dim: int, proj_hidden: int, init_scale: Optional[float], init_bias: float,
           learn_scale: bool) -> ContrastiveObjective:
    mods = list(modalities) or sorted(encoders)
    found = resolve_pairs(mods, pairs, anchor)
    require_encoders(encoders, sorted({m for p in found for m in p}), f"objective {kind}")
    dims = {m: encoders[m].out_dim for m in encoders}
    return ContrastiveObjective(dims, found, kind, embed_dim, proj_hidden, init_scale, init_bias, learn_scale)


@OBJECTIVES.register()
def clip(encoders: Mapping[str, Encoder], modalities: Sequence[str] = (), pairs: Any = "all", anchor: str = "",
         embed_dim: int = 128, proj_hidden: int = 0, init_scale: Optional[float] = None,
         learn_scale: bool = True) -> ContrastiveObjective:
    """CLIP InfoNCE over modality pairs (default: all pairs of ``modalities`` or of the encoders)."""
    return _build("clip", encoders, modalities, pairs, anchor, embed_dim, proj_hidden, init_scale, 0.0, learn_scale)


@OBJECTIVES.register()
def siglip(encoders: Mapping[str, Encoder], modalities: Sequence[str] = (), pairs: Any = "all", anchor: str = "",
           embed_dim: int = 128, proj_hidden: int = 0, init_scale: Optional[float] = 10.0, init_bias: float = -10.0,
           learn_scale: bool = True) -> ContrastiveObjective:
    """SigLIP pairwise sigmoid loss over modality pairs (init t'=log 10, b=-10 as in the paper)."""
    return _build("siglip", encoders, modalities, pairs, anchor, embed_dim, proj_hidden, init_scale, init_bias,
                  learn_scale)
