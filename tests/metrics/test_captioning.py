"""Caption metrics: pycocoevalcap's BLEU-4 against sacrebleu on the same tokens (equal-length hypotheses: the
brevity penalties agree), CIDEr's ordering and range, PTB-style tokens, and the per-name aggregation."""
from __future__ import annotations

import pytest

from mm_ptft.metrics.captioning import CaptionScores, caption_scores, coco_tokens

PREDS = ["a small red circle on grey", "a large blue square", "the green triangle is small", "a yellow cross here"]
REFS = ["a small red circle on grey", "a large blue circle", "the green triangle is large", "a yellow cross there"]


def test_coco_tokens_lowercase_and_drop_punctuation() -> None:
    assert coco_tokens("There is a Red circle , small.") == "there is a red circle small"


def test_bleu4_matches_sacrebleu() -> None:
    import sacrebleu

    ours = caption_scores(PREDS, [[r] for r in REFS])
    ref = sacrebleu.corpus_bleu([coco_tokens(p) for p in PREDS], [[coco_tokens(r) for r in REFS]],
                                tokenize="none", smooth_method="none", force=True).score / 100
    assert ours["bleu4"] == pytest.approx(ref, abs=1e-6)


def test_perfect_captions_score_highest() -> None:
    perfect = caption_scores(REFS, [[r] for r in REFS])
    partial = caption_scores(PREDS, [[r] for r in REFS])
    constant = caption_scores([REFS[0]] * 4, [[r] for r in REFS])
    assert perfect["bleu4"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["cider"] > partial["cider"] > constant["cider"] >= 0
    assert caption_scores(["", "a", "", ""], [[r] for r in REFS])["bleu4"] < 1e-6  # empty hypotheses do not crash


def test_caption_scores_per_name() -> None:
    scores = CaptionScores()
    scores.update({"caption_image_generated": PREDS[:2], "caption_image_references": REFS[:2]})
    scores.update({"caption_image_generated": PREDS[2:], "caption_image_references": REFS[2:]})
    out = scores.compute()
    assert set(out) == {"caption_image_bleu4", "caption_image_cider"}
    assert out["caption_image_bleu4"] == pytest.approx(caption_scores(PREDS, [[r] for r in REFS])["bleu4"])
