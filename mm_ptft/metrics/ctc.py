"""WER and CER of CTC transcriptions (or of generated ones: ``TranscriptMetrics``) against the batch's reference
``transcripts``."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

from mm_ptft.types import TRANSCRIPTS

#: (log_probs (B, N, V), frame_lengths (B,)) → one string per row
Transcribe = Callable[[torch.Tensor, torch.Tensor], list[str]]


class CTCMetrics:
    """WER and CER (torchmetrics, synced across ranks) of decoded hypotheses against ``transcripts``."""

    def __init__(self, transcriber: Transcribe) -> None:
        from torchmetrics.text import CharErrorRate, WordErrorRate

        self.transcriber = transcriber
        self.wer, self.cer = WordErrorRate(), CharErrorRate()

    def to(self, device: torch.device) -> "CTCMetrics":
        self.wer, self.cer = self.wer.to(device), self.cer.to(device)
        return self

    def update(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        self.add(self.transcriber(out["log_probs"], out["frame_lengths"]), list(batch[TRANSCRIPTS]))

    def add(self, hyps: list[str], refs: list[str]) -> None:
        self.wer.update(hyps, refs)
        self.cer.update(hyps, refs)

    def compute(self) -> dict[str, float]:
        return {"wer": float(self.wer.compute()), "cer": float(self.cer.compute())}


class TranscriptMetrics(CTCMetrics):
    """``CTCMetrics`` of transcripts a task has already written (``out["generated"]``, e.g. an encoder-decoder's
    ``generate``, normalised as the references were)."""

    def __init__(self) -> None:
        super().__init__(lambda *_: [])

    def update(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        self.add(list(out["generated"]), list(batch[TRANSCRIPTS]))
