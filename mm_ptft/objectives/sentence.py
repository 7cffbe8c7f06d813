"""Sentence-pair objectives: next-sentence prediction (BERT) and sentence-order prediction (ALBERT).

Each text of the batch gives two segments: its real, non-special tokens split after the
sentence-final punctuation ('.', '!', '?') nearest the middle, or at the middle when it has none.
The pairs are re-encoded as ``[CLS] A [SEP] B [SEP]`` with segment ids 0/1 (BERT's token_type_ids,
read by encoders that have segment embeddings), the longer segment truncated first to the encoder's
``max_length``; a 2-way classifier reads the pooled [CLS] output — the encoder's own pooler where it
pools with one (``model.text.pooling=pooler``: BERT/ALBERT's dense + tanh), else a pooler of the
objective's own. Labels follow transformers: NSP 0 = B follows A, 1 = B is another row's segment
(drawn with probability 1/2); SOP 0 = in order, 1 = swapped (probability 1/2). Rows too short to
split are left out and counted (``<name>_rows_skipped`` in eval). Training draws from the global RNG;
evaluation uses a fixed-seed generator, like the masked objectives.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mm_ptft.encoders.base import Encoder
from mm_ptft.objectives import OBJECTIVES, EncodedBatch, RandomObjective, require_encoders
from mm_ptft.objectives.hf_heads import pretrained_head_weights
from mm_ptft.types import TEXT, TEXT_MASK, TEXT_SEGMENTS

Segments = tuple[list[int], list[int]]


def split_segments(tokens: Sequence[int], boundary_ids: set[int]) -> Segments:
    """Two non-empty segments of ``tokens`` (at least 2): split after the boundary token nearest the middle
    (earlier on a tie), else at the middle."""
    n = len(tokens)
    cuts = [i + 1 for i, t in enumerate(tokens[:-1]) if t in boundary_ids]
    cut = min(cuts, key=lambda c: (abs(c - n / 2), c)) if cuts else n // 2
    return list(tokens[:cut]), list(tokens[cut:])


def truncate_pair(a: list[int], b: list[int], budget: int) -> Segments:
    """BERT's ``truncate_seq_pair``: drop the last token of the longer segment until both fit in ``budget``."""
    a, b = list(a), list(b)
    while len(a) + len(b) > budget:
        (a if len(a) > len(b) else b).pop()
    return a, b


def encode_pairs(pairs: Sequence[Segments], cls_id: int, sep_id: int, pad_id: int, max_length: int,
                 device: torch.device) -> dict[str, torch.Tensor]:
    """``[CLS] A [SEP] B [SEP]`` per pair, right-padded: text, text_mask and text_segments, each (P, L)."""
    rows, segs = [], []
    for a, b in pairs:
        a, b = truncate_pair(a, b, max_length - 3)
        rows.append([cls_id, *a, sep_id, *b, sep_id])
        segs.append([0] * (len(a) + 2) + [1] * (len(b) + 1))
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (P, L)
    seg, att = torch.zeros_like(ids), torch.zeros_like(ids)  # (P, L)
    for i, (r, s) in enumerate(zip(rows, segs)):
        ids[i, : len(r)], seg[i, : len(s)], att[i, : len(r)] = torch.tensor(r), torch.tensor(s), 1
    return {TEXT: ids.to(device), TEXT_MASK: att.to(device), TEXT_SEGMENTS: seg.to(device)}


def nsp_pairs(halves: Sequence[Segments], generator: Optional[torch.Generator]) -> tuple[list[Segments], torch.Tensor]:
    """BERT: with probability 1/2 the second segment is replaced by another row's (label 1), else kept (0)."""
    n = len(halves)
    random = (torch.rand(n, generator=generator) < 0.5) & torch.tensor(n > 1)  # (n,)
    other = (torch.arange(n) + torch.randint(1, max(n, 2), (n,), generator=generator)) % n  # never the row itself
    pairs = [(a, halves[int(j)][1] if r else b) for (a, b), r, j in zip(halves, random.tolist(), other)]
    return pairs, random.long()


def sop_pairs(halves: Sequence[Segments], generator: Optional[torch.Generator]) -> tuple[list[Segments], torch.Tensor]:
    """ALBERT: with probability 1/2 the two segments are swapped (label 1), else in order (0)."""
    swap = torch.rand(len(halves), generator=generator) < 0.5  # (n,)
    return [(b, a) if s else (a, b) for (a, b), s in zip(halves, swap.tolist())], swap.long()


class SentencePairObjective(RandomObjective):
    """NSP or SOP on the text encoder: returns ``<name>_loss`` (cross-entropy of the 2-way classifier)."""

    modalities = ("text",)
    make_pairs = staticmethod(nsp_pairs)

    def __init__(self, text_encoder: Encoder, name: str, boundaries: Sequence[str] = (".", "!", "?")) -> None:
        super().__init__()
        tok, dim = text_encoder.tokenizer, text_encoder.out_dim  # type: ignore[attr-defined]
        if tok.cls_token_id is None or tok.sep_token_id is None:
            raise ValueError(f"objective {name}: the text encoder's tokenizer has no [CLS]/[SEP] token to build "
                             f"sentence pairs with; use a BERT-style tokenizer")
        self.name, self.max_length = name, int(text_encoder.max_length)  # type: ignore[attr-defined]
        self.cls_id, self.sep_id, self.pad_id = tok.cls_token_id, tok.sep_token_id, tok.pad_token_id or 0
        self.special_ids = set(tok.all_special_ids)
        ids = tok.convert_tokens_to_ids(list(boundaries))
        self.boundary_ids = {i for i in ids if i is not None and i != tok.unk_token_id}
        own = getattr(text_encoder, "pooling", "") != "pooler"
        self.pooler = nn.Sequential(nn.Linear(dim, dim), nn.Tanh()) if own else None  # over [CLS]
        self.classifier = nn.Linear(dim, 2)

    def halves(self, batch: Mapping[str, Any]) -> tuple[list[Segments], int]:
        """Two segments per row that has at least 2 real, non-special tokens; and how many rows had fewer."""
        out, skipped = [], 0
        for row, keep in zip(batch[TEXT].tolist(), batch[TEXT_MASK].bool().tolist()):
            tokens = [t for t, k in zip(row, keep) if k and t not in self.special_ids]
            if len(tokens) < 2:
                skipped += 1
            else:
                out.append(split_segments(tokens, self.boundary_ids))
        return out, skipped

    def pair_batch(self, batch: Mapping[str, Any]) -> tuple[Optional[dict[str, torch.Tensor]], torch.Tensor, int]:
        """(pair inputs or None, labels (P,), rows skipped) for this batch."""
        device = batch[TEXT].device
        halves, skipped = self.halves(batch)
        if not halves:
            return None, torch.zeros(0, dtype=torch.long, device=device), skipped
        pairs, labels = self.make_pairs(halves, self.generator(torch.device("cpu")))
        enc = encode_pairs(pairs, self.cls_id, self.sep_id, self.pad_id, self.max_length, device)
        return enc, labels.to(device), skipped

    def logits(self, encoder: Encoder, pairs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(P, 2) classifier scores of the encoded pairs."""
        out = encoder(pairs)
        pooled = out.pooled if self.pooler is None else self.pooler(out.tokens[:, 0])  # (P, D)
        return self.classifier(pooled)  # (P, 2)

    def forward(self, feats: EncodedBatch, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        pairs, labels, skipped = self.pair_batch(batch)
        if pairs is None:
            loss = sum(p.sum() for p in self.classifier.parameters()) * 0.0  # nothing to classify
        else:
            loss = F.cross_entropy(self.logits(feats.encoders["text"], pairs).float(), labels)
        out = {f"{self.name}_loss": loss}
        if not self.training:
            out[f"{self.name}_rows_skipped"] = torch.tensor(float(skipped), device=loss.device)
        return out

    def load_pretrained_head(self, encoder: Encoder, prefix: str, where: str) -> None:
        """The 2-way classifier from ``<prefix>weight/bias`` of the checkpoint the encoder was loaded from."""
        found = pretrained_head_weights(encoder, prefix, where)
        if set(found) != {"weight", "bias"}:
            raise ValueError(f"{where}.init_from_pretrained_head: no {prefix}weight/bias in the checkpoint of "
                             f"model.text.name_or_path (found {sorted(found) or 'none'})")
        self.classifier.load_state_dict(found)


class SentenceOrderObjective(SentencePairObjective):
    make_pairs = staticmethod(sop_pairs)


def _build(cls: type, encoders: Mapping[str, Encoder], name: str, boundaries: Sequence[str], prefix: str,
           init_from_pretrained_head: bool, where: str) -> SentencePairObjective:
    require_encoders(encoders, ["text"], where)
    obj = cls(encoders["text"], name, boundaries)
    if init_from_pretrained_head:
        obj.load_pretrained_head(encoders["text"], prefix, where)
    return obj


@OBJECTIVES.register()
def nsp(encoders: Mapping[str, Encoder], boundaries: Sequence[str] = (".", "!", "?"),
        init_from_pretrained_head: bool = False, where: str = "model.objectives.nsp") -> SentencePairObjective:
    """BERT's next-sentence prediction; ``init_from_pretrained_head`` loads ``cls.seq_relationship``."""
    return _build(SentencePairObjective, encoders, "nsp", boundaries, "cls.seq_relationship.",
                  init_from_pretrained_head, where)


@OBJECTIVES.register()
def sop(encoders: Mapping[str, Encoder], boundaries: Sequence[str] = (".", "!", "?"),
        init_from_pretrained_head: bool = False, where: str = "model.objectives.sop") -> SentencePairObjective:
    """ALBERT's sentence-order prediction; ``init_from_pretrained_head`` loads ``sop_classifier.classifier``."""
    return _build(SentenceOrderObjective, encoders, "sop", boundaries, "sop_classifier.classifier.",
                  init_from_pretrained_head, where)
