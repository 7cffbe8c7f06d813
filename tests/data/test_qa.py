"""QA windows and rows: the answer's token labels decode back to its characters in every window holding it, the
others point at CLS; SQuAD JSON (v1.1, v2.0) reads into rows; bad rows are errors naming the row, or counted skips."""
import json

import pytest

from mm_ptft.data.qa import END, OFFSETS, START, WINDOWS, load_qa_table, qa_samples
from mm_ptft.data.tables import DataError
from mm_ptft.encoders.text import train_wordpiece
from mm_ptft.types import TEXT

COLS = {"context": "context", "question": "question", "answers": "answers", "answer_start": "answer_start",
        "answer_text": "answer_text", "id": "id"}
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()
CONTEXT = " ".join(WORDS) + "."  # 19 words + "."


@pytest.fixture(scope="module")
def tok():
    return train_wordpiece([CONTEXT, "which word comes after rho"], 300)


def row(word, **kw):
    return {"context": CONTEXT, "question": "which word comes after rho", "answer_start": CONTEXT.index(word),
            "answer_text": word, **kw}


def test_windows_label_the_answer_tokens(tok):
    counters = {}
    samples = qa_samples(tok, [row("sigma"), row("alpha")], COLS, (16, 4), "f.csv", False, counters, True, False)
    assert counters["qa_windows"] == len(samples) > 2  # long contexts split
    hits = {}
    for s in samples:
        ids = s[TEXT]
        if s[START] == 0:
            assert s[END] == 0  # the CLS token: this window does not hold the answer
            continue
        hits.setdefault(tok.decode(ids[s[START]: s[END] + 1]), 0)
        hits[tok.decode(ids[s[START]: s[END] + 1])] += 1
    assert set(hits) == {"sigma", "alpha"}  # each answer found, in each window that holds it whole


def test_eval_sample_keeps_all_windows_and_offsets(tok):
    (s,) = qa_samples(tok, [row("sigma")], COLS, (16, 4), "f.csv", False, {}, False, False)
    assert len(s[WINDOWS]) > 1 and len(s[OFFSETS]) == len(s[WINDOWS])
    for w, (a, b) in zip(s[WINDOWS], zip(s[START], s[END])):
        if a:
            offs = s[OFFSETS][s[WINDOWS].index(w)]
            assert CONTEXT[offs[a][0]: offs[b][1]] == "sigma"


@pytest.mark.parametrize("bad,message", [
    (dict(answer_start=3), "is not at answer_start=3"),
    (dict(context=" "), "context is empty"),
    (dict(question=None), "question is empty"),
    (dict(answer_text="", answer_start=-1), "version_2_with_negative"),
])
def test_bad_rows_name_the_row(tok, bad, message):
    rows = [row("beta"), row("beta", **bad)]
    with pytest.raises(DataError, match=rf"f.csv: row 1: .*{message}"):
        qa_samples(tok, rows, COLS, (64, 8), "f.csv", False, {}, True, False)
    counters = {}
    kept = qa_samples(tok, rows, COLS, (64, 8), "f.csv", True, counters, True, False)
    assert counters["skipped_bad_samples"] == 1 and len(kept) == 1


def test_a_question_too_long_for_the_window(tok):
    long_q = row("beta", question=" ".join(WORDS))
    with pytest.raises(DataError, match="row 0: the question is .* tokens"):
        qa_samples(tok, [long_q], COLS, (16, 4), "f.csv", False, {}, True, False)


def test_squad2_unanswerable_is_labelled_cls(tok):
    (s,) = qa_samples(tok, [row("beta", answer_text="", answer_start=-1)], COLS, (64, 8), "f", False, {}, True, True)
    assert (s[START], s[END]) == (0, 0)


def test_squad_json(tmp_path):
    doc = {"version": "2.0", "data": [{"title": "t", "paragraphs": [{"context": "The owl is blue.", "qas": [
        {"id": "q1", "question": "What colour?", "answers": [{"text": "blue", "answer_start": 11}]},
        {"id": "q2", "question": "What size?", "answers": [], "is_impossible": True,
         "plausible_answers": [{"text": "owl", "answer_start": 4}]}]}]}]}
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(doc))
    ds = load_qa_table(str(path))
    assert ds["id"] == ["q1", "q2"] and ds["answers"][0] == {"text": ["blue"], "answer_start": [11]}
    assert ds["answers"][1] == {"text": [], "answer_start": []}  # plausible answers are not answers
    path.write_text(json.dumps({"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "x", "question": "q",
                                                                                   "answers": [{"text": "c"}]}]}]}]}))
    with pytest.raises(DataError, match=r"qas\[0\] \(id 'x'\): every answer needs"):
        load_qa_table(str(path))
