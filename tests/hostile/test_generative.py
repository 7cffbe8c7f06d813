"""Hostile rows for the generative recipes (issue 25, item 6), through each recipe's ``prepare`` on its tiny.yaml:
an empty response or target, a prompt or source over the context window (``data.truncate`` says cut and count, or
error), a response alone over it, a chat message with an unknown role, a QA answer that is not inside its context,
an unanswerable question without SQuAD 2.0, an empty question or source, and text that is not UTF-8 (JSONL, CSV,
SQuAD JSON, a streamed shard). Each case is **E** a ``DataError`` naming the file's row (0-based, header excluded;
line where the file cannot be parsed into rows) and, where it is a bad row, **S** with ``data.skip_bad_samples=true``
a counted skip (``skipped_bad_samples``), or **C** a counted cut (``truncated_*``) whose sample is checked."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from mm_ptft.data.tables import DataError
from mm_ptft.run import load_config
from mm_ptft.tasks import get_recipe

from mm_paths import ROOT

BAD_ROW = 2  # the bad row's place in the file (0-based, header excluded)
NOT_UTF8 = "\udcff"  # stands for the byte 0xff in a row below: written raw, so the file is not UTF-8
GOOD = {
    "causal_lm_sft": {"prompt": "copy: a b", "response": "a b"},
    "seq2seq": {"source": "reverse: a b", "target": "b a"},
    "question_answering": {"context": "A fox slept in the forest.", "question": "Which animal is it about?",
                           "answer_start": 2, "answer_text": "fox"},
}
CHAT_GOOD = {"messages": [{"role": "user", "content": "copy: a b"}, {"role": "assistant", "content": "a b"}]}
FOX = "A fox slept in the forest."

# (id, recipe, bad row, file format, extra overrides, error message or None, counter the case adds or None)
CASES = [
    ("sft-empty-response", "causal_lm_sft", {"prompt": "copy: a", "response": ""}, "jsonl", [],
     "the last message must be a non-empty assistant turn", "skipped_bad_samples"),
    ("sft-blank-response", "causal_lm_sft", {"prompt": "copy: a", "response": "  \n"}, "jsonl", [],
     "the last message must be a non-empty assistant turn", "skipped_bad_samples"),
    ("sft-unknown-role", "causal_lm_sft",
     {"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "a"}]}, "jsonl", [],
     "unknown message role 'wizard'", "skipped_bad_samples"),
    ("sft-chat-ends-with-user", "causal_lm_sft",
     {"messages": [{"role": "user", "content": "hi"}]}, "jsonl", [],
     "the last message must be a non-empty assistant turn", "skipped_bad_samples"),
    ("sft-long-prompt-truncate-left", "causal_lm_sft", {"prompt": "copy: " + "a " * 100, "response": "a"}, "jsonl",
     ["data.max_length=32"], None, "truncated_prompts"),
    ("sft-long-prompt-truncate-error", "causal_lm_sft", {"prompt": "copy: " + "a " * 100, "response": "a"}, "jsonl",
     ["data.max_length=32", "data.truncate=error"], r"prompt\+response is \d+ tokens over data.max_length=32",
     "skipped_bad_samples"),
    ("sft-long-response", "causal_lm_sft", {"prompt": "copy: a", "response": "a " * 100}, "jsonl",
     ["data.max_length=32"], r"the response is \d+ tokens, the context limit 32", "skipped_bad_samples"),
    ("sft-not-utf8-jsonl", "causal_lm_sft", {"prompt": f"copy: {NOT_UTF8}", "response": "a"}, "jsonl", [],
     r"\['prompt'\] not UTF-8 text", None),
    ("sft-not-utf8-chat", "causal_lm_sft",
     {"messages": [{"role": "user", "content": NOT_UTF8}, {"role": "assistant", "content": "a"}]}, "jsonl", [],
     r"\['messages'\] not UTF-8 text", None),
    ("sft-not-utf8-csv", "causal_lm_sft", {"prompt": f"copy: {NOT_UTF8}", "response": "a"}, "csv", [],
     "at line 4: not UTF-8 text", None),
    ("sft-not-utf8-streamed", "causal_lm_sft", {"prompt": f"copy: {NOT_UTF8}", "response": "a"}, "jsonl",
     ["data.streaming=true", "train.max_steps=2"], "line 3 is not UTF-8 text", None),
    ("s2s-empty-target", "seq2seq", {"source": "reverse: a b", "target": ""}, "jsonl", [],
     "the target is empty or not text", "skipped_bad_samples"),
    ("s2s-empty-source", "seq2seq", {"source": " ", "target": "a"}, "jsonl", [],
     "the source is empty or not text", "skipped_bad_samples"),
    ("s2s-long-source-truncate-right", "seq2seq", {"source": "reverse: " + "a " * 60, "target": "a"}, "jsonl", [],
     None, "truncated_sources"),
    ("s2s-long-source-truncate-error", "seq2seq", {"source": "reverse: " + "a " * 60, "target": "a"}, "jsonl",
     ["data.truncate=error"], r"the source is \d+ tokens, over data.max_source_length=32", "skipped_bad_samples"),
    ("s2s-not-utf8", "seq2seq", {"source": f"reverse: {NOT_UTF8}", "target": "a"}, "jsonl", [],
     r"\['source'\] not UTF-8 text", None),
    ("qa-answer-not-in-context", "question_answering",
     {"context": FOX, "question": "Which animal is it about?", "answer_start": 2, "answer_text": "owl"}, "jsonl", [],
     "the answer 'owl' is not at answer_start=2 of the context", "skipped_bad_samples"),
    ("qa-answer-start-past-the-context", "question_answering",
     {"context": FOX, "question": "Which animal is it about?", "answer_start": 400, "answer_text": "fox"}, "jsonl",
     [], "the answer 'fox' is not at answer_start=400", "skipped_bad_samples"),
    ("qa-unanswerable-without-v2", "question_answering",
     {"context": FOX, "question": "Which bird is it about?", "answer_start": None, "answer_text": None}, "jsonl", [],
     "the question has no answer .* data.version_2_with_negative=true", "skipped_bad_samples"),
    ("qa-empty-question", "question_answering",
     {"context": FOX, "question": "", "answer_start": 2, "answer_text": "fox"}, "jsonl", [],
     "the question is empty or not text", "skipped_bad_samples"),
    ("qa-not-utf8-jsonl", "question_answering",
     {"context": f"A fox {NOT_UTF8}.", "question": "Which animal?", "answer_start": 2, "answer_text": "fox"}, "jsonl",
     [], r"\['context'\] not UTF-8 text", None),
    ("qa-not-utf8-squad-json", "question_answering",
     {"context": f"A fox {NOT_UTF8}.", "question": "Which animal?", "answer_start": 2, "answer_text": "fox"}, "json",
     [], "at line 4: not UTF-8 text", None),
]


def raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")  # NOT_UTF8 becomes the byte 0xff


def write(path: Path, rows: list[dict], fmt: str) -> str:
    if fmt == "jsonl":
        path.write_bytes(b"".join(raw(json.dumps(r, ensure_ascii=False) + "\n") for r in rows))
    elif fmt == "csv":
        with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:  # SQuAD JSON, one question per line from line 2 on (the bad row's on line 2 + BAD_ROW)
        qas = [json.dumps({"id": str(i), "question": r["question"], "context": r["context"],
                           "answers": [{"text": r["answer_text"], "answer_start": r["answer_start"]}]},
                          ensure_ascii=False) for i, r in enumerate(rows)]
        body = ",\n".join('{"context": %s, "qas": [%s]}' % (json.dumps(json.loads(q)["context"], ensure_ascii=False),
                                                              q) for q in qas)
        path.write_bytes(raw('{"data": [{"title": "t", "paragraphs": [\n' + body + "\n]}]}\n"))
    return str(path)


def prepare(recipe: str, tmp_path: Path, bad: dict, fmt: str, extra: list[str], skip: bool = False):
    good = CHAT_GOOD if "messages" in bad else GOOD[recipe]
    rows = [good] * BAD_ROW + [bad] + [good] * 5
    train = write(tmp_path / f"train.{fmt}", rows, fmt)
    ev = write(tmp_path / f"eval.{fmt}", [good] * 4, "jsonl" if fmt == "csv" else fmt)
    cfg = load_config(os.path.join(ROOT, "recipes", recipe, "tiny.yaml"),
                      [f"output_dir={tmp_path / ('skip' if skip else 'run')}", "data.generate=null",
                       f"data.train_file={train}", f"data.eval_file={ev}", *extra,
                       *(["data.skip_bad_samples=true"] if skip else [])])
    return get_recipe(recipe).prepare(cfg)


@pytest.mark.parametrize("recipe, bad, fmt, extra, message, counter", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_generative_hostile_rows(tmp_path, recipe, bad, fmt, extra, message, counter):
    if message is not None:
        with pytest.raises(DataError, match=f"train.{fmt}.*{message}" if "line" in message else
                           f"train.{fmt}: row {BAD_ROW}: .*{message}"):
            prepare(recipe, tmp_path, bad, fmt, extra)
    if counter is None:
        return
    prepared = prepare(recipe, tmp_path, bad, fmt, extra, skip=counter == "skipped_bad_samples")
    assert prepared.counters[counter] == 1
    n = len(prepared.train_data)
    if counter == "skipped_bad_samples":
        assert n == BAD_ROW + 5  # the bad row left out, every good one kept
        return
    assert n == BAD_ROW + 6
    cut = prepared.train_data[BAD_ROW]
    if recipe == "causal_lm_sft":  # the prompt loses its first tokens: the window is full and ends with the response
        tok = prepared.task.lm.tokenizer
        assert len(cut["text"]) == 32 and cut["text"][-2:] == [*tok("a", add_special_tokens=False)["input_ids"],
                                                               tok.eos_token_id]
    else:  # the source loses its end: max_source_length tokens, still closed by the tokenizer's EOS
        tok = prepared.task.lm.tokenizer
        assert len(cut["text"]) == 32 and cut["text"][-1] == tok.eos_token_id
