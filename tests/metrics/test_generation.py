"""mm_ptft/metrics/generation.py streamed batch by batch against independent references: exact match and ROUGE-L
counted by hand (longest common subsequence), ROUGE-L also against rouge-score over the whole set at once,
perplexity as exp of the hand-summed token NLL."""
from __future__ import annotations

import math

import pytest
import torch

from mm_ptft.metrics.generation import GENERATED, GenerationMetrics, normalize


def stream(pairs: list[tuple[str, str]], batch: int = 2, nll: list[tuple[float, int]] = ()) -> dict[str, float]:
    m = GenerationMetrics()
    for i in range(0, len(pairs), batch):
        part = pairs[i:i + batch]
        out = {GENERATED: [p for p, _ in part]}
        if nll:
            s, n = nll[i // batch]
            out.update(nll_sum=torch.tensor(s), tokens=torch.tensor(n))
        m.update(out, {"reference": [r for _, r in part]})
    return m.compute()


def test_exact_match_and_rouge_l_by_hand():
    pairs = [("a b c d", "a c d"),  # LCS 3: P 3/4, R 3/3 -> F 6/7; not exact
             (" x  y ", "x y"),  # exact after whitespace normalisation: F 1
             ("p q", "r s"),  # nothing in common: F 0
             ("the cat sat", "sat the cat")]  # LCS "the cat" 2: P = R = 2/3 -> F 2/3
    got = stream(pairs)
    assert got["exact_match"] == pytest.approx(1 / 4)
    assert got["rougeL"] == pytest.approx((6 / 7 + 1 + 0 + 2 / 3) / 4, abs=1e-6)  # summed in float32
    assert "perplexity" not in got and normalize(" x \n y") == "x y"


def test_rouge_l_streamed_equals_rouge_score_over_the_whole_set():
    from rouge_score import rouge_scorer

    pairs = [("the quick brown fox", "a quick brown dog"), ("jumps over", "jumps over the lazy dog"),
             ("one two three", "three two one"), ("same", "same"), ("", "not empty")]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    want = sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in pairs) / len(pairs)
    assert stream(pairs, batch=2)["rougeL"] == pytest.approx(want, abs=1e-6)
    assert stream(pairs, batch=5)["rougeL"] == pytest.approx(want, abs=1e-6)


def test_perplexity_is_token_weighted_over_the_eval_set():
    pairs = [("a", "a"), ("b", "c"), ("d", "d")]
    nll = [(6.0, 4), (1.0, 1)]  # batches of 2 then 1: token-weighted mean 7/5, not the mean of batch means
    got = stream(pairs, batch=2, nll=nll)
    assert got["response_nll"] == pytest.approx(7 / 5)
    assert got["perplexity"] == pytest.approx(math.exp(7 / 5))
    assert got["exact_match"] == pytest.approx(2 / 3)


def test_loss_only_updates_give_perplexity_without_text_metrics():
    m = GenerationMetrics()
    m.update({"nll_sum": torch.tensor(2.0), "tokens": torch.tensor(2)}, {})
    assert m.compute() == pytest.approx({"perplexity": math.e, "response_nll": 1.0})


def test_streamed_bleu_is_sacrebleus_corpus_bleu_of_the_whole_set():
    import sacrebleu

    pairs = [("the cat sat on the mat", "the cat sat on a mat"), ("a b", "a b c"), ("hello there world", "hello world"),
             ("x", "y z"), ("one two three four five", "one two three four five")]
    m = GenerationMetrics(bleu=True)
    for i in range(0, len(pairs), 2):
        part = pairs[i:i + 2]
        m.update({GENERATED: [p for p, _ in part]}, {"reference": [r for _, r in part]})
    want = sacrebleu.corpus_bleu([p for p, _ in pairs], [[r for _, r in pairs]]).score
    assert m.compute()["bleu"] == pytest.approx(want, abs=1e-9)
    assert 0 < want < 100  # neither degenerate end
    assert "bleu" not in stream(pairs)  # only where asked for
