"""Text classification: any text encoder + a linear head; CSV/JSON/JSONL/parquet via HF datasets."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, Optional

from mm_ptft.config import RehearsalConfig, RunConfig, SkipBadSamples, SplitData, StreamingData
from mm_ptft.contracts import Prepared
from mm_ptft.data.stream import CountingCollate
from mm_ptft.data.table_cache import CacheFields, features, tokenizer_identity
from mm_ptft.data.tables import LabelMap, require_columns
from mm_ptft.data.text import AugmentedText, FollowEpoch, TextAugment, TextAugmenter, TextCollator, TextRow, \
    text_length, tokenize
from mm_ptft.encoders import TEXT_ENCODERS, build_encoder
from mm_ptft.heads.classification import ClassificationTask
from mm_ptft.tasks import recipe
from mm_ptft.tasks import streaming as S
from mm_ptft.tasks.cached_tables import learned_tokenizer, lengths, map_table, once, prepare_tables, split_counts
from mm_ptft.tasks.common import add_rehearsal, eval_name, few_shot_table, learn_labels, load_splits, save_tokenizer
from mm_ptft.types import LABELS, TEXT


@dataclass
class TextClsData(SplitData, StreamingData, SkipBadSamples, CacheFields):
    """train_file: a file; with streaming also a glob, brace range, directory of shards or hf:<dataset>
    (streaming: records shuffled and length-bucketed together per shuffle_block)."""

    RANGES: ClassVar[dict[str, str]] = {"max_length": ">0", "pad_to_multiple_of": ">0",
                                        "labels_per_class": ">=0"}  # with SplitData's: checked by config.parse
    text_column: str = "text"
    label_column: str = "label"
    max_length: int = 128
    labels: list[str] = field(default_factory=list)  # empty: learned from the training file
    labels_per_class: int = 0  # > 0: few-shot, train on K seeded rows per class of the training split
    pad_to_multiple_of: int = 1
    augment: TextAugment = field(default_factory=TextAugment)  # token noise on training samples (off by default)
    rehearsal: Optional[RehearsalConfig] = None  # {source: RUN_DIR | file, fraction, max_samples}: earlier rows mixed in


@dataclass
class TextClsModel:
    RANGES: ClassVar[dict[str, str]] = {"dropout": "[0,1)", "label_smoothing": "[0,1)"}  # checked by config.parse
    text: Dict[str, Any] = field(default_factory=lambda: {"name": "tiny"})
    dropout: float = 0.1
    label_smoothing: float = 0.0


@dataclass
class TextClassificationConfig(RunConfig):
    task: str = "text_classification"
    data: TextClsData = field(default_factory=TextClsData)
    model: TextClsModel = field(default_factory=TextClsModel)


def _encoder(cfg: TextClassificationConfig, raw: Any) -> Any:
    """The text encoder; a vocabulary learned at run time is learned from the training texts (the raw table)."""
    spec, d = cfg.model.text, cfg.data
    corpus = None
    if learned_tokenizer(spec) and raw()[0] is not None:
        corpus = [t for t in raw()[0][d.text_column] if t] or None
    encoder = build_encoder(TEXT_ENCODERS, spec, "model.text", corpus=corpus)
    save_tokenizer(spec, encoder.tokenizer, cfg.output_dir)
    return encoder


def _encode(d: TextClsData, tokenizer: Any, labels: LabelMap, where: str, max_length: int,
            counters: dict[str, int]) -> Callable[[dict[str, list], list[int]], dict[str, list]]:
    """A batch of rows → token ids and class indices (an empty text or unknown label names its file row)."""

    def fn(batch: dict[str, list], rows: list[int]) -> dict[str, list]:
        ids, kept = tokenize(tokenizer, batch[d.text_column], max_length, where, d.skip_bad_samples, counters, rows)
        raw = batch[d.label_column]
        return {TEXT: ids, LABELS: labels.encode([raw[r] for r in kept], where, [rows[r] for r in kept])}

    return fn


FEATURES = {TEXT: "int32[]", LABELS: "int64"}


def prepare(cfg: TextClassificationConfig, train: bool = True) -> Prepared:
    """Learn labels (and a tokenizer if needed), build the encoder and head; the tokenised tables come from the
    preprocessing cache (``tasks/cached_tables.py``) when the same data was prepared the same way before."""
    d = cfg.data
    if d.streaming:
        return _prepare_stream(cfg, train)
    given_labels, learn = list(d.labels), not d.labels

    @once
    def raw() -> tuple[Any, Any, dict[str, int]]:
        counts: dict[str, int] = {}
        train_ds, eval_ds = load_splits(cfg, train, learn=learn)
        if train_ds is not None:
            require_columns(train_ds, [d.text_column, d.label_column], d.train_file)
            train_ds = add_rehearsal(cfg, train_ds, ["text_column", "label_column"], counts) if train else train_ds
        learn_labels(d, train_ds)  # with rehearsal: the union of both tasks' labels
        train_ds = few_shot_table(d, train_ds, cfg.seed, counts, train)  # a tokenizer learned below sees these only
        return train_ds, eval_ds, counts

    encoder = _encoder(cfg, raw)
    max_len = min(d.max_length, encoder.max_length)

    def build(cache: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        train_ds, eval_ds, counts = raw()
        labels, tables = LabelMap(d.labels), {}
        for split, ds, where in (("train", train_ds if train else None, d.train_file), ("eval", eval_ds, eval_name(d))):
            if ds is not None:
                require_columns(ds, [d.text_column, d.label_column], where)
                tables[split] = map_table(ds, _encode(d, encoder.tokenizer, labels, where, max_len, counts), cache,
                                          split, features(FEATURES))
        return tables, {"labels": d.labels, "counters": counts}

    settings = {"recipe": "text_classification", "text_column": d.text_column, "label_column": d.label_column,
                "labels": given_labels, "labels_per_class": d.labels_per_class, "skip_bad": d.skip_bad_samples,
                "max_length": max_len, "tokenizer": tokenizer_identity(encoder.tokenizer)}
    tables, info, _ = prepare_tables(cfg, train, learn, settings, build)
    d.labels, counters = list(info["labels"]), {}
    split_counts(info, counters)
    labels = learn_labels(d, None)
    task = ClassificationTask(encoder, len(labels), cfg.model.dropout, cfg.model.label_smoothing, d.labels)
    tr, ev = tables.get("train"), tables.get("eval")
    collate = TextCollator(encoder.tokenizer.pad_token_id, d.pad_to_multiple_of)
    train_lengths, callbacks = lengths(tr, TEXT), []
    if tr is not None and d.augment.active:
        tr = AugmentedText(tr, TextAugmenter(d.augment, encoder.tokenizer), cfg.seed)
        counters["augmented_samples_per_epoch"] = tr.count()
        callbacks.append(FollowEpoch(tr))
    return Prepared(task, tr, ev, collate, train_lengths, lengths(ev, TEXT), counters, callbacks)


def _prepare_stream(cfg: TextClassificationConfig, train: bool) -> Prepared:
    """``data.streaming``: labels from the label column alone, texts tokenised per sample in the loader workers."""
    d = cfg.data
    S.unsupported(labels_per_class=d.labels_per_class > 0, augment=d.augment.active, rehearsal=d.rehearsal is not None)
    shards = S.shards_of(cfg, train)
    labels = S.stream_labels(d, shards[0])
    corpus = S.stream_corpus(shards[0], lambda r: r.get(d.text_column)) if train else None
    encoder = build_encoder(TEXT_ENCODERS, cfg.model.text, "model.text", corpus=corpus)
    save_tokenizer(cfg.model.text, encoder.tokenizer, cfg.output_dir)
    task = ClassificationTask(encoder, len(labels), cfg.model.dropout, cfg.model.label_smoothing, d.labels)
    fn = TextRow(encoder.tokenizer, d.text_column, min(d.max_length, encoder.max_length), d.skip_bad_samples,
                 d.label_column, labels.encode_one)
    tr, ev = S.streams(cfg, shards, fn, train, length=text_length)
    collate = CountingCollate(TextCollator(encoder.tokenizer.pad_token_id, d.pad_to_multiple_of))
    return Prepared(task, tr, ev, collate, None, None, {})


def predict(cfg: TextClassificationConfig, prepared: Prepared, texts: list[str]) -> list[dict[str, Any]]:
    """Label and per-class scores for each raw text."""
    import torch

    enc = prepared.task.encoder
    counters: dict[str, int] = {}
    ids, _ = tokenize(enc.tokenizer, texts, min(cfg.data.max_length, enc.max_length), "input", False, counters)
    batch = prepared.collate([{TEXT: i} for i in ids])
    probs = torch.softmax(prepared.task(batch)["logits"].float(), -1)  # (B, C)
    names = cfg.data.labels
    return [{"text": t, "label": names[int(p.argmax())], "scores": {n: float(s) for n, s in zip(names, p)}}
            for t, p in zip(texts, probs)]


TextClassification = recipe(TextClassificationConfig, prepare, predict)
