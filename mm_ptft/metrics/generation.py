"""Metrics of generated text, streamed batch by batch: per-sample scores are summed as they come (torchmetrics sums,
synced across ranks), so no prediction or logit outlives its batch.

``perplexity``: exp of the mean next-token NLL over the response tokens of the whole eval set (token-weighted, as
``exp(loss)`` of one big batch). ``exact_match``: the generated text equals the reference after stripping and
collapsing whitespace. ``rougeL``: mean ROUGE-L F-measure of ``rouge-score`` (Google's reference package, stemming off)."""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from mm_ptft.types import REFERENCE

GENERATED = "generated"  # eval output: list[str], one per sample


def normalize(text: str) -> str:
    return " ".join(str(text).split())


class GenerationMetrics:
    """``perplexity`` (from ``out["nll_sum"]``/``out["tokens"]``), ``exact_match`` and ``rougeL`` of ``out["generated"]``
    against ``batch["reference"]``."""

    def __init__(self) -> None:
        from rouge_score import rouge_scorer
        from torchmetrics import MetricCollection  # here, not at module import (see metrics.classification)
        from torchmetrics.aggregation import SumMetric

        self.rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        self.sums = MetricCollection({n: SumMetric() for n in ("nll", "tokens", "exact", "rouge", "samples")})

    def to(self, device: torch.device) -> "GenerationMetrics":
        self.sums = self.sums.to(device)
        return self

    def update(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        if "nll_sum" in out:
            self.sums["nll"].update(out["nll_sum"].detach().double())
            self.sums["tokens"].update(out["tokens"].detach().double())
        if GENERATED not in out:
            return
        preds, refs = list(out[GENERATED]), list(batch[REFERENCE])
        exact = sum(normalize(p) == normalize(r) for p, r in zip(preds, refs))
        rouge = sum(self.rouge.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs))
        self.sums["exact"].update(float(exact))
        self.sums["rouge"].update(float(rouge))
        self.sums["samples"].update(float(len(preds)))

    def compute(self) -> dict[str, float]:
        s = {k: float(v) for k, v in self.sums.compute().items()}
        out = {}
        if s.get("tokens", 0) > 0:
            out["perplexity"] = math.exp(min(s["nll"] / s["tokens"], 50.0))
            out["response_nll"] = s["nll"] / s["tokens"]
        if s.get("samples", 0) > 0:
            out["exact_match"] = s["exact"] / s["samples"]
            out["rougeL"] = s["rouge"] / s["samples"]
        return out


__all__ = ["GENERATED", "GenerationMetrics", "normalize"]
