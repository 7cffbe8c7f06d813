"""Text data: tokenisation with bad-row handling, and a dynamic-padding collator."""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
from torch.utils.data import Dataset

from mm_ptft.data.tables import DataError
from mm_ptft.types import LABELS, TEXT, TEXT_MASK


class Records(Dataset):
    """A list of per-sample dicts (fast indexing; no per-item Arrow decoding)."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


def tokenize(tokenizer: Any, texts: Sequence[Any], max_length: int, where: str, skip_bad: bool,
             counters: dict[str, int], rows: Optional[Sequence[int]] = None) -> tuple[list[list[int]], list[int]]:
    """Token ids for each usable text and the row numbers kept.

    Empty or missing texts are an error naming the row, or a counted skip with ``skip_bad``;
    texts over ``max_length`` tokens are truncated (keeping the closing special token) and counted.
    ``rows`` maps positions to the file's row numbers for messages."""
    kept = []
    for row, t in enumerate(texts):
        if t is None or not str(t).strip():
            if not skip_bad:
                raise DataError(f"{where}: row {rows[row] if rows is not None else row}: empty text (set data.skip_bad_samples=true to skip such rows)")
            counters["skipped_empty_text"] = counters.get("skipped_empty_text", 0) + 1
            continue
        kept.append(row)
    if not kept:  # a tokenizer may reject an empty list
        return [], kept
    enc = tokenizer([str(texts[r]) for r in kept], add_special_tokens=True, truncation=False, verbose=False)
    sep = tokenizer.sep_token_id
    ids = []
    for seq in enc["input_ids"]:
        if len(seq) > max_length:
            counters["truncated_texts"] = counters.get("truncated_texts", 0) + 1
            seq = seq[: max_length - 1] + [seq[-1]] if sep is not None and seq[-1] == sep else seq[:max_length]
        ids.append(seq)
    return ids, kept


class TextCollator:
    """Pads ``text`` ids to the longest in the batch (optionally to a multiple of 8)."""

    def __init__(self, pad_id: int, multiple_of: int = 1) -> None:
        self.pad_id, self.multiple_of = pad_id, multiple_of

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(it[TEXT]) for it in items)
        longest = -(-longest // self.multiple_of) * self.multiple_of
        ids = torch.full((len(items), longest), self.pad_id, dtype=torch.long)  # (B, L)
        mask = torch.zeros((len(items), longest), dtype=torch.long)  # (B, L)
        for i, it in enumerate(items):
            n = len(it[TEXT])
            ids[i, :n] = torch.as_tensor(it[TEXT])
            mask[i, :n] = 1
        batch = {TEXT: ids, TEXT_MASK: mask}
        if LABELS in items[0]:
            batch[LABELS] = torch.as_tensor([it[LABELS] for it in items])
        return batch


def lengths_of(records: Optional[Records]) -> Optional[list[int]]:
    return None if records is None else [len(r[TEXT]) for r in records.items]


class TextRow:
    """A streamed record → ``{text: ids, labels: target}`` (``data.stream`` map function): tokenised with the
    same checks as ``tokenize`` (an empty text is an error naming the row, or a counted skip); the target
    column read by ``target(value, where, row)`` (e.g. ``LabelMap.encode_one``; it raises naming the row)."""

    def __init__(self, tokenizer: Any, text_column: str, max_length: int, skip_bad: bool,
                 target_column: str = "", target: Optional[Callable[[Any, str, int], Any]] = None) -> None:
        self.tokenizer, self.text_column, self.max_length, self.skip_bad = tokenizer, text_column, max_length, skip_bad
        self.target_column, self.target = target_column, target

    def __call__(self, shard: Any, row: int, record: dict[str, Any], counters: dict[str, int]) -> Optional[dict]:
        need = [c for c in (self.text_column, self.target_column if self.target is not None else "") if c]
        missing = [c for c in need if c not in record]
        if missing:
            raise DataError(f"{shard.name}: row {row}: missing column(s) {missing}; the record has {sorted(record)} "
                            f"(set data.*_column to the right names)")
        ids, kept = tokenize(self.tokenizer, [record[self.text_column]], self.max_length, shard.name, self.skip_bad,
                             counters, [row])
        if not kept:
            return None
        item: dict[str, Any] = {TEXT: ids[0]}
        if self.target is not None:
            item[LABELS] = self.target(record[self.target_column], shard.name, row)
        return item


def text_length(item: dict[str, Any]) -> int:
    """Token count of a sample (length bucketing)."""
    return len(item[TEXT])
