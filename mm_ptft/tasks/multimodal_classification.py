"""Multimodal classification: any subset of text/image/audio encoders → a fusion module → a head.

A row may lack a modality (an empty cell in the manifest): that sample's tokens for it are masked
out of the fusion (``<modality>_present`` in the batch). A path that is given but unreadable is
bad input, not a missing modality: an error naming the row, or a counted skip.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Optional

import torch

from mm_ptft.config import ConfigError, RunConfig, SkipBadSamples, SplitData, StreamingData
from mm_ptft.contracts import Prepared
from mm_ptft.data.folders import FolderSpec
from mm_ptft.data.video import VideoSampling
from mm_ptft.data.multimodal import MIN_AUDIO_SECONDS, MODALITIES, Columns, MediaConfig
from mm_ptft.data.paired_stream import LabeledRecord, PairedRecord
from mm_ptft.data.stream import CountingCollate
from mm_ptft.data.table_cache import CacheFields, features, tokenizer_identity
from mm_ptft.data.multimodal_rows import MultimodalRows, PresenceCollator, labeled_rows
from mm_ptft.data.tables import ROW, LabelMap, load_table
from mm_ptft.encoders.fusion import build_fusion
from mm_ptft.heads.multimodal import MultimodalClassifier
from mm_ptft.tasks import recipe
from mm_ptft.tasks import streaming as S
from mm_ptft.tasks.cached_tables import learned_tokenizer, once, prepare_tables, split_counts, store_columns
from mm_ptft.tasks.common import eval_name, few_shot_table, learn_labels
from mm_ptft.tasks.pretrain_common import EncoderSpecs, build_encoders, load_tables, media_config
from mm_ptft.types import LABELS


@dataclass
class MMClsData(SplitData, StreamingData, SkipBadSamples, CacheFields):
    """train_file: a manifest; with streaming also WebDataset tars / manifest shards: a glob, brace range."""

    RANGES: ClassVar[dict[str, str]] = {
        "max_length": ">0", "max_audio_seconds": ">0", "min_audio_seconds": ">=0",
        "labels_per_class": ">=0"}  # with SplitData's: checked by config.parse
    modalities: list[str] = field(default_factory=lambda: ["audio", "image", "text"])
    text_column: str = "caption"
    image_column: str = "image"
    audio_column: str = "audio"
    video_column: str = "video"
    label_column: str = "label"
    labels: list[str] = field(default_factory=list)  # empty: learned from the training file
    labels_per_class: int = 0  # > 0: few-shot, train on K seeded rows per class of the training split
    max_length: int = 64
    max_audio_seconds: float = 10.0
    min_audio_seconds: float = MIN_AUDIO_SECONDS  # shorter clips are dropped and counted
    sampling: VideoSampling = field(default_factory=VideoSampling)  # which frames of a video a sample holds (eval draw)

    def folder(self) -> Optional[FolderSpec]:
        """With one modality that is media (image, audio or video): a folder of class sub-folders of its files."""
        if len(self.modalities) != 1 or self.modalities[0] == "text":
            return None
        m = self.modalities[0]
        return FolderSpec(m, getattr(self, f"{m}_column"), self.label_column)


@dataclass
class MMClsModel(EncoderSpecs):
    RANGES: ClassVar[dict[str, str]] = {
        "dropout": "[0, 1)", "label_smoothing": "[0, 1)", "modality_dropout": "[0, 1)"
    }  # checked by config.parse
    fusion: Dict[str, Any] = field(default_factory=lambda: {"name": "gated", "out_dim": 128})
    dropout: float = 0.1
    label_smoothing: float = 0.0
    modality_dropout: float = 0.0  # training: hide each present modality of a sample with this probability


@dataclass
class MultimodalClassificationConfig(RunConfig):
    task: str = "multimodal_classification"
    data: MMClsData = field(default_factory=MMClsData)
    model: MMClsModel = field(default_factory=MMClsModel)


def prepare(cfg: MultimodalClassificationConfig, train: bool = True) -> Prepared:
    """Learn labels (and a tokenizer if needed), build the encoders, fusion and head; the checked rows (token ids,
    usable media paths, class indices) come from the preprocessing cache when the same data was prepared the same
    way before (``tasks/cached_tables.py``), else the manifests are read and every media file checked."""
    d = cfg.data
    bad = sorted(set(d.modalities) - set(MODALITIES))
    if bad or not d.modalities:
        raise ConfigError(f"data.modalities={d.modalities}: choose a non-empty subset of {list(MODALITIES)}")
    if d.streaming:
        return _prepare_stream(cfg, train)
    given_labels, with_text = list(d.labels), "text" in d.modalities
    learn = not d.labels or (with_text and learned_tokenizer(cfg.model.text or {}))

    @once
    def raw() -> tuple[Any, Any, dict[str, int]]:
        counts: dict[str, int] = {}
        train_tab, eval_tab = load_tables(cfg, train or not d.labels)
        learn_labels(d, train_tab)
        return few_shot_table(d, train_tab, cfg.seed, counts, train), eval_tab, counts  # a tokenizer sees these only

    corpus = None
    if with_text and learned_tokenizer(cfg.model.text or {}) and raw()[0] is not None:
        corpus = [t for t in raw()[0][d.text_column] if t]
    encoders = build_encoders(cfg.model, d.modalities, cfg.output_dir, corpus)
    media = media_config(encoders, d)  # type: ignore[arg-type]
    tok = getattr(encoders.get("text"), "tokenizer", None)
    max_len = min(d.max_length, getattr(encoders.get("text"), "max_length", d.max_length))

    def build(cache: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        train_tab, eval_tab, counts = raw()
        labels, tables = LabelMap(d.labels), {}
        for split, tab, path in (("train", train_tab if train else None, d.train_file),
                                 ("eval", eval_tab, eval_name(d))):
            if tab is not None:
                rows = labeled_rows(tab, path, d, labels, tok, max_len, media, counts)
                tables[split] = store_columns({k: [r.get(k) for r in rows] for k in ROW_FEATURES(d)}, cache, split,
                                              features(ROW_FEATURES(d)))
        return tables, {"labels": d.labels, "counters": counts}

    settings = {"recipe": "multimodal_classification", "labels": given_labels, "max_length": max_len,
                "data": {k: getattr(d, k) for k in ROW_KEYS}, "media": dataclasses.asdict(media),
                "tokenizer": tokenizer_identity(tok) if tok is not None else None}
    tables, info, _ = prepare_tables(cfg, train, learn, settings, build)
    d.labels, counters = list(info["labels"]), {}
    split_counts(info, counters)
    task = _task(cfg, encoders, learn_labels(d, None))
    blank = tok("")["input_ids"] if tok is not None else []

    def split(name: str, where: str) -> Optional[MultimodalRows]:
        records = tables.get(name)
        if records is None:
            return None
        ds = MultimodalRows(records, d.modalities, media, blank, where)
        ds.cache = records.cache  # check-data reports the entry
        return ds

    tr, ev = split("train", d.train_file), split("eval", eval_name(d))
    lengths = (lambda ds: _text_lengths(ds.rows) if ds is not None and with_text else None)
    collate = PresenceCollator(tok.pad_token_id if tok is not None else 0)
    return Prepared(task, tr, ev, collate, lengths(tr), lengths(ev), counters)


ROW_KEYS = ("modalities", "text_column", "image_column", "audio_column", "video_column", "label_column",
            "labels_per_class", "skip_bad_samples", "max_audio_seconds", "min_audio_seconds")  # what a row depends on


def ROW_FEATURES(d: MMClsData) -> dict[str, str]:  # noqa: N802 - a table schema, as the other recipes' FEATURES
    """The columns of a checked row: its file row number, each modality (token ids or a media path), the class."""
    kinds = {"text": "int32[]", "image": "string", "audio": "string", "video": "string"}
    return {ROW: "int64", **{m: kinds[m] for m in d.modalities}, LABELS: "int64"}


def _text_lengths(records: Any) -> Any:
    """Token counts per row for length bucketing (1 where a row has no text), read as one Arrow column."""
    import pyarrow.compute as pc

    return pc.max_element_wise(pc.fill_null(pc.list_value_length(records.table.data.column("text")), 1), 1).to_numpy()


def _task(cfg: MultimodalClassificationConfig, encoders: dict[str, Any], labels: LabelMap) -> MultimodalClassifier:
    fusion = build_fusion(cfg.model.fusion, {m: e.out_dim for m, e in encoders.items()})
    return MultimodalClassifier(encoders, fusion, len(labels), cfg.model.dropout, cfg.model.label_smoothing,
                                cfg.model.modality_dropout, cfg.data.labels)


def _prepare_stream(cfg: MultimodalClassificationConfig, train: bool) -> Prepared:
    """``data.streaming``: each record decoded and checked in the loader workers (``LabeledRecord``)."""
    d = cfg.data
    S.unsupported(labels_per_class=d.labels_per_class > 0)
    shards = S.shards_of(cfg, train)
    labels = S.stream_labels(d, shards[0])
    cols = Columns(d.text_column, d.image_column, d.audio_column, d.label_column, d.video_column)
    reader = PairedRecord(d.modalities, cols, MediaConfig())
    corpus = S.stream_corpus(shards[0], reader.text_of) if train and "text" in d.modalities else None
    encoders = build_encoders(cfg.model, d.modalities, cfg.output_dir, corpus)
    tok = getattr(encoders.get("text"), "tokenizer", None)
    max_len = min(d.max_length, getattr(encoders.get("text"), "max_length", d.max_length))

    def fn(is_train: bool) -> LabeledRecord:  # training: random seeded video clips; eval: centred
        return LabeledRecord(d.modalities, cols, media_config(encoders, d), tok, max_len, labels,  # type: ignore
                             tok("")["input_ids"] if tok is not None else [], d.skip_bad_samples, is_train, cfg.seed)

    tr, ev = S.streams(cfg, shards, fn(True), train, eval_fn=fn(False))
    collate = CountingCollate(PresenceCollator(tok.pad_token_id if tok is not None else 0))
    return Prepared(_task(cfg, encoders, labels), tr, ev, collate)


@torch.no_grad()
def predict(cfg: MultimodalClassificationConfig, prepared: Prepared, inputs: list[str]) -> list[dict[str, Any]]:
    """Inputs are manifest files (same columns as training; the label column may be absent)."""
    d, towers = cfg.data, prepared.task.towers
    tok = getattr(towers["text"], "tokenizer", None) if "text" in towers else None
    media = media_config(dict(towers), d)  # type: ignore[arg-type]  # from the encoders, as in training
    labels, blank = LabelMap(d.labels), tok("")["input_ids"] if tok is not None else []
    rows_out = []
    for path in inputs:
        tab = load_table(path, "input")
        if d.label_column not in tab.column_names:
            tab = tab.add_column(d.label_column, [d.labels[0]] * len(tab))
        ds = MultimodalRows(labeled_rows(tab, path, d, labels, tok, d.max_length, media, {}), d.modalities, media,
                            blank, path)
        for i in range(len(ds)):
            probs = prepared.task(prepared.collate([ds[i]]))["logits"].float().softmax(-1)[0]  # (C,)
            rows_out.append({"input": path, "row": ds.rows[i][ROW], "label": d.labels[int(probs.argmax())],
                             "scores": {n: float(p) for n, p in zip(d.labels, probs)}})
    return rows_out


MultimodalClassification = recipe(MultimodalClassificationConfig, prepare, predict)
