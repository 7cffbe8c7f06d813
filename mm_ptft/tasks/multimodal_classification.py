"""Multimodal classification: any subset of text/image/audio encoders → a fusion module → a head.

A row may lack a modality (an empty cell in the manifest): that sample's tokens for it are masked
out of the fusion (``<modality>_present`` in the batch). A path that is given but unreadable is
bad input, not a missing modality: an error naming the row, or a counted skip.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from mm_ptft.config import ConfigError, RunConfig
from mm_ptft.data.multimodal import (MIN_AUDIO_SECONDS, MODALITIES, MediaConfig, MultimodalCollator, load_audio,
                                     load_image, media_path, usable_media)
from mm_ptft.data.tables import ROW, DataError, LabelMap, load_table, require_columns
from mm_ptft.data.text import tokenize
from mm_ptft.encoders.base import Encoder
from mm_ptft.fusion import build_fusion
from mm_ptft.heads.classification import ClassificationHead, classification_outputs
from mm_ptft.metrics import ClassificationMetrics
from mm_ptft.tasks import TASKS
from mm_ptft.tasks.base import Prepared, Task
from mm_ptft.tasks.pretrain_common import EncoderSpecs, build_encoders, load_tables, media_config
from mm_ptft.types import AUDIO, IMAGE, LABELS, TEXT


@dataclass
class MMClsData:
    train_file: str = ""
    eval_file: str = ""  # empty: a seeded split of train_file (eval_fraction)
    eval_fraction: float = 0.1
    generate: Optional[Dict[str, Any]] = None
    modalities: list[str] = field(default_factory=lambda: ["audio", "image", "text"])
    text_column: str = "caption"
    image_column: str = "image"
    audio_column: str = "audio"
    label_column: str = "label"
    labels: list[str] = field(default_factory=list)  # empty: learned from the training file
    max_length: int = 64
    max_audio_seconds: float = 10.0
    min_audio_seconds: float = MIN_AUDIO_SECONDS  # shorter clips are dropped and counted
    skip_bad_samples: bool = False


@dataclass
class MMClsModel(EncoderSpecs):
    fusion: Dict[str, Any] = field(default_factory=lambda: {"name": "gated", "out_dim": 128})
    dropout: float = 0.1
    label_smoothing: float = 0.0
    modality_dropout: float = 0.0  # training: hide each present modality of a sample with this probability


@dataclass
class MultimodalClassificationConfig(RunConfig):
    task: str = "multimodal_classification"
    data: MMClsData = field(default_factory=MMClsData)
    model: MMClsModel = field(default_factory=MMClsModel)


class MultimodalClassifier(Task):
    """Encoders → per-sample-masked fusion → linear head; cross-entropy."""

    main_metric = "accuracy"

    def __init__(self, encoders: dict[str, Encoder], fusion: nn.Module, num_classes: int, dropout: float = 0.1,
                 label_smoothing: float = 0.0, modality_dropout: float = 0.0) -> None:
        super().__init__()
        self.towers = nn.ModuleDict(encoders)
        self.fusion = fusion
        self.head = ClassificationHead(fusion.out_dim, num_classes, dropout)
        self.num_classes, self.label_smoothing, self.modality_dropout = num_classes, label_smoothing, modality_dropout

    def _presence(self, batch: dict[str, Any], names: list[str], B: int, device: torch.device) -> torch.Tensor:
        """(B, M) bool: which modality each sample has; in training, modality dropout hides some."""
        present = torch.stack([batch.get(f"{m}_present", torch.ones(B, dtype=torch.bool, device=device)).bool()
                               for m in names], 1)  # (B, M)
        if self.training and self.modality_dropout > 0:
            keep = torch.rand(present.shape, device=device) >= self.modality_dropout  # (B, M)
            kept = present & keep
            present = torch.where(kept.any(1, keepdim=True), kept, present)  # never hide every modality
        return present

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        names = [m for m in sorted(self.towers) if m in batch]
        B = len(batch[names[0]])
        present = self._presence(batch, names, B, batch[names[0]].device)  # (B, M)
        embeddings, masks = {}, {}
        for j, m in enumerate(names):
            out = self.towers[m](batch)
            tokens = out.tokens if out.tokens is not None else out.pooled.unsqueeze(1)  # (B, N, D)
            mask = out.mask if out.tokens is not None and out.mask is not None else \
                torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)  # (B, N)
            embeddings[m], masks[m] = tokens, mask.bool() & present[:, j:j + 1]
        logits = self.head(self.fusion(embeddings, masks))  # (B, C)
        return classification_outputs(logits, batch, self.label_smoothing if self.training else 0.0)

    def build_metrics(self) -> ClassificationMetrics:
        return ClassificationMetrics(self.num_classes)

    def encoders(self) -> dict[str, nn.Module]:
        return dict(self.towers.items())


class MultimodalRows(Dataset):
    """Rows with any subset of modalities; absent ones are filled with placeholders and flagged."""

    def __init__(self, rows: list[dict[str, Any]], modalities: Sequence[str], media: MediaConfig, blank_text: list[int],
                 where: str) -> None:
        self.rows, self.modalities, self.media, self.blank_text, self.where = rows, list(modalities), media, blank_text, where

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.rows[i]
        item: dict[str, Any] = {LABELS: row[LABELS]} if LABELS in row else {}
        for m in self.modalities:
            value = row.get(m)
            item[f"{m}_present"] = value is not None
            if m == "text":
                item[TEXT] = value if value is not None else self.blank_text
                continue
            try:
                if m == "image":
                    item[IMAGE] = load_image(value, self.media) if value else torch.zeros(3, self.media.image_size,
                                                                                         self.media.image_size)
                else:
                    item[AUDIO] = load_audio(value, self.media) if value else torch.zeros(self.media.sample_rate // 10)
            except Exception as err:  # PIL / soundfile raise many types: name the file and row
                raise DataError(f"{self.where}: row {row[ROW]}: could not decode {value} ({type(err).__name__}: {err})")
        return item


class PresenceCollator(MultimodalCollator):
    """The multimodal collator plus ``<modality>_present`` (B,) flags."""

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = super().__call__(items)
        for key in [k for k in items[0] if k.endswith("_present")]:
            batch[key] = torch.tensor([it[key] for it in items])  # (B,)
        return batch


def _rows(ds: Any, path: str, d: MMClsData, labels: LabelMap, tokenizer: Any, max_len: int, media: MediaConfig,
          counters: dict[str, int]) -> list[dict[str, Any]]:
    """One dict per usable row: token ids / absolute media paths (None where absent), label. Media files
    get the unimodal recipes' checks (``usable_media``): an error naming the row, or a counted skip."""
    cols = {m: getattr(d, f"{m}_column") for m in d.modalities}
    require_columns(ds, [*cols.values(), d.label_column], path)
    base = os.path.dirname(os.path.abspath(path))
    out, raw_labels = [], []
    for k, r in enumerate(ds):
        row: dict[str, Any] = {ROW: r.get(ROW, k)}
        for m, col in cols.items():
            v = r[col]
            if v is None or not str(v).strip():
                row[m] = None
                counters[f"missing_{m}"] = counters.get(f"missing_{m}", 0) + 1
            elif m == "text":
                row[m] = v  # tokenised below, in one batch
            else:
                p = media_path(base, v)
                if not usable_media(m, row[ROW], p, path, media, d.skip_bad_samples, counters):
                    break
                row[m] = p
        else:
            if all(row[m] is None for m in cols):
                raise DataError(f"{path}: row {row[ROW]}: every modality {sorted(cols)} is empty")
            out.append(row)
            raw_labels.append(r[d.label_column])
    with_text = [row for row in out if row.get("text") is not None]
    if with_text:
        ids, _ = tokenize(tokenizer, [row["text"] for row in with_text], max_len, path, False, counters)
        for row, i in zip(with_text, ids):
            row["text"] = i
    for row, y in zip(out, labels.encode(raw_labels, path, [row[ROW] for row in out])):
        row[LABELS] = y
    return out


@TASKS.register("multimodal_classification")
class MultimodalClassification:
    config_cls = MultimodalClassificationConfig

    @staticmethod
    def prepare(cfg: MultimodalClassificationConfig, train: bool = True) -> Prepared:
        d = cfg.data
        bad = sorted(set(d.modalities) - set(MODALITIES))
        if bad or not d.modalities:
            raise ConfigError(f"data.modalities={d.modalities}: choose a non-empty subset of {list(MODALITIES)}")
        train_tab, eval_tab = load_tables(d, cfg.output_dir, cfg.seed, train or not d.labels)  # type: ignore[arg-type]
        if not d.labels:
            d.labels = [str(x) for x in LabelMap.from_values(train_tab[d.label_column]).names]
        labels = LabelMap(d.labels)
        corpus = [t for t in train_tab[d.text_column] if t] if train_tab is not None and "text" in d.modalities else None
        encoders = build_encoders(cfg.model, d.modalities, cfg.output_dir, corpus)
        media = media_config(encoders, d)  # type: ignore[arg-type]
        fusion = build_fusion(cfg.model.fusion, {m: e.out_dim for m, e in encoders.items()})
        task = MultimodalClassifier(encoders, fusion, len(labels), cfg.model.dropout, cfg.model.label_smoothing,
                                    cfg.model.modality_dropout)
        tok = getattr(encoders.get("text"), "tokenizer", None)
        max_len = min(d.max_length, getattr(encoders.get("text"), "max_length", d.max_length))
        blank = tok("")["input_ids"] if tok is not None else []
        counters: dict[str, int] = {}

        def split(tab: Any, path: str) -> Optional[MultimodalRows]:
            if tab is None:
                return None
            return MultimodalRows(_rows(tab, path, d, labels, tok, max_len, media, counters), d.modalities, media, blank,
                                  path)

        tr = split(train_tab, d.train_file) if train else None
        ev = split(eval_tab, d.eval_file or f"{d.train_file} (eval split)")
        lengths = (lambda ds: [len(r["text"]) if r.get("text") else 1 for r in ds.rows] if ds and "text" in d.modalities
                   else None)
        collate = PresenceCollator(tok.pad_token_id if tok is not None else 0)
        return Prepared(task, tr, ev, collate, lengths(tr), lengths(ev), counters)

    @staticmethod
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
            ds = MultimodalRows(_rows(tab, path, d, labels, tok, d.max_length, media, {}), d.modalities, media, blank,
                                path)
            for i in range(len(ds)):
                probs = prepared.task(prepared.collate([ds[i]]))["logits"].float().softmax(-1)[0]  # (C,)
                rows_out.append({"input": path, "row": ds.rows[i][ROW], "label": d.labels[int(probs.argmax())],
                                 "scores": {n: float(p) for n, p in zip(d.labels, probs)}})
        return rows_out
