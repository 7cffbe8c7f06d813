"""Streamed paired samples (``data.stream`` map function): a WebDataset sample or a manifest row → the
item ``PairedDataset`` gives (``text`` ids, ``image`` (3, S, S), ``audio`` (T,) or (F, N), ``video`` (T, 3, S, S)
with ``video_mask``, ``labels``).

A WebDataset sample follows the open_clip / img2dataset layout: ``{key}.txt`` (caption), one image
(``jpg``/``jpeg``/``png``/``webp``/``bmp``), one audio clip (``flac``/``wav``/``mp3``/``ogg``/``opus``), one video
(``mp4``/``webm``/``mkv``/``avi``/``mov``/``m4v``: its clip random in training, seeded per sample) and an
optional label (``{key}.cls``, or ``label_column`` in ``{key}.json``). A manifest row has the caption
column and media paths relative to the shard's folder. Media are decoded and checked when the sample is
read (undecodable, empty, NaN/Inf audio: an error naming the shard and sample, or a counted skip with
``skip_bad``; clips shorter than ``media.min_audio_seconds`` are dropped and counted)."""
from __future__ import annotations

import io
import json
import os
from typing import Any, Callable, Optional, Sequence

import torch

from mm_ptft.data.multimodal import Columns, MediaConfig, image_input, load_audio, load_video, media_path
from mm_ptft.data.shards import Shard
from mm_ptft.data.stream import sample_seed
from mm_ptft.data.tables import DataError, LabelMap
from mm_ptft.data.text import tokenize
from mm_ptft.types import AUDIO, IMAGE, LABELS, REFERENCE, TEXT, VIDEO, VIDEO_MASK

EXTS = {"image": ("jpg", "jpeg", "png", "webp", "bmp"), "audio": ("flac", "wav", "mp3", "ogg", "opus"),
        "video": ("mp4", "webm", "mkv", "avi", "mov", "m4v")}


def is_tar_sample(record: dict[str, Any]) -> bool:
    return "__key__" in record


def tar_label(record: dict[str, Any], label_column: str) -> Any:
    """A WebDataset sample's label: ``{key}.cls``, else ``label_column`` of ``{key}.json``."""
    if "cls" in record:
        return record["cls"].decode("utf-8").strip()
    return json.loads(record["json"]).get(label_column) if "json" in record else None


def media_source(shard: Shard, row: int, record: dict[str, Any], modality: str, column: str) -> tuple[Any, str]:
    """Where a record's ``modality`` is — a tar sample's member (a ``BytesIO``) or a table cell's path (relative to
    the shard's folder) — and how errors name the sample; DataError when it is missing or empty."""
    if is_tar_sample(record):
        name = f"{shard.name}: sample {record['__key__']!r}"
        ext = next((e for e in EXTS[modality] if e in record), None)
        if ext is None:
            raise DataError(f"{name}: no {modality} ({'/'.join(EXTS[modality])}); it has {sorted(record)}")
        return io.BytesIO(record[ext]), name
    name = f"{shard.name}: row {row}"
    if column not in record:
        raise DataError(f"{name}: missing column {column!r}; it has {sorted(record)}")
    path = media_path(shard.path, record[column])
    if path is None:
        raise DataError(f"{name}: empty {column!r} cell")
    return path, name


def decode_media(load: Callable[[Any], Any], source: Any, name: str) -> Any:
    """``load(source)``; a DataError is raised again naming the sample (``name``); a file object's message starts
    with its repr, so only its reason is kept."""
    try:
        return load(source)
    except DataError as err:
        text = str(err)
        if text.startswith(name):
            raise
        raise DataError(f"{name}: {text if isinstance(source, str) else text.split(': ', 1)[-1]}") from err


class PairedRecord:
    """Map function of a paired stream: the requested ``modalities`` of one record, checked as the manifest
    path checks them."""

    def __init__(self, modalities: Sequence[str], cols: Columns, media: MediaConfig, tokenizer: Any = None,
                 max_length: int = 64, labels: Optional[LabelMap] = None, skip_bad: bool = False,
                 train: bool = False, seed: int = 0, overlong: str = "truncate", references: bool = False) -> None:
        """``train``: a video's clip is drawn at random (seeded per sample: seed, pass, shard, row), else centred."""
        self.modalities, self.cols, self.media, self.tokenizer = list(modalities), cols, media, tokenizer
        self.max_length, self.labels, self.skip_bad = max_length, labels, skip_bad
        self.train, self.seed, self.pass_no = train, seed, 0
        #: a caption over ``max_length`` tokens: ``data.overlong_text`` (truncate | skip | error), as ``build_paired``
        #: applies it to a manifest, counted in the same counters; ``references``: keep the raw caption too
        self.overlong, self.references = overlong, references

    def set_pass(self, pass_no: int) -> None:
        """Called by the stream at each pass: clips differ between passes, never between runs."""
        self.pass_no = pass_no

    def text_of(self, record: dict[str, Any]) -> Any:
        value = record.get("txt") if is_tar_sample(record) else record.get(self.cols.text)
        return value.decode("utf-8") if isinstance(value, bytes) else value

    def label_of(self, record: dict[str, Any]) -> Any:
        return tar_label(record, self.cols.label) if is_tar_sample(record) else record.get(self.cols.label)

    def _media(self, shard: Shard, row: int, record: dict[str, Any], modality: str) -> Any:
        """The decoded media of ``modality``; DataError naming the shard and sample when missing or bad."""
        source, name = media_source(shard, row, record, modality, getattr(self.cols, modality))
        if modality == "image":
            return decode_media(lambda s: image_input(s, name, self.media), source, name)
        if modality == "video":
            with sample_seed(self.seed, self.pass_no, os.path.basename(shard.path), shard.index, row):
                return decode_media(lambda s: load_video(s, self.media, self.train), source, name)
        return decode_media(lambda s: load_audio(s if isinstance(s, str) else (s, name), self.media), source, name)

    def __call__(self, shard: Shard, row: int, record: dict[str, Any], counters: dict[str, int]) -> Optional[dict]:
        item: dict[str, Any] = {}
        for m in ("image", "audio", "video"):
            if m not in self.modalities:
                continue
            try:
                value = self._media(shard, row, record, m)
            except DataError:
                if not self.skip_bad:
                    raise
                counters[f"skipped_bad_{m}"] = counters.get(f"skipped_bad_{m}", 0) + 1
                return None
            if m == "video":
                item[VIDEO], item[VIDEO_MASK] = value  # (T, 3, S, S), (T,)
            else:
                item[IMAGE if m == "image" else AUDIO] = value
        if AUDIO in item and self.media.n_mels <= 0 and \
                item[AUDIO].shape[-1] < self.media.min_audio_seconds * self.media.sample_rate:
            counters["dropped_too_short"] = counters.get("dropped_too_short", 0) + 1
            return None
        if "text" in self.modalities:
            caption = self.text_of(record)
            where = f"{shard.name}: sample {record['__key__']!r}" if is_tar_sample(record) else shard.name
            ids, kept = tokenize(self.tokenizer, [caption], self.max_length, where, self.skip_bad, counters,
                                 [row], self.overlong)
            if not kept:
                return None
            item[TEXT] = ids[0]
            if self.references:
                item[REFERENCE] = str(caption)
        if self.labels is not None:
            item[LABELS] = self.labels.encode([self.label_of(record)], shard.name, [row])[0]
        return item


class LabeledRecord(PairedRecord):
    """Map function of a streamed multimodal-classification split: like ``PairedRecord``, but a modality may be
    absent (an empty cell, or no such file in a tar sample): it gets a placeholder and ``<modality>_present``
    False (counted ``missing_<modality>``), as ``data.multimodal_rows`` does; the label is required."""

    def __init__(self, modalities: Sequence[str], cols: Columns, media: MediaConfig, tokenizer: Any,
                 max_length: int, labels: LabelMap, blank_text: list[int], skip_bad: bool = False,
                 train: bool = False, seed: int = 0) -> None:
        super().__init__(modalities, cols, media, tokenizer, max_length, labels, skip_bad, train, seed)
        self.blank_text = blank_text

    def _absent(self, record: dict[str, Any], modality: str) -> bool:
        if is_tar_sample(record):
            return not any(e in record for e in (EXTS[modality] if modality != "text" else ("txt",)))
        value = record.get(getattr(self.cols, modality))
        return value is None or not str(value).strip()

    def __call__(self, shard: Shard, row: int, record: dict[str, Any], counters: dict[str, int]) -> Optional[dict]:
        absent = {m for m in self.modalities if self._absent(record, m)}
        if len(absent) == len(self.modalities):
            raise DataError(f"{shard.name}: row {row}: every modality {sorted(self.modalities)} is empty")
        for m in sorted(absent):
            counters[f"missing_{m}"] = counters.get(f"missing_{m}", 0) + 1
        present = [m for m in self.modalities if m not in absent]
        reader = PairedRecord(present, self.cols, self.media, self.tokenizer, self.max_length, self.labels,
                              self.skip_bad, self.train, self.seed)
        reader.set_pass(self.pass_no)
        item = reader(shard, row, record, counters)
        if item is None:
            return None
        placeholders = {"text": (TEXT, self.blank_text), "image": (IMAGE, torch.zeros(3, self.media.image_size,
                                                                                        self.media.image_size)),
                        "audio": (AUDIO, torch.zeros(self.media.sample_rate // 10))}
        frames = self.media.video_sampling.num_frames
        if "video" in absent:
            item[VIDEO_MASK] = torch.zeros(frames, dtype=torch.bool)  # (T,)
        placeholders["video"] = (VIDEO, torch.zeros(frames, 3, self.media.video_size, self.media.video_size))
        for m in self.modalities:
            item[f"{m}_present"] = m not in absent
            if m in absent:
                key, value = placeholders[m]
                item[key] = value
        return item
