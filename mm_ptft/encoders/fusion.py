"""Fusion modules: combine per-modality embeddings into one vector.

Every fusion is built from ``{name, **kwargs}`` plus the runtime ``dims`` (modality → embedding
size) and answers ``forward(embeddings: dict[str, Tensor], masks=None) -> (B, out_dim)``. Keys
are walked in sorted order, so the result never depends on dict insertion order. An embedding is
either pooled ``(B, D)`` or tokens ``(B, N, D)`` (token fusions use every token; the others pool
tokens by their mask). A modality that is absent (key missing or ``None``) is skipped by the
methods that can (gated, cross-attention, bottleneck) and is an error for ``concat``.
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import nn

from mm_ptft.registry import Registry

FUSIONS: Registry["Fusion"] = Registry("fusion")
Embeddings = Mapping[str, Optional[torch.Tensor]]


def _pool(x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """(B, D) as is; (B, N, D) → masked mean (B, D)."""
    if x.ndim == 2:
        return x
    if mask is None:
        return x.mean(1)  # (B, D)
    w = mask.to(x.dtype).unsqueeze(-1)  # (B, N, 1)
    return (x * w).sum(1) / w.sum(1).clamp_min(1.0)  # (B, D)


def _as_tokens(x: torch.Tensor, mask: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, D) → one token; (B, N, D) with its mask. Returns tokens (B, N, D), mask (B, N) True=real."""
    if x.ndim == 2:
        x = x.unsqueeze(1)  # (B, 1, D)
    if mask is None:
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)  # (B, N)
    return x, mask.bool()


class Fusion(nn.Module):
    """Base: knows its modalities and their sizes; ``present`` filters what a batch carries."""

    def __init__(self, dims: Mapping[str, int], out_dim: int) -> None:
        super().__init__()
        if not dims:
            raise ValueError("fusion: no modalities given (dims is empty)")
        self.modalities = sorted(dims)
        self.dims, self.out_dim = dict(dims), out_dim

    def present(self, embeddings: Embeddings) -> list[str]:
        """Known modalities found in ``embeddings`` (sorted); unknown keys are an error."""
        unknown = sorted(set(k for k, v in embeddings.items() if v is not None) - set(self.modalities))
        if unknown:
            raise KeyError(f"{type(self).__name__}: unknown modality {unknown}; built for {self.modalities}")
        found = [m for m in self.modalities if embeddings.get(m) is not None]
        if not found:
            raise ValueError(f"{type(self).__name__}: none of the modalities {self.modalities} is present")
        return found

    def forward(self, embeddings: Embeddings,
                masks: Optional[Mapping[str, torch.Tensor]] = None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class ConcatFusion(Fusion):
    """Concatenate pooled embeddings in sorted key order, then an MLP. Every modality is required."""

    def __init__(self, dims: Mapping[str, int], out_dim: int, hidden: int, dropout: float) -> None:
        super().__init__(dims, out_dim)
        total = sum(dims.values())
        self.mlp = nn.Sequential(nn.Linear(total, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim))

    def forward(self, embeddings: Embeddings, masks: Optional[Mapping[str, torch.Tensor]] = None) -> torch.Tensor:
        masks = masks or {}
        missing = [m for m in self.modalities if embeddings.get(m) is None]
        if missing:
            raise ValueError(f"concat fusion needs every modality {self.modalities}; missing {missing} "
                             f"(use model.fusion.name=gated, cross_attention or bottleneck to allow missing ones)")
        x = torch.cat([_pool(embeddings[m], masks.get(m)) for m in self.modalities], -1)  # (B, sum D)
        return self.mlp(x)  # (B, out_dim)


class GatedFusion(Fusion):
    """Project each modality to ``out_dim`` and sum with softmax gates computed from the
    projections; absent modalities are left out of the softmax."""

    def __init__(self, dims: Mapping[str, int], out_dim: int) -> None:
        super().__init__(dims, out_dim)
        self.proj = nn.ModuleDict({m: nn.Linear(d, out_dim) for m, d in sorted(dims.items())})
        self.gate = nn.ModuleDict({m: nn.Linear(out_dim, 1) for m in self.modalities})
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, embeddings: Embeddings, masks: Optional[Mapping[str, torch.Tensor]] = None) -> torch.Tensor:
        masks = masks or {}
        found = self.present(embeddings)
        h = torch.stack([self.proj[m](_pool(embeddings[m], masks.get(m))) for m in found], 1)  # (B, M, D)
        logits = torch.cat([self.gate[m](h[:, i]) for i, m in enumerate(found)], -1)  # (B, M)
        # A sample whose mask hides a modality entirely (missing for that sample) gets no gate for it.
        has = torch.stack([masks[m].any(-1) if masks.get(m) is not None and masks[m].ndim == 2
                           else torch.ones(h.shape[0], dtype=torch.bool, device=h.device) for m in found], 1)  # (B, M)
        g = logits.float().masked_fill(~has, float("-inf")).softmax(-1).to(h.dtype)  # (B, M)
        return self.norm((g.unsqueeze(-1) * h).sum(1))  # (B, D)


class _TokenFusion(Fusion):
    """Shared parts of the token fusions: per-modality projection and a learned modality embedding."""

    def __init__(self, dims: Mapping[str, int], out_dim: int) -> None:
        super().__init__(dims, out_dim)
        self.proj = nn.ModuleDict({m: nn.Linear(d, out_dim) for m, d in sorted(dims.items())})
        self.type_embed = nn.ParameterDict({m: nn.Parameter(torch.zeros(out_dim)) for m in self.modalities})

    def context(self, embeddings: Embeddings, masks: Optional[Mapping[str, torch.Tensor]]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """All present tokens, projected and tagged: (B, N_total, D) and mask (B, N_total)."""
        masks = masks or {}
        toks, ms = [], []
        for m in self.present(embeddings):
            x, mask = _as_tokens(embeddings[m], masks.get(m))  # (B, N_m, D_m), (B, N_m)
            toks.append(self.proj[m](x) + self.type_embed[m])  # (B, N_m, D)
            ms.append(mask)
        return torch.cat(toks, 1), torch.cat(ms, 1)


class CrossAttentionFusion(_TokenFusion):
    """A learned query attends over every token of every present modality (``layers`` decoder
    blocks); the query's output is the fused vector."""

    def __init__(self, dims: Mapping[str, int], out_dim: int, heads: int, layers: int, dropout: float) -> None:
        super().__init__(dims, out_dim)
        self.query = nn.Parameter(torch.randn(1, 1, out_dim) * 0.02)
        block = nn.TransformerDecoderLayer(out_dim, heads, 4 * out_dim, dropout, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerDecoder(block, layers)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, embeddings: Embeddings, masks: Optional[Mapping[str, torch.Tensor]] = None) -> torch.Tensor:
        ctx, mask = self.context(embeddings, masks)  # (B, N, D), (B, N)
        q = self.query.expand(ctx.shape[0], -1, -1)  # (B, 1, D)
        out = self.blocks(q, ctx, memory_key_padding_mask=~mask)  # (B, 1, D)
        return self.norm(out[:, 0])  # (B, D)


class BottleneckFusion(_TokenFusion):
    """Latent-bottleneck fusion (Perceiver-style; cf. the fusion bottlenecks of Nagrani et al., 2021):
    a few latent tokens read every present modality's tokens through cross-attention, then
    self-attend; the mean latent is the fused vector. Modalities meet only through the latents."""

    def __init__(self, dims: Mapping[str, int], out_dim: int, num_latents: int, heads: int, layers: int,
                 dropout: float) -> None:
        super().__init__(dims, out_dim)
        self.latents = nn.Parameter(torch.randn(1, num_latents, out_dim) * 0.02)
        block = nn.TransformerDecoderLayer(out_dim, heads, 4 * out_dim, dropout, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerDecoder(block, layers)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, embeddings: Embeddings, masks: Optional[Mapping[str, torch.Tensor]] = None) -> torch.Tensor:
        ctx, mask = self.context(embeddings, masks)  # (B, N, D), (B, N)
        z = self.latents.expand(ctx.shape[0], -1, -1)  # (B, L, D)
        z = self.blocks(z, ctx, memory_key_padding_mask=~mask)  # (B, L, D)
        return self.norm(z.mean(1))  # (B, D)


@FUSIONS.register()
def concat(dims: Mapping[str, int], out_dim: int = 256, hidden: int = 512, dropout: float = 0.1) -> ConcatFusion:
    """Concatenation + 2-layer MLP; needs every modality."""
    return ConcatFusion(dims, out_dim, hidden, dropout)


@FUSIONS.register()
def gated(dims: Mapping[str, int], out_dim: int = 256) -> GatedFusion:
    """Softmax-gated sum of projected embeddings; skips absent modalities."""
    return GatedFusion(dims, out_dim)


@FUSIONS.register()
def cross_attention(dims: Mapping[str, int], out_dim: int = 256, heads: int = 4, layers: int = 1,
                    dropout: float = 0.1) -> CrossAttentionFusion:
    """A learned query cross-attends over all tokens; skips absent modalities."""
    return CrossAttentionFusion(dims, out_dim, heads, layers, dropout)


@FUSIONS.register()
def bottleneck(dims: Mapping[str, int], out_dim: int = 256, num_latents: int = 4, heads: int = 4,
               layers: int = 1, dropout: float = 0.1) -> BottleneckFusion:
    """Latent bottleneck tokens cross-attend over all tokens; skips absent modalities."""
    return BottleneckFusion(dims, out_dim, num_latents, heads, layers, dropout)


def build_fusion(spec: Mapping[str, object], dims: Mapping[str, int], where: str = "model.fusion") -> Fusion:
    """Build a fusion from its config spec and the encoders' output sizes."""
    return FUSIONS.build(spec, where, dims=dict(dims))
