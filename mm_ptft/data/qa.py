"""Extractive question answering data, as transformers' ``run_qa.py`` prepares it: SQuAD JSON (v1.1 and v2.0) or a
table read into rows of (id, context, question, answers), long contexts split into windows of ``max_length`` tokens
overlapping by ``doc_stride`` (the fast tokenizer's overflow and offset mapping), and the answer's character span
mapped to token positions.

**Rows.** A SQuAD JSON file (``{"data": [{"paragraphs": [{"context", "qas": [{"id", "question", "answers":
[{"text", "answer_start"}], "is_impossible"}]}]}]}``) gives one row per question (row numbers count questions in file
order). A table (CSV/TSV/JSONL/parquet, ``hf:squad``) has a context and a question column and either an ``answers``
column (``{text: [...], answer_start: [...]}``, the HF squad layout) or one ``answer_start`` and one ``answer_text``
column. A question without an answer (``is_impossible``, an empty answer list, an empty answer text) is SQuAD 2.0's
unanswerable question: learnt and predicted as the null answer with ``version_2_with_negative``, a bad row without.

**Windows.** A training row gives one sample per window: ``text`` ids, ``text_segments`` (token type ids),
``start_positions``/``end_positions``: the answer's first and last token, or the CLS token where the window does not
hold the whole answer (or there is none), as ``run_qa.py`` labels them. An evaluation row gives one sample holding
all its windows (``qa_windows`` …), their context offsets (-1 off the context) and the row's context and answers, so
the best span is chosen across windows inside one batch and mapped back to characters of the original context.

**Bad rows** (``DataError`` naming the file and row, or with ``skip_bad`` a counted skip): an empty or non-text
context or question, an answer text that is not found at its ``answer_start`` in the context, a missing answer
without ``version_2_with_negative``, a question too long to leave ``doc_stride`` + 1 context tokens in a window."""
from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Optional, Sequence

import torch

from mm_ptft.data.sft import bad_row, pad_rows
from mm_ptft.data.tables import ROW, DataError, load_table, non_utf8_line
from mm_ptft.types import REFERENCE, TEXT, TEXT_MASK, TEXT_SEGMENTS

START, END = "start_positions", "end_positions"  # (B,) token index of the answer's first / last token (CLS: none)
WINDOWS, SEGMENTS, OFFSETS = "qa_windows", "qa_segments", "qa_offsets"  # an eval sample's windows
CONTEXT, QID = "qa_context", "qa_id"  # an eval sample's context and id
ANSWERS = REFERENCE  # an eval sample's gold answer texts ([""] for an unanswerable question)
EXAMPLE = "qa_example"  # (W,) a window's sample index in its batch
NO_OFFSET = -1  # the offset of a token outside the context (question, special tokens, padding)


# ---- reading ------------------------------------------------------------------------------------------------------

def squad_rows(doc: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    """The questions of a parsed SQuAD JSON document as rows ``{id, title, context, question, answers}``
    (``answers``: ``{text: [...], answer_start: [...]}``, empty for an ``is_impossible`` question)."""
    rows = []
    for a, article in enumerate(doc.get("data") or []):
        for p, para in enumerate(article.get("paragraphs") or []):
            for q, qa in enumerate(para.get("qas") or []):
                answers = [] if qa.get("is_impossible") else list(qa.get("answers") or [])
                if any(not isinstance(x, Mapping) or "text" not in x or "answer_start" not in x for x in answers):
                    raise DataError(f"{where}: data[{a}].paragraphs[{p}].qas[{q}] (id {qa.get('id')!r}): every answer "
                                    f"needs 'text' and 'answer_start'")
                rows.append({"id": str(qa.get("id", len(rows))), "title": str(article.get("title", "")),
                             "context": para.get("context"), "question": qa.get("question"),
                             "answers": {"text": [x["text"] for x in answers],
                                         "answer_start": [x["answer_start"] for x in answers]}})
    if not rows:
        raise DataError(f"{where}: a SQuAD JSON file without questions (data → paragraphs → qas is empty)")
    return rows


def load_qa_table(path: str, key: str = "data.train_file") -> Any:
    """A ``datasets.Dataset`` of ``path``: a SQuAD JSON file (a ``.json`` whose top level holds ``data``) flattened to
    one row per question, else ``tables.load_table`` (CSV/TSV/JSONL/parquet/``hf:``)."""
    if not (path.endswith(".json") and os.path.isfile(path)):
        return load_table(path, key)
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except UnicodeDecodeError:
        raise DataError(f"{key}={path}: could not be read{non_utf8_line(path)}") from None
    except ValueError as err:
        raise DataError(f"{key}={path}: not a JSON document ({type(err).__name__}: {err})") from None
    if not (isinstance(doc, dict) and "data" in doc):
        return load_table(path, key)
    import datasets

    listed = getattr(datasets, "List", None) or datasets.Sequence
    text = datasets.Value("string")
    feats = datasets.Features({"id": text, "title": text, "context": text, "question": text, ROW: datasets.Value("int64"),
                               "answers": {"text": listed(text), "answer_start": listed(datasets.Value("int64"))}})
    rows = [{**r, ROW: i} for i, r in enumerate(squad_rows(doc, f"{key}={path}"))]
    return datasets.Dataset.from_list(rows, features=feats)


# ---- one row ------------------------------------------------------------------------------------------------------

def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def row_answers(row: Mapping[str, Any], cols: Mapping[str, str], where: str, index: int) -> tuple[list[str], list[int]]:
    """(answer texts, character starts) of a row: its ``answers`` column where the table has one, else its answer
    text and start columns; ([], []) for an unanswerable question. Each answer must be found at its start."""
    if cols["answers"] in row:
        got = row[cols["answers"]] or {}
        texts, starts = list(got.get("text") or []), list(got.get("answer_start") or [])
        if len(texts) != len(starts):
            raise bad_row(where, index, f"{len(texts)} answer texts but {len(starts)} answer starts")
    elif _missing(row.get(cols["answer_text"])):
        texts, starts = [], []
    else:
        texts, starts = [row[cols["answer_text"]]], [row.get(cols["answer_start"])]
    context = row[cols["context"]]
    for text, start in zip(texts, starts):
        if not isinstance(text, str) or not text.strip():
            raise bad_row(where, index, f"answer text {text!r} is empty or not text")
        ok = isinstance(start, (int, float)) and not _missing(start) and float(start).is_integer() and start >= 0
        if not ok:
            raise bad_row(where, index, f"answer_start {start!r} is not a character position for answer {text!r}")
        found = context[int(start): int(start) + len(text)]
        if found != text:
            raise bad_row(where, index, f"the answer {text!r} is not at answer_start={int(start)} of the context "
                                        f"(it reads {found!r} there; answer_start counts characters from 0)")
    return texts, [int(s) for s in starts]


def check_row(row: Mapping[str, Any], cols: Mapping[str, str], where: str, index: int,
              negatives: bool) -> tuple[str, str, list[str], list[int]]:
    """(question, context, answer texts, starts) of a usable row; a DataError naming it otherwise."""
    question, context = row.get(cols["question"]), row.get(cols["context"])
    for name, value in (("question", question), ("context", context)):
        if not isinstance(value, str) or not value.strip():
            raise bad_row(where, index, f"the {name} is empty or not text ({value!r})")
    texts, starts = row_answers(row, cols, where, index)
    if not texts and not negatives:
        raise bad_row(where, index, "the question has no answer (SQuAD 2.0's unanswerable kind): set "
                                    "data.version_2_with_negative=true to learn and predict a null answer")
    return question.lstrip(), context, texts, starts  # run_qa.py: leading spaces would only waste window room


def question_room(tokenizer: Any, limits: tuple[int, int]) -> int:
    """The most question tokens a window of ``limits`` (max_length, doc_stride) takes: the rest holds the special
    tokens and more than ``doc_stride`` context tokens (the tokenizer's condition for striding)."""
    return limits[0] - tokenizer.num_special_tokens_to_add(pair=True) - limits[1] - 1


# ---- windows ------------------------------------------------------------------------------------------------------

def _windows(tokenizer: Any, questions: Sequence[str], contexts: Sequence[str], limits: tuple[int, int]) -> Any:
    """The tokenizer's windows of each (question, context): the context cut into ``max_length`` windows overlapping
    by ``doc_stride`` tokens, the question kept whole in each (``truncation="only_second"``), with offsets."""
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(f"{type(tokenizer).__name__}: question answering needs a fast tokenizer (offset mapping)")
    return tokenizer(list(questions), list(contexts), truncation="only_second", max_length=limits[0],
                     stride=limits[1], return_overflowing_tokens=True, return_offsets_mapping=True)


def _context_span(seq_ids: Sequence[Optional[int]]) -> tuple[int, int]:
    """(first, last) token index of the context in a window."""
    inside = [i for i, s in enumerate(seq_ids) if s == 1]
    return inside[0], inside[-1]


def answer_positions(offsets: Sequence[Sequence[int]], seq_ids: Sequence[Optional[int]], cls: int,
                     start_char: Optional[int], end_char: Optional[int]) -> tuple[int, int]:
    """(first, last) token of the character span [start_char, end_char) in a window, or (cls, cls) where the window
    does not hold it whole or there is none (``run_qa.py``'s ``prepare_train_features``)."""
    if start_char is None:
        return cls, cls
    first, last = _context_span(seq_ids)
    if not (offsets[first][0] <= start_char and offsets[last][1] >= end_char):
        return cls, cls
    while first < len(offsets) and first <= last and offsets[first][0] <= start_char:
        first += 1
    while offsets[last][1] >= end_char and last > 0:
        last -= 1
    return first - 1, last + 1


def _cls_index(ids: Sequence[int], tokenizer: Any) -> int:
    return ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in ids else 0


def qa_samples(tokenizer: Any, rows: Sequence[Mapping[str, Any]], cols: Mapping[str, str], limits: tuple[int, int],
               where: str, skip_bad: bool, counters: dict[str, int], train: bool, negatives: bool,
               row_numbers: Optional[Sequence[int]] = None) -> list[dict[str, Any]]:
    """Samples of ``rows``: a sample per window when ``train``, else one per row holding all its windows; a bad row
    is its DataError, or with ``skip_bad`` a counted skip (``skipped_bad_samples``)."""
    good, room = [], question_room(tokenizer, limits)
    for i, row in enumerate(rows):
        n = row_numbers[i] if row_numbers is not None else i
        try:
            good.append((n, row, check_row(row, cols, where, n, negatives)))
        except DataError as err:
            _bad(err, skip_bad, counters)
    lengths = [len(x) for x in tokenizer([g[2][0] for g in good], add_special_tokens=False)["input_ids"]] \
        if good else []
    for (n, _, _), length in zip(list(good), lengths):
        if length > room:
            _bad(bad_row(where, n, f"the question is {length} tokens: at most data.max_length - data.doc_stride - "
                                   f"special tokens - 1 = {room} leave room for the context windows"), skip_bad, counters)
    good = [g for g, length in zip(good, lengths) if length <= room]
    if not good:
        return []
    enc = _windows(tokenizer, [g[2][0] for g in good], [g[2][1] for g in good], limits)
    counters["qa_windows"] = counters.get("qa_windows", 0) + len(enc["input_ids"])
    out: list[dict[str, Any]] = [] if train else [_eval_sample(n, row, c, cols) for n, row, c in good]
    for w, ids in enumerate(enc["input_ids"]):
        _, _, texts, starts = good[enc["overflow_to_sample_mapping"][w]][2]
        seq_ids, offsets = enc.sequence_ids(w), enc["offset_mapping"][w]
        span = (starts[0], starts[0] + len(texts[0])) if texts else (None, None)
        start, end = answer_positions(offsets, seq_ids, _cls_index(ids, tokenizer), *span)
        segments = enc["token_type_ids"][w] if "token_type_ids" in enc else [0] * len(ids)
        if train:
            out.append({TEXT: list(ids), TEXT_SEGMENTS: list(segments), START: start, END: end})
            continue
        ex = out[enc["overflow_to_sample_mapping"][w]]
        ex[WINDOWS].append(list(ids))
        ex[SEGMENTS].append(list(segments))
        ex[OFFSETS].append([list(o) if s == 1 else [NO_OFFSET, NO_OFFSET] for o, s in zip(offsets, seq_ids)])
        ex[START].append(start)
        ex[END].append(end)
    return out


def _bad(err: DataError, skip_bad: bool, counters: dict[str, int]) -> None:
    """Raise ``err``, or with ``skip_bad`` count it as ``skipped_bad_samples``."""
    if not skip_bad:
        raise err
    counters["skipped_bad_samples"] = counters.get("skipped_bad_samples", 0) + 1


def _eval_sample(n: int, row: Mapping[str, Any], checked: tuple, cols: Mapping[str, str]) -> dict[str, Any]:
    qid = row.get(cols["id"])
    return {WINDOWS: [], SEGMENTS: [], OFFSETS: [], START: [], END: [], CONTEXT: checked[1],
            ANSWERS: list(checked[2]) or [""],  # the official v2 script scores a null answer against ""
            QID: str(qid) if not _missing(qid) else str(n)}


def qa_length(item: Mapping[str, Any]) -> int:
    """Tokens of a sample (all its windows for an evaluation sample)."""
    return len(item[TEXT]) if TEXT in item else sum(len(w) for w in item[WINDOWS])


class QACollator:
    """Windows right-padded as ``text``/``text_mask``/``text_segments`` with their ``start_positions``/
    ``end_positions``; evaluation samples' windows flattened in order, with ``qa_example`` (W,) naming each window's
    sample, ``qa_offsets`` (W, L, 2) (-1 off the context) and the samples' contexts, answers and ids."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        if WINDOWS not in items[0]:
            return self._windows([it[TEXT] for it in items], [it[TEXT_SEGMENTS] for it in items],
                                 [it[START] for it in items], [it[END] for it in items])
        flat = [(i, w) for i, it in enumerate(items) for w in range(len(it[WINDOWS]))]
        batch = self._windows(*[[items[i][k][w] for i, w in flat] for k in (WINDOWS, SEGMENTS, START, END)])
        offsets = torch.full((*batch[TEXT].shape, 2), NO_OFFSET, dtype=torch.long)  # (W, L, 2)
        for row, (i, w) in enumerate(flat):
            got = items[i][OFFSETS][w]
            offsets[row, : len(got)] = torch.as_tensor(got, dtype=torch.long).reshape(-1, 2)
        batch.update({OFFSETS: offsets, EXAMPLE: torch.tensor([i for i, _ in flat], dtype=torch.long),  # (W,)
                      CONTEXT: [it[CONTEXT] for it in items], ANSWERS: [list(it[ANSWERS]) for it in items],
                      QID: [it[QID] for it in items]})
        return batch

    def _windows(self, ids: list, segments: list, starts: list, ends: list) -> dict[str, Any]:
        return {TEXT: pad_rows(ids, self.pad_id),  # (W, L)
                TEXT_MASK: pad_rows([[1] * len(x) for x in ids], 0),  # (W, L)
                TEXT_SEGMENTS: pad_rows(segments, 0),  # (W, L)
                START: torch.tensor(starts, dtype=torch.long), END: torch.tensor(ends, dtype=torch.long)}  # (W,)


__all__ = ["ANSWERS", "CONTEXT", "END", "EXAMPLE", "OFFSETS", "QACollator", "QID", "START", "answer_positions",
           "check_row", "load_qa_table", "qa_length", "qa_samples", "question_room", "row_answers", "squad_rows"]
