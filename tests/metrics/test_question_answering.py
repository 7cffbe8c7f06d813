"""SQuAD exact match / F1 (torchmetrics' SQuAD under mm_ptft's streaming metric) against scores worked out by hand
with the official normalisation (lower case, punctuation and a/an/the dropped, whitespace collapsed)."""
import pytest

from mm_ptft.metrics.question_answering import ANSWER_SPANS, SquadMetrics
from mm_ptft.types import REFERENCE

# (prediction, gold answers, EM, F1) — by hand:
CASES = [
    ("The Eiffel Tower!", ["eiffel tower"], 1.0, 1.0),  # both normalise to "eiffel tower"
    ("in Paris France", ["Paris"], 0.0, 0.5),  # 1 common of 3 predicted / 1 gold: P 1/3, R 1, F1 = 0.5
    ("blue", ["red", "a blue one"], 0.0, 2 / 3),  # best gold "blue one": P 1, R 1/2, F1 = 2/3
    ("", [""], 1.0, 1.0),  # SQuAD 2.0: the null answer to an unanswerable question
    ("x", [""], 0.0, 0.0),  # an answer to an unanswerable question
]


def test_squad_scores_match_hand_computation():
    m = SquadMetrics()
    for start in (0, 3):  # two batches: the sums stream across updates
        part = CASES[start: start + 3]
        m.update({ANSWER_SPANS: [{"answer": p} for p, *_ in part]}, {REFERENCE: [g for _, g, *_ in part]})
    got = m.compute()
    assert got["exact_match"] == pytest.approx(sum(c[2] for c in CASES) / 5)  # 0.4
    assert got["f1"] == pytest.approx(sum(c[3] for c in CASES) / 5)  # 0.6333
    assert got["null_answer_rate"] == pytest.approx(1 / 5)


def test_each_case_alone():
    for pred, gold, em, f1 in CASES:
        m = SquadMetrics()
        m.update({ANSWER_SPANS: [{"answer": pred}]}, {REFERENCE: [gold]})
        got = m.compute()
        assert (got["exact_match"], got["f1"]) == pytest.approx((em, f1)), (pred, gold)
