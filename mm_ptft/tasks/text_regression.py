"""Text regression: any text encoder + a linear head predicting one number per text (MSE; MSE/MAE/R²).

Added as new files only (this module, ``heads/regression.py``, ``metrics/regression.py``, the
``text_scores`` generator and ``recipes/text_regression/``): the registries find them by package walk."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, Optional

import numpy as np
import torch

from mm_ptft.config import RunConfig, SplitData, StreamingData
from mm_ptft.contracts import Prepared
from mm_ptft.data.shards import column_batches
from mm_ptft.data.stream import CountingCollate
from mm_ptft.data.table_cache import CacheFields, features, tokenizer_identity
from mm_ptft.data.tables import DataError, column, require_columns, rows_of
from mm_ptft.data.text import TextCollator, TextRow, text_length, tokenize
from mm_ptft.encoders import TEXT_ENCODERS, build_encoder
from mm_ptft.heads.regression import RegressionTask
from mm_ptft.tasks import recipe
from mm_ptft.tasks import streaming as S
from mm_ptft.tasks.cached_tables import learned_tokenizer, lengths, map_table, once, prepare_tables, split_counts
from mm_ptft.tasks.common import eval_name, load_splits, save_tokenizer
from mm_ptft.types import LABELS, TEXT


@dataclass
class TextRegData(SplitData, StreamingData, CacheFields):
    """train_file: a file; with streaming also a glob, brace range, directory of shards or hf:<dataset>
    (streaming: records shuffled and length-bucketed together per shuffle_block)."""

    RANGES: ClassVar[dict[str, str]] = {"max_length": ">0"}  # with SplitData's: checked by config.parse
    text_column: str = "text"
    target_column: str = "score"
    max_length: int = 128
    target_mean: Optional[float] = None  # None: learned from the training file (saved with the run)
    target_std: Optional[float] = None


@dataclass
class TextRegModel:
    RANGES: ClassVar[dict[str, str]] = {"dropout": "[0,1)"}  # checked by config.parse
    text: Dict[str, Any] = field(default_factory=lambda: {"name": "tiny"})
    dropout: float = 0.1


@dataclass
class TextRegressionConfig(RunConfig):
    task: str = "text_regression"
    data: TextRegData = field(default_factory=TextRegData)
    model: TextRegModel = field(default_factory=TextRegModel)


def _finite(column: str) -> Callable[[Any, str, int], float]:
    """A target cell → float; an empty, non-numeric, NaN or infinite cell is an error naming its row."""

    def parse(v: Any, where: str, row: int) -> float:
        try:
            y = float(v)
        except (TypeError, ValueError):
            y = float("nan")
        if not math.isfinite(y):
            raise DataError(f"{where}: row {row}: column {column!r} must hold a finite number, got {v!r}")
        return y

    return parse


def _targets(ds: Any, d: TextRegData, where: str) -> list[float]:
    """The target column as finite floats (``_finite``), rows named as in the file."""
    rows = rows_of(ds) or range(len(ds))
    parse = _finite(d.target_column)
    return [parse(v, where, row) for row, v in zip(rows, column(ds, d.target_column))]


def _encode(d: TextRegData, tokenizer: Any, where: str, max_len: int,
            counters: dict[str, int]) -> Callable[[dict[str, list], list[int]], dict[str, list]]:
    """A batch of rows → token ids and finite targets (``_finite``; rows named as in the file)."""
    parse = _finite(d.target_column)

    def fn(batch: dict[str, list], rows: list[int]) -> dict[str, list]:
        ids, kept = tokenize(tokenizer, batch[d.text_column], max_len, where, False, counters, rows)
        y = [parse(v, where, row) for row, v in zip(rows, batch[d.target_column])]
        return {TEXT: ids, LABELS: [y[r] for r in kept]}

    return fn


def prepare(cfg: TextRegressionConfig, train: bool = True) -> Prepared:
    """Learn the target scale (and a tokenizer if needed), build the encoder and head; the tokenised tables come
    from the preprocessing cache (``tasks/cached_tables.py``) when the same data was prepared the same way before."""
    d = cfg.data
    if d.streaming:
        return _prepare_stream(cfg, train)
    given, learn = (d.target_mean, d.target_std), d.target_mean is None
    raw = once(lambda: load_splits(cfg, train, learn=learn))
    spec = cfg.model.text
    corpus = [t for t in raw()[0][d.text_column] if t] if learned_tokenizer(spec) and raw()[0] is not None else None
    encoder = build_encoder(TEXT_ENCODERS, spec, "model.text", corpus=corpus)
    save_tokenizer(spec, encoder.tokenizer, cfg.output_dir)
    max_len = min(d.max_length, encoder.max_length)

    def build(cache: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        (train_ds, eval_ds), counts, tables = raw(), {}, {}
        if d.target_mean is None:
            if train_ds is None:
                raise ValueError("data.target_mean is empty and there is no data.train_file to learn the target scale "
                                 "from")
            y = _targets(train_ds, d, d.train_file)
            d.target_mean, d.target_std = statistics.fmean(y), statistics.pstdev(y) or 1.0
        for split, ds, where in (("train", train_ds if train else None, d.train_file), ("eval", eval_ds, eval_name(d))):
            if ds is not None:
                require_columns(ds, [d.text_column, d.target_column], where)
                tables[split] = map_table(ds, _encode(d, encoder.tokenizer, where, max_len, counts), cache, split,
                                          features({TEXT: "int32[]", LABELS: "float64"}))
        return tables, {"target_mean": d.target_mean, "target_std": d.target_std, "counters": counts}

    settings = {"recipe": "text_regression", "text_column": d.text_column, "target_column": d.target_column,
                "target_scale": given, "max_length": max_len, "tokenizer": tokenizer_identity(encoder.tokenizer)}
    tables, info, _ = prepare_tables(cfg, train, learn, settings, build)
    d.target_mean, d.target_std, counters = info["target_mean"], info["target_std"], {}
    split_counts(info, counters)
    task = RegressionTask(encoder, cfg.model.dropout, d.target_mean, d.target_std)
    tr, ev = tables.get("train"), tables.get("eval")
    return Prepared(task, tr, ev, TextCollator(encoder.tokenizer.pad_token_id), lengths(tr, TEXT), lengths(ev, TEXT),
                    counters)


def _scale(shards: list[Any], column: str) -> tuple[float, float]:
    """(mean, population sd or 1) of a target column over shards, in one bounded pass (shifted sums)."""
    parse, n, s1, s2, shift = _finite(column), 0, 0.0, 0.0, None
    for shard in shards:
        row = 0
        for batch in column_batches([shard], column):
            y = np.array([parse(v, shard.name, row + k) for k, v in enumerate(batch)], dtype=np.float64)
            row += len(batch)
            if len(y):
                shift = y[0] if shift is None else shift
                n, s1, s2 = n + len(y), s1 + float((y - shift).sum()), s2 + float(((y - shift) ** 2).sum())
    if n == 0:
        raise DataError(f"{shards[0].name if shards else 'data.train_file'}: no rows to learn the target scale from")
    mean = shift + s1 / n
    return float(mean), math.sqrt(max(s2 / n - (s1 / n) ** 2, 0.0)) or 1.0


def _prepare_stream(cfg: TextRegressionConfig, train: bool) -> Prepared:
    """``data.streaming``: the target scale from one pass over the target column, texts tokenised per sample."""
    d = cfg.data
    shards = S.shards_of(cfg, train)
    if d.target_mean is None:
        if not shards[0]:
            raise ValueError("data.target_mean is empty and there is no data.train_file to learn the target scale from")
        d.target_mean, d.target_std = _scale(shards[0], d.target_column)
    encoder = build_encoder(TEXT_ENCODERS, cfg.model.text, "model.text",
                            corpus=S.stream_corpus(shards[0], lambda r: r.get(d.text_column)) if train else None)
    save_tokenizer(cfg.model.text, encoder.tokenizer, cfg.output_dir)
    task = RegressionTask(encoder, cfg.model.dropout, d.target_mean, d.target_std)
    fn = TextRow(encoder.tokenizer, d.text_column, min(d.max_length, encoder.max_length), False, d.target_column,
                 _finite(d.target_column))
    tr, ev = S.streams(cfg, shards, fn, train, length=text_length)
    return Prepared(task, tr, ev, CountingCollate(TextCollator(encoder.tokenizer.pad_token_id)))


@torch.no_grad()
def predict(cfg: TextRegressionConfig, prepared: Prepared, texts: list[str]) -> list[dict[str, Any]]:
    """The predicted number for each raw text."""
    enc = prepared.task.encoder
    ids, _ = tokenize(enc.tokenizer, texts, min(cfg.data.max_length, enc.max_length), "input", False, {})
    preds = prepared.task(prepared.collate([{TEXT: i} for i in ids]))["predictions"]  # (B,)
    return [{"text": t, "prediction": float(p)} for t, p in zip(texts, preds)]


TextRegression = recipe(TextRegressionConfig, prepare, predict)
