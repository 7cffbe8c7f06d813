"""Caption metrics through ``pycocoevalcap`` (the COCO caption evaluation code): corpus BLEU-4 and CIDEr-D.

Only BLEU and CIDEr are used: they are pure Python. COCO's own tokenizer (``PTBTokenizer``) and its METEOR and SPICE
run Java, so captions are tokenised here the way PTBTokenizer leaves COCO captions for scoring: lower-cased, split
into words, punctuation dropped. CIDEr's document frequencies come from the references of the whole eval split, so
the strings of the split are kept (text only — never logits) and scored at the end; under torchrun every rank's are
gathered first.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch.distributed as dist

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def coco_tokens(text: str) -> str:
    """Lower-cased words joined by single spaces, punctuation dropped (PTBTokenizer's output for scoring)."""
    return " ".join(_WORD.findall(str(text).lower()))


def caption_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """``bleu4`` (corpus BLEU-4, closest reference length, as COCO reports it) and ``cider`` (CIDEr-D) of one
    prediction per sample against that sample's references (one or more)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    if not predictions:
        return {}
    res = {i: [coco_tokens(p)] for i, p in enumerate(predictions)}
    gts = {i: [coco_tokens(r) for r in refs] for i, refs in enumerate(references)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {"bleu4": float(bleu[3]), "cider": float(cider)}


def gather_strings(values: list[str]) -> list[str]:
    """Every rank's strings in rank order (the list itself outside torchrun)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    parts: list[list[str]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(parts, values)
    return [v for p in parts for v in p]


class CaptionScores:
    """Collects ``<name>_generated`` / ``<name>_references`` strings batch by batch; ``compute`` gives
    ``<name>_bleu4`` and ``<name>_cider`` for each name."""

    def __init__(self) -> None:
        self.texts: dict[str, list[str]] = {}

    def update(self, texts: dict[str, list[str]]) -> None:
        for key, values in texts.items():
            self.texts.setdefault(key, []).extend(str(v) for v in values)

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for key in sorted(self.texts):
            if not key.endswith("_generated"):
                continue
            name = key[: -len("_generated")]
            preds, refs = gather_strings(self.texts[key]), gather_strings(self.texts.get(f"{name}_references", []))
            out.update({f"{name}_{k}": v for k, v in caption_scores(preds, [[r] for r in refs]).items()})
        return out


__all__ = ["CaptionScores", "caption_scores", "coco_tokens", "gather_strings"]
