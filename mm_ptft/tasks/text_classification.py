"""Text classification: any text encoder + a linear head; CSV/JSON/JSONL/parquet via HF datasets."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Optional

from mm_ptft.config import RehearsalConfig, RunConfig, SkipBadSamples, SplitData, StreamingData
from mm_ptft.contracts import Prepared
from mm_ptft.data.tables import LabelMap, column, require_columns, rows_of
from mm_ptft.data.stream import CountingCollate
from mm_ptft.data.text import AugmentedText, FollowEpoch, Records, TextAugment, TextAugmenter, TextCollator, \
    TextRow, lengths_of, text_length, tokenize
from mm_ptft.encoders import TEXT_ENCODERS, build_encoder
from mm_ptft.heads.classification import ClassificationTask
from mm_ptft.tasks import recipe
from mm_ptft.tasks import streaming as S
from mm_ptft.tasks.common import add_rehearsal, eval_name, few_shot_table, learn_labels, load_splits, save_tokenizer
from mm_ptft.types import LABELS, TEXT


@dataclass
class TextClsData(SplitData, StreamingData, SkipBadSamples):
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


def _records(ds: Any, cfg: TextClassificationConfig, tokenizer: Any, labels: LabelMap, where: str,
             max_length: int, counters: dict[str, int]) -> Records:
    d = cfg.data
    require_columns(ds, [d.text_column, d.label_column], where)
    rows = rows_of(ds)
    ids, kept = tokenize(tokenizer, column(ds, d.text_column), max_length, where, d.skip_bad_samples, counters, rows)
    raw = column(ds, d.label_column)
    y = labels.encode([raw[r] for r in kept], where, [rows[r] for r in kept] if rows else None)
    return Records([{TEXT: i, LABELS: c} for i, c in zip(ids, y)])


def prepare(cfg: TextClassificationConfig, train: bool = True) -> Prepared:
    """Load data, learn labels (and a tokenizer if needed), build the encoder and head."""
    d = cfg.data
    if d.streaming:
        return _prepare_stream(cfg, train)
    train_ds, eval_ds = load_splits(cfg, train, learn=not d.labels)
    counters: dict[str, int] = {}
    if train_ds is not None:
        require_columns(train_ds, [d.text_column, d.label_column], d.train_file)
        train_ds = add_rehearsal(cfg, train_ds, ["text_column", "label_column"], counters) if train else train_ds
    labels = learn_labels(d, train_ds)  # with rehearsal: the union of both tasks' labels
    train_ds = few_shot_table(d, train_ds, cfg.seed, counters, train)  # a tokenizer learned below sees these only
    corpus = train_ds[d.text_column] if train_ds is not None else None
    encoder = build_encoder(TEXT_ENCODERS, cfg.model.text, "model.text",
                            corpus=[t for t in corpus if t] if corpus else None)
    save_tokenizer(cfg.model.text, encoder.tokenizer, cfg.output_dir)
    task = ClassificationTask(encoder, len(labels), cfg.model.dropout, cfg.model.label_smoothing, d.labels)
    max_len = min(d.max_length, encoder.max_length)
    tr = _records(train_ds, cfg, encoder.tokenizer, labels, d.train_file, max_len, counters) if train_ds and train else None
    ev = _records(eval_ds, cfg, encoder.tokenizer, labels, eval_name(d), max_len, counters) \
        if eval_ds is not None else None
    collate = TextCollator(encoder.tokenizer.pad_token_id, d.pad_to_multiple_of)
    lengths, callbacks = lengths_of(tr), []
    if tr is not None and d.augment.active:
        tr = AugmentedText(tr, TextAugmenter(d.augment, encoder.tokenizer), cfg.seed)
        counters["augmented_samples_per_epoch"] = tr.count()
        callbacks.append(FollowEpoch(tr))
    return Prepared(task, tr, ev, collate, lengths, lengths_of(ev), counters, callbacks)


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
