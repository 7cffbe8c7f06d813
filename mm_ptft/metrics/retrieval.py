"""Metrics for contrastive models: cross-modal retrieval recall@K in both directions, zero-shot
classification from class-name prompts, and the mean of every ``*_loss`` the task reports.

Retrieval is over the whole eval split (row i of one modality is paired with row i of the
other), so embeddings are accumulated and, under torchrun, gathered from every rank.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
import torch.distributed as dist
import torchmetrics

from mm_ptft.metrics.captioning import CaptionScores
from mm_ptft.types import LABELS


def recall_at_k(sim: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """Share of queries whose match (the diagonal) ranks in the top k. sim (N_query, N_candidate);
    query i matches candidate i. Ties count in the query's favour (rank = candidates scored higher)."""
    true = sim.diagonal().unsqueeze(1)  # (N, 1)
    rank = (sim > true).sum(1)  # (N,) candidates strictly better than the match
    return {k: float((rank < k).float().mean()) for k in ks}


def _gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate (N_r, ...) tensors from every rank (sizes may differ)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, x.cpu())
    return torch.cat(parts, 0).to(x.device)


def token_perplexities(totals: Mapping[str, float]) -> dict[str, float]:
    """The summed totals, ``<p>_perplexity`` = exp(``<p>_nll_sum`` / ``<p>_tokens``) for each pair (the
    token-weighted mean NLL over the whole split, not a mean of per-batch means) and ``<p>_accuracy`` =
    ``<p>_correct`` / ``<p>_pairs`` (ITM)."""
    out = {k: v for k, v in sorted(totals.items()) if not k.endswith("_nll_sum")}
    for key in sorted(totals):
        prefix = key[: -len("_tokens")]
        if key.endswith("_tokens") and f"{prefix}_nll_sum" in totals and totals[key] > 0:
            out[f"{prefix}_perplexity"] = math.exp(totals[f"{prefix}_nll_sum"] / totals[key])
        prefix = key[: -len("_pairs")]
        if key.endswith("_pairs") and f"{prefix}_correct" in totals and totals[key] > 0:
            out[f"{prefix}_accuracy"] = totals[f"{prefix}_correct"] / totals[key]
    return out


class PretrainMetrics:
    """Mean of each ``*_loss`` in eval outputs; the sums of ``out['totals']`` with the perplexities they give
    (``clm_perplexity``, ``caption_image_perplexity``); BLEU-4 and CIDEr of the captions in ``out['texts']``
    (``caption_image_bleu4``, ``caption_image_cider``: ``metrics.captioning``); with ``out['embeddings']`` (modality → (B, E),
    L2-normalised) retrieval recall@K for ``pairs`` in both directions (``image_to_text_r1``…)
    plus ``mean_r1``; with ``out['zeroshot_logits']`` (modality → (B, C)) and labels,
    ``zeroshot_<modality>_accuracy`` and their mean ``zeroshot_accuracy``."""

    def __init__(self, pairs: Sequence[tuple[str, str]] = (), num_classes: int = 0,
                 ks: Sequence[int] = (1, 5, 10)) -> None:
        self.pairs, self.num_classes, self.ks = list(pairs), num_classes, list(ks)
        self.device = torch.device("cpu")
        self.losses: dict[str, torchmetrics.MeanMetric] = {}
        self.totals: dict[str, torchmetrics.SumMetric] = {}
        self.zeroshot: dict[str, torchmetrics.Metric] = {}
        self.embeddings: dict[str, list[torch.Tensor]] = {}
        self.captions = CaptionScores()

    def to(self, device: torch.device) -> "PretrainMetrics":
        self.device = device
        for m in [*self.losses.values(), *self.totals.values(), *self.zeroshot.values()]:
            m.to(device)
        return self

    def update(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        rows = len(next(iter(batch.values()))) if batch else 1
        for key, value in out.items():
            if key.endswith("_loss"):  # batch means, weighted by batch size like the trainer's eval loss
                if key not in self.losses:
                    self.losses[key] = torchmetrics.MeanMetric().to(self.device)
                self.losses[key].update(value.detach().float(), rows)
        for key, value in out.get("totals", {}).items():
            if key not in self.totals:
                self.totals[key] = torchmetrics.SumMetric().to(self.device)
            self.totals[key].update(value.detach().float())
        self.captions.update(out.get("texts", {}))
        for m, emb in out.get("embeddings", {}).items():
            self.embeddings.setdefault(m, []).append(emb.detach().float())
        if LABELS in batch and self.num_classes:
            from torchmetrics.classification import MulticlassAccuracy

            for m, logits in out.get("zeroshot_logits", {}).items():
                if m not in self.zeroshot:
                    self.zeroshot[m] = MulticlassAccuracy(self.num_classes, average="micro").to(self.device)
                self.zeroshot[m].update(logits.float(), batch[LABELS])

    def compute(self) -> dict[str, float]:
        results = {k: float(v.compute()) for k, v in sorted(self.losses.items())}
        results.update(token_perplexities({k: float(v.compute()) for k, v in self.totals.items()}))
        results.update(self.captions.compute())
        emb = {m: _gather_rows(torch.cat(v)) for m, v in sorted(self.embeddings.items())}
        r1 = []
        for a, b in self.pairs:
            if a in emb and b in emb:
                sim = emb[a] @ emb[b].T  # (N, N)
                for q, c, s in ((a, b, sim), (b, a, sim.T)):
                    for k, v in recall_at_k(s, self.ks).items():
                        results[f"{q}_to_{c}_r{k}"] = v
                    r1.append(results[f"{q}_to_{c}_r1"])
        if r1:
            results["mean_r1"] = sum(r1) / len(r1)
        zs = {f"zeroshot_{m}_accuracy": float(acc.compute()) for m, acc in sorted(self.zeroshot.items())}
        if zs:
            results.update(zs, zeroshot_accuracy=sum(zs.values()) / len(zs))
        return results
