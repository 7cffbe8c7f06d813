"""Sequence-to-sequence data (translation, summarisation): source/target rows turned into encoder ids and decoder
labels the way transformers' ``run_translation.py`` does (``tokenizer(source)``, ``tokenizer(text_target=target)``,
so a Marian tokenizer uses its target vocabulary), and a collator padding labels with -100.

**Sample** (one record): ``text`` source ids, ``labels`` target ids, ``reference`` (the target text, for the
generation metrics). An empty or non-text source or target is a bad row; a source or target over its token limit
is cut on the right (its end; counted as ``truncated_sources`` / ``truncated_targets``) with ``truncate="right"``,
or a bad row with ``truncate="error"``."""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from mm_ptft.data.sft import bad_row, counted_records, pad_rows
from mm_ptft.types import IGNORE_INDEX as IGNORE, LABELS, REFERENCE, TEXT, TEXT_MASK

TRUNCATE = ("right", "error")


def _encode(tokenizer: Any, text: Any, limit: int, part: str, where: str, index: int, counters: dict[str, int],
            truncate: str, target: bool) -> list[int]:
    """Token ids of one side (special tokens included), at most ``limit``: cut on the right and counted, or an error."""
    if not isinstance(text, str) or not text.strip():
        raise bad_row(where, index, f"the {part} is empty or not text ({text!r})")
    enc = (lambda **kw: tokenizer(text_target=text, **kw)) if target else (lambda **kw: tokenizer(text, **kw))
    ids = enc()["input_ids"]
    if len(ids) <= limit:
        return list(ids)
    if truncate != "right":
        raise bad_row(where, index, f"the {part} is {len(ids)} tokens, over data.max_{part}_length={limit} "
                                    f"(data.truncate=right cuts its end instead)")
    counters[f"truncated_{part}s"] = counters.get(f"truncated_{part}s", 0) + 1
    return list(enc(truncation=True, max_length=limit)["input_ids"])  # the tokenizer keeps its closing tokens


def seq2seq_sample(tokenizer: Any, row: Mapping[str, Any], cols: Mapping[str, str], limits: tuple[int, int],
                   where: str, index: int, counters: dict[str, int], truncate: str = "right",
                   prefix: str = "") -> dict[str, Any]:
    """One record of a row: ``prefix`` + source (e.g. T5's ``"translate English to German: "``) and target, each at
    most its limit in ``limits`` (source, target) tokens."""
    source, target = row.get(cols["source"]), row.get(cols["target"])
    src = _encode(tokenizer, source if not isinstance(source, str) or not source.strip() else prefix + source,
                  limits[0], "source", where, index, counters, truncate, target=False)
    tgt = _encode(tokenizer, target, limits[1], "target", where, index, counters, truncate, target=True)
    return {TEXT: src, LABELS: tgt, REFERENCE: target}


def seq2seq_records(tokenizer: Any, rows: Sequence[Mapping[str, Any]], cols: Mapping[str, str],
                    limits: tuple[int, int], where: str, skip_bad: bool, counters: dict[str, int],
                    truncate: str = "right", prefix: str = "",
                    row_numbers: Optional[Sequence[int]] = None) -> list[dict[str, Any]]:
    """``seq2seq_sample`` of every row; a bad row is its DataError naming the row, or with ``skip_bad`` counted."""
    return counted_records(lambda row, i: seq2seq_sample(tokenizer, row, cols, limits, where, i, counters, truncate,
                                                         prefix), rows, skip_bad, counters, row_numbers)


class Seq2SeqCollator:
    """Right-padded sources (``text``, ``text_mask``), targets as ``labels`` padded with -100 (never learnt; the
    model shifts them into its decoder inputs), and the ``reference`` texts."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return {TEXT: pad_rows([it[TEXT] for it in items], self.pad_id),  # (B, S)
                TEXT_MASK: pad_rows([[1] * len(it[TEXT]) for it in items], 0),  # (B, S)
                LABELS: pad_rows([it[LABELS] for it in items], IGNORE),  # (B, T)
                REFERENCE: [it[REFERENCE] for it in items]}


class Seq2SeqRow:
    """A streamed record → a seq2seq sample (``data.stream`` map function): a bad row is its DataError naming the
    shard and row, or with ``skip_bad`` a counted skip (None)."""

    def __init__(self, tokenizer: Any, cols: Mapping[str, str], limits: tuple[int, int], skip_bad: bool,
                 truncate: str = "right", prefix: str = "") -> None:
        self.tokenizer, self.cols, self.limits = tokenizer, dict(cols), limits
        self.skip_bad, self.truncate, self.prefix = skip_bad, truncate, prefix

    def __call__(self, shard: Any, row: int, record: dict[str, Any], counters: dict[str, int]) -> Optional[dict]:
        out = seq2seq_records(self.tokenizer, [record], self.cols, self.limits, shard.name, self.skip_bad, counters,
                              self.truncate, self.prefix, [row])
        return out[0] if out else None


def seq2seq_length(item: Mapping[str, Any]) -> int:
    return len(item[TEXT]) + len(item[LABELS])


__all__ = ["TRUNCATE", "Seq2SeqCollator", "Seq2SeqRow", "seq2seq_length", "seq2seq_records", "seq2seq_sample"]
