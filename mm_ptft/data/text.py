"""Text data: tokenisation with bad-row handling, a dynamic-padding collator, and token-level augmentation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mm_ptft.config import ConfigError
from mm_ptft.contracts import Callback
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

    def iter_items(self) -> Iterator[dict[str, Any]]:
        return iter(self.items)


#: what ``tokenize`` does with a text over ``max_length`` tokens (``data.overlong_text``)
OVERLONG = ("truncate", "skip", "error")


def tokenize(tokenizer: Any, texts: Sequence[Any], max_length: int, where: str, skip_bad: bool,
             counters: dict[str, int], rows: Optional[Sequence[int]] = None,
             overlong: str = "truncate") -> tuple[list[list[int]], list[int]]:
    """Token ids for each usable text and the row numbers kept.

    Empty or missing texts are an error naming the row, or a counted skip with ``skip_bad``;
    texts over ``max_length`` tokens are (``overlong``) truncated keeping the closing special token and counted
    (``truncated_texts``), dropped and counted (``skipped_overlong_text``), or an error naming the row.
    ``rows`` maps positions to the file's row numbers for messages."""
    if overlong not in OVERLONG:
        raise ValueError(f"data.overlong_text={overlong!r}; choose one of {list(OVERLONG)}")
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
    ids, kept_ok = [], []
    for r, seq in zip(kept, enc["input_ids"]):
        if len(seq) > max_length:
            if overlong == "error":
                raise DataError(f"{where}: row {rows[r] if rows is not None else r}: text of {len(seq)} tokens is over "
                                f"data.max_length={max_length} (data.overlong_text=skip drops such rows, truncate "
                                f"cuts them)")
            if overlong == "skip":
                counters["skipped_overlong_text"] = counters.get("skipped_overlong_text", 0) + 1
                continue
            counters["truncated_texts"] = counters.get("truncated_texts", 0) + 1
            seq = seq[: max_length - 1] + [seq[-1]] if sep is not None and seq[-1] == sep else seq[:max_length]
        ids.append(seq)
        kept_ok.append(r)
    return ids, kept_ok


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


# ---- augmentation -----------------------------------------------------------------------------------------------
@dataclass
class TextAugment:
    """Token-level noise for training samples (``data.augment``); every rate 0 (the default) is off. Special tokens
    ([CLS], [SEP], padding, ...) are never changed, moved or deleted."""

    RANGES: ClassVar[dict[str, str]] = {"token_dropout": "[0,1)", "token_mask": "[0,1)", "random_swap": ">=0",
                                        "random_deletion": "[0,1)"}  # checked by config.parse
    token_dropout: float = 0.0  # each token becomes the unknown token with this probability (word dropout)
    token_mask: float = 0.0  # each token becomes the mask token with this probability (BERT-style noise)
    random_swap: int = 0  # swap two random tokens this many times (EDA)
    random_deletion: float = 0.0  # delete each token with this probability, keeping at least one (EDA)

    @property
    def active(self) -> bool:
        return bool(self.token_dropout or self.token_mask or self.random_swap or self.random_deletion)


class TextAugmenter:
    """Applies a ``TextAugment`` to one token-id list with a given generator: deletion, then swaps, then each surviving
    token masked (p = token_mask) or replaced by the unknown token (p = token_dropout), exclusively."""

    def __init__(self, cfg: TextAugment, tokenizer: Any, where: str = "data.augment") -> None:
        self.cfg, self.special = cfg, np.asarray(sorted({int(i) for i in tokenizer.all_special_ids}), dtype=np.int64)
        self.mask_id, self.unk_id = tokenizer.mask_token_id, tokenizer.unk_token_id
        if cfg.token_mask and self.mask_id is None:
            raise ConfigError(f"{where}.token_mask={cfg.token_mask}: the tokenizer has no mask token "
                              f"(use token_dropout)")
        if cfg.token_dropout and self.unk_id is None:
            raise ConfigError(f"{where}.token_dropout={cfg.token_dropout}: the tokenizer has no unknown token")
        if cfg.token_mask + cfg.token_dropout >= 1:
            raise ConfigError(f"{where}: token_mask + token_dropout = {cfg.token_mask + cfg.token_dropout} must be < 1")

    def _free(self, ids: np.ndarray) -> np.ndarray:
        """Positions of ordinary (non-special) tokens; a broadcast compare, faster than np.isin on short rows."""
        return np.flatnonzero(~(ids[:, None] == self.special).any(1))  # (F,)

    def eligible(self, ids: Sequence[int]) -> bool:
        """Whether ``ids`` holds a token the augmentation may change (any non-special one)."""
        return len(self._free(np.asarray(ids, dtype=np.int64))) > 0

    def __call__(self, ids: Sequence[int], rng: np.random.Generator) -> list[int]:
        c, out = self.cfg, np.asarray(ids, dtype=np.int64)  # (L,)
        free = self._free(out)
        if c.random_deletion and len(free) > 1:
            drop = free[rng.random(len(free)) < c.random_deletion]
            if len(drop) == len(free):
                drop = np.delete(drop, rng.integers(len(drop)))  # EDA: never delete every word
            out = np.delete(out, drop)
            free = self._free(out)
        for _ in range(c.random_swap if len(free) > 1 else 0):
            i, j = rng.integers(len(free)), rng.integers(len(free) - 1)
            a, b = free[i], free[j + (j >= i)]  # two distinct ordinary positions, uniformly
            out[[a, b]] = out[[b, a]]
        if c.token_mask or c.token_dropout:
            u = rng.random(len(free))  # one draw per token: [0, mask) masked, [mask, mask + dropout) unknown
            if c.token_mask:
                out[free[u < c.token_mask]] = self.mask_id
            if c.token_dropout:
                out[free[(u >= c.token_mask) & (u < c.token_mask + c.token_dropout)]] = self.unk_id
        return out.tolist()


class AugmentedText(Dataset):
    """Training ``Records`` with ``TextAugmenter`` applied on access, seeded by (seed, epoch, index): a resumed run
    (which replays an epoch's remaining indices) sees exactly the tokens the uninterrupted run saw. The epoch is
    read from ``epoch_source.epoch`` (the trainer's batch sampler, attached by ``FollowEpoch``), 0 before that."""

    def __init__(self, base: Records, augmenter: TextAugmenter, seed: int) -> None:
        self.base, self.augmenter, self.seed, self.epoch_source = base, augmenter, seed, None

    def __len__(self) -> int:
        return len(self.base)

    def sample(self, i: int, epoch: int) -> dict[str, Any]:
        """Item ``i`` as augmented in ``epoch``."""
        item = dict(self.base[i])
        item[TEXT] = self.augmenter(item[TEXT], np.random.default_rng([self.seed % 2 ** 32, epoch, i]))
        return item

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.sample(i, int(getattr(self.epoch_source, "epoch", 0)))

    def count(self) -> int:
        """Samples the augmentation applies to each epoch (those with an ordinary token), for the data log."""
        return sum(self.augmenter.eligible(it[TEXT]) for it in self.base.iter_items())


class FollowEpoch(Callback):
    """Points an epoch-seeded training dataset at the trainer's batch sampler, whose ``epoch`` the trainer sets
    before each epoch's (and a resume's) first batch; loader workers are started per epoch, so they copy it then."""

    def __init__(self, dataset: AugmentedText) -> None:
        self.dataset = dataset

    def on_train_start(self, trainer: Any) -> None:
        self.dataset.epoch_source = trainer.train_loader.batch_sampler


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
