"""Extractive QA metrics: exact match and F1 of the predicted answer texts against the gold ones, with the official
SQuAD normalisation (lower case, punctuation and the articles a/an/the removed, whitespace collapsed; the best score
over an example's gold answers; a null answer scores 1 against an unanswerable question's ``""`` and 0 otherwise,
as SQuAD 2.0's script) through torchmetrics' ``SQuAD`` metric, whose per-batch sums are synced across ranks.
Reported as fractions (0-1), like every mm_ptft metric; SQuAD leaderboards print them ×100."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from mm_ptft.types import REFERENCE

ANSWER_SPANS = "answer_spans"  # eval output: one dict per example, {"answer": text, "start", "end", "score"}


class SquadMetrics:
    """``exact_match`` and ``f1`` of ``out["answer_spans"]`` against ``batch["reference"]`` (each example's gold
    texts), and ``null_answer_rate``: the share of examples answered with the null (empty) answer."""

    def __init__(self) -> None:
        from torchmetrics.aggregation import SumMetric  # here, not at module import (see metrics.classification)
        from torchmetrics.text import SQuAD

        self.squad, self.nulls, self.count = SQuAD(), SumMetric(), SumMetric()

    def to(self, device: torch.device) -> "SquadMetrics":
        self.squad, self.nulls, self.count = self.squad.to(device), self.nulls.to(device), self.count.to(device)
        return self

    def update(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        spans, gold = list(out[ANSWER_SPANS]), list(batch[REFERENCE])
        if len(spans) != len(gold):
            raise ValueError(f"{len(spans)} predicted answers for {len(gold)} examples")
        self.squad.update([{"prediction_text": s["answer"], "id": str(i)} for i, s in enumerate(spans)],
                          [{"answers": {"text": list(g), "answer_start": [0] * len(g)}, "id": str(i)}
                           for i, g in enumerate(gold)])
        self.nulls.update(float(sum(not s["answer"] for s in spans)))
        self.count.update(float(len(spans)))

    def compute(self) -> dict[str, float]:
        got = {k: float(v) for k, v in self.squad.compute().items()}
        n = float(self.count.compute())
        return {"exact_match": got["exact_match"] / 100.0, "f1": got["f1"] / 100.0,
                "null_answer_rate": float(self.nulls.compute()) / n if n else 0.0}
