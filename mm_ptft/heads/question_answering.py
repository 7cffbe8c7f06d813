"""Extractive question answering: a text encoder's tokens through one linear layer to a start and an end logit per
token (what transformers' ``*ForQuestionAnswering`` computes), trained with the mean of the start and end
cross-entropies; evaluation and ``predict`` choose the best answer span across each example's windows and map it
back to characters of the context (``best_spans``, as ``run_qa.py``'s ``postprocess_qa_predictions``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mm_ptft.contracts import Task
from mm_ptft.data.qa import CONTEXT, END, EXAMPLE, NO_OFFSET, OFFSETS, START
from mm_ptft.encoders.base import Encoder
from mm_ptft.metrics.question_answering import ANSWER_SPANS, SquadMetrics

PARITY_TOL = 1e-4  # max |Δ logit| between the exported transformers model and the run's task


@dataclass
class SpanSearch:
    """How an answer is read off the logits: the ``n_best`` start and end tokens of each window paired, spans
    longer than ``max_answer_length`` tokens or outside the context dropped, the best score (start + end logit)
    across windows kept. ``null_answers`` (SQuAD 2.0): the null answer (score: the CLS token's start + end logit,
    its smallest across windows) wins when it beats the best span by more than ``null_threshold``."""

    n_best: int = 20
    max_answer_length: int = 30
    null_answers: bool = False
    null_threshold: float = 0.0


def best_spans(start: torch.Tensor, end: torch.Tensor, offsets: torch.Tensor, example: torch.Tensor,
               contexts: Sequence[str], search: SpanSearch) -> list[dict[str, Any]]:
    """One answer per context: ``{"answer", "start", "end", "score"}`` (character offsets into the context, end
    exclusive; None and "" for the null answer). ``start``/``end``: (W, L) logits of the windows, ``offsets``
    (W, L, 2) their character spans (-1 off the context), ``example`` (W,) the context each window belongs to."""
    start, end = start.float(), end.float()
    k = min(search.n_best, start.shape[1])
    s_val, s_idx = start.topk(k, -1)  # (W, k)
    e_val, e_idx = end.topk(k, -1)  # (W, k)
    s_off = offsets.gather(1, s_idx[..., None].expand(-1, -1, 2))  # (W, k, 2)
    e_off = offsets.gather(1, e_idx[..., None].expand(-1, -1, 2))  # (W, k, 2)
    length = e_idx[:, None, :] - s_idx[:, :, None] + 1  # (W, k, k)
    valid = (s_off[..., 0] != NO_OFFSET)[:, :, None] & (e_off[..., 0] != NO_OFFSET)[:, None, :] \
        & (length >= 1) & (length <= search.max_answer_length)  # (W, k, k)
    score = (s_val[:, :, None] + e_val[:, None, :]).masked_fill(~valid, float("-inf"))  # (W, k, k)
    best, flat = score.flatten(1).max(-1)  # (W,)
    null = start[:, 0] + end[:, 0]  # (W,): the CLS token (index 0, as run_qa.py)
    out = []
    for i, context in enumerate(contexts):
        rows = (example == i).nonzero().flatten()
        w = int(rows[best[rows].argmax()])
        score_i, null_i = float(best[w]), float(null[rows].min())
        if score_i == float("-inf") or (search.null_answers and null_i - score_i > search.null_threshold):
            out.append({"answer": "", "start": None, "end": None, "score": null_i if search.null_answers else None})
            continue
        a, b = int(s_off[w, int(flat[w]) // k, 0]), int(e_off[w, int(flat[w]) % k, 1])
        out.append({"answer": context[a:b], "start": a, "end": b, "score": score_i})
    return out


class QuestionAnsweringTask(Task):
    """Encoder tokens → ``qa_outputs`` (D → 2) → start/end logits (W, L); ``loss`` = (``start_loss`` +
    ``end_loss``) / 2 as transformers' ``*ForQuestionAnswering``; in eval also ``answer_spans`` (``best_spans``)."""

    main_metric = "f1"

    def __init__(self, encoder: Encoder, search: Optional[SpanSearch] = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.qa_outputs = nn.Linear(encoder.out_dim, 2)
        self.search = search or SpanSearch()

    def logits(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(start, end) logits, each (W, L)."""
        start, end = self.qa_outputs(self.encoder(batch).tokens).unbind(-1)  # (W, L, 2) split
        return start, end

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        start, end = self.logits(batch)
        out: dict[str, Any] = {"start_logits": start, "end_logits": end}
        if START in batch:
            ignored = start.shape[1]  # transformers: positions outside the window are clamped to L and ignored
            out["start_loss"] = F.cross_entropy(start.float(), batch[START].clamp(0, ignored), ignore_index=ignored)
            out["end_loss"] = F.cross_entropy(end.float(), batch[END].clamp(0, ignored), ignore_index=ignored)
            out["loss"] = (out["start_loss"] + out["end_loss"]) / 2
        if not self.training and OFFSETS in batch:
            out[ANSWER_SPANS] = best_spans(start.detach(), end.detach(), batch[OFFSETS], batch[EXAMPLE],
                                           batch[CONTEXT], self.search)
        return out

    def build_metrics(self) -> SquadMetrics:
        return SquadMetrics()

    def export_hf(self) -> nn.Module:
        """The encoder's transformers ``*ForQuestionAnswering`` class with ``qa_outputs`` as its head."""
        return self.encoder.hf_with_head("question_answering", self.qa_outputs, {"num_labels": 2})

    @torch.no_grad()
    def hf_parity(self, model: nn.Module, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The exported model's start/end logits against the run's on the batch's windows."""
        ours = self.logits(batch)
        got = model(**self.encoder.hf_model_inputs(batch))
        theirs = (got.start_logits, got.end_logits)
        diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(ours, theirs))
        same = all(bool((a.argmax(-1) == b.argmax(-1)).all()) for a, b in zip(ours, theirs))
        ok = diff <= PARITY_TOL and same
        return {"samples": int(ours[0].shape[0]), "max_abs_diff_logit": diff, "same_argmax": same, "ok": ok,
                "summary": f"gives the run's start/end logits within {diff:.1e} (max |Δlogit|, same argmax: {same}) on "
                           f"{int(ours[0].shape[0])} evaluation windows",
                "mismatch": f"gives other start/end logits than the run (max |Δlogit| {diff:.2e}, same argmax: {same}) "
                            f"on {int(ours[0].shape[0])} evaluation windows"}


__all__ = ["QuestionAnsweringTask", "SpanSearch", "best_spans"]
