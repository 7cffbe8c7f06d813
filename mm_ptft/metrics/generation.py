"""Metrics of generated text, streamed batch by batch: per-sample scores are summed as they come (torchmetrics sums,
synced across ranks), so no prediction or logit outlives its batch.

``perplexity``: exp of the mean next-token NLL over the response tokens of the whole eval set (token-weighted, as
``exp(loss)`` of one big batch). ``exact_match``: the generated text equals the reference after stripping and
collapsing whitespace. ``rougeL``: mean ROUGE-L F-measure of ``rouge-score`` (Google's reference package, stemming off).
``bleu`` (``GenerationMetrics(bleu=True)``): sacrebleu's corpus BLEU (its default 13a tokenisation, one reference),
from the n-gram counts each batch adds: the sums of sacrebleu's own per-sentence statistics, so the streamed score
is ``sacrebleu.corpus_bleu`` of the whole eval set."""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from mm_ptft.types import REFERENCE

GENERATED = "generated"  # eval output: list[str], one per sample
BLEU_STATS = 10  # sacrebleu's per-sentence BLEU statistics: lengths of hypothesis and reference, 4 matches, 4 totals


def normalize(text: str) -> str:
    return " ".join(str(text).split())


class GenerationMetrics:
    """``perplexity`` (from ``out["nll_sum"]``/``out["tokens"]``), ``exact_match`` and ``rougeL`` of ``out["generated"]``
    against ``batch["reference"]``."""

    def __init__(self, bleu: bool = False) -> None:
        from rouge_score import rouge_scorer
        from torchmetrics import MetricCollection  # here, not at module import (see metrics.classification)
        from torchmetrics.aggregation import SumMetric

        self.rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        names = ["nll", "tokens", "exact", "rouge", "samples"]
        self.bleu = None
        if bleu:
            from sacrebleu.metrics import BLEU

            self.bleu = BLEU()
            names += [f"bleu_{i}" for i in range(BLEU_STATS)]
        self.sums = MetricCollection({n: SumMetric() for n in names})

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
        if self.bleu is not None:  # (sys_len, ref_len, matches 1-4, totals 1-4) per sentence, summed
            stats = self.bleu._extract_corpus_statistics(preds, [refs])
            for i in range(BLEU_STATS):
                self.sums[f"bleu_{i}"].update(float(sum(st[i] for st in stats)))

    def compute(self) -> dict[str, float]:
        s = {k: float(v) for k, v in self.sums.compute().items()}
        out = {}
        if s.get("tokens", 0) > 0:
            out["perplexity"] = math.exp(min(s["nll"] / s["tokens"], 50.0))
            out["response_nll"] = s["nll"] / s["tokens"]
        if s.get("samples", 0) > 0:
            out["exact_match"] = s["exact"] / s["samples"]
            out["rougeL"] = s["rouge"] / s["samples"]
        if self.bleu is not None and s.get("samples", 0) > 0:
            out["bleu"] = float(self.bleu._compute_score_from_stats([int(round(s[f"bleu_{i}"]))
                                                                      for i in range(BLEU_STATS)]).score)
        return out


__all__ = ["GENERATED", "GenerationMetrics", "normalize"]
