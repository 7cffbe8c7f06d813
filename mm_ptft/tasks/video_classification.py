"""Video classification: any video encoder (``model.video``: a transformers video model, or an image encoder per
frame with temporal pooling) + a linear head, on tables or class folders of video files decoded with PyAV."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Optional

import torch

from mm_ptft.config import ConfigError, RunConfig, SkipBadSamples, SplitData, StreamingData
from mm_ptft.contracts import Prepared
from mm_ptft.data.generated import video as _video  # noqa: F401  (registers the moving_shapes generator)
from mm_ptft.data.folders import FolderSpec
from mm_ptft.data.image import ImageAugment
from mm_ptft.data.stream import CountingCollate
from mm_ptft.data.table_cache import CacheFields
from mm_ptft.data.tables import LabelMap, seeded_split
from mm_ptft.data.text import FollowEpoch
from mm_ptft.data.video import VideoCollator, VideoDataset, VideoSampling, check_video, make_clip, video_table, \
    video_transforms
from mm_ptft.data.video_stream import VideoRow
from mm_ptft.encoders.base import build_encoder
from mm_ptft.encoders.video import VIDEO_ENCODERS, VideoEncoder
from mm_ptft.heads.classification import ClassificationTask
from mm_ptft.tasks import recipe
from mm_ptft.tasks import streaming as S
from mm_ptft.tasks.cached_tables import prepare_tables, split_counts, store_splits
from mm_ptft.tasks.common import learn_labels, needs_train_file
from mm_ptft.types import LABELS, VIDEO, VIDEO_MASK


def _no_flip() -> ImageAugment:
    # a horizontal flip turns "left" into "right": off unless a dataset's labels survive it
    return ImageAugment(scale=[0.5, 1.0], hflip=0.0)


@dataclass
class VideoClsData(SplitData, StreamingData, SkipBadSamples, CacheFields):
    """train_file: CSV/TSV/JSON/JSONL/parquet with video paths (relative to the file), or a folder with a sub-folder
    per class; data.generate: {name: moving_shapes, ...} for generated clips; with ``streaming: true`` shards (a
    glob, brace range or directory) of WebDataset tars ({key}.mp4 + {key}.cls) or tables, read lazily."""

    path_column: str = "path"
    label_column: str = "label"
    labels: list[str] = field(default_factory=list)  # empty: learned from the training data
    verify_videos: bool = True  # decode every file once at load time (finds corrupt/truncated files early)
    sampling: VideoSampling = field(default_factory=VideoSampling)
    augment: ImageAugment = field(default_factory=_no_flip)  # one crop/flip/colour draw per clip

    def folder(self) -> FolderSpec:
        """A folder of class sub-folders: video paths and class names in the path and label columns."""
        return FolderSpec("video", self.path_column, self.label_column)


@dataclass
class VideoClsModel:
    RANGES: ClassVar[dict[str, str]] = {"dropout": "[0, 1)", "label_smoothing": "[0, 1)"}  # checked by config.parse
    video: Dict[str, Any] = field(default_factory=lambda: {"name": "tiny_3d"})  # only a name: YAML merges into it
    dropout: float = 0.0
    label_smoothing: float = 0.0


@dataclass
class VideoClassificationConfig(RunConfig):
    task: str = "video_classification"
    data: VideoClsData = field(default_factory=VideoClsData)
    model: VideoClsModel = field(default_factory=VideoClsModel)


def check_frames(encoder: VideoEncoder, sampling: VideoSampling) -> None:
    """A fixed-length architecture must get clips of its length (a ConfigError naming both keys otherwise)."""
    if encoder.num_frames is not None and encoder.num_frames != sampling.num_frames:
        raise ConfigError(f"data.sampling.num_frames={sampling.num_frames}, but model.video takes clips of "
                          f"{encoder.num_frames} frames (its config's num_frames): set one to the other")


def _tables(cfg: VideoClassificationConfig, train: bool, counters: dict[str, int]
            ) -> tuple[Optional[tuple], Optional[tuple]]:
    """(paths, raw labels) of the training and evaluation data (a seeded split without ``data.eval_file``)."""
    d = cfg.data
    tr = ev = None
    if needs_train_file(d, train, learn=not d.labels):
        tr = video_table(d.train_file, "data.train_file", d.path_column, d.label_column, counters)
    if d.eval_file:
        ev = video_table(d.eval_file, "data.eval_file", d.path_column, d.label_column, counters)
    elif tr is not None:
        keep, held = seeded_split(tr[0], d.eval_fraction, cfg.seed)
        tr, ev = ([tr[0][i] for i in keep], [tr[1][i] for i in keep]), ([tr[0][i] for i in held], [tr[1][i] for i in held])
    return tr, ev


def _checked(table: tuple, labels: LabelMap, d: VideoClsData, where: str, counters: dict[str, int]) -> dict[str, list]:
    """The usable videos of a (paths, raw labels) table and their class indices, as table columns (``FEATURES``)."""
    paths, raw = table
    kept = [i for i, p in enumerate(paths) if check_video(i, p, where, d.skip_bad_samples, counters,
                                                          d.verify_videos, d.sampling.max_pixels)]
    return {"path": [paths[i] for i in kept], LABELS: labels.encode([raw[i] for i in kept], where, kept)}


FEATURES = {"path": "string", LABELS: "int64"}


def _dataset(records: Optional[Any], cfg: VideoClassificationConfig, pre: Any, train: bool) -> Optional[VideoDataset]:
    """Clips of a checked table (memory-mapped when it came from the cache) sampled and decoded on access."""
    if records is None:
        return None
    d = cfg.data
    ds = VideoDataset(records.view("path"), records.view(LABELS), video_transforms(pre, d.augment, train), d.sampling,
                      train, d.skip_bad_samples, cfg.seed)
    ds.cache = records.cache  # check-data reports the entry
    return ds


def prepare(cfg: VideoClassificationConfig, train: bool = True) -> Prepared:
    """Learn labels, build the encoder (its preprocessing and clip length) and the head; the checked video tables
    (which files decode, their class indices) come from the preprocessing cache when the same data was checked the
    same way before (``tasks/cached_tables.py``), else the tables or folders are read and every video checked;
    ``data.streaming`` names the shards instead."""
    d = cfg.data
    d.sampling.check()
    if d.streaming:
        return _prepare_stream(cfg, train)
    learn = not d.labels

    def build(cache: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        counters: dict[str, int] = {}
        tr, ev = _tables(cfg, train, counters)
        labels = learn_labels(d, {d.label_column: tr[1]} if tr is not None else None)
        check = lambda table, where: _checked(table, labels, d, where, counters)  # noqa: E731
        return store_splits(cfg, (tr, ev), train, check, cache, FEATURES), {"labels": d.labels, "counters": counters}

    settings = {"recipe": "video_classification", "path_column": d.path_column, "label_column": d.label_column,
                "labels": list(d.labels), "skip_bad": d.skip_bad_samples, "verify_videos": d.verify_videos,
                "max_pixels": d.sampling.max_pixels}
    tables, info, _ = prepare_tables(cfg, train, learn, settings, build)
    d.labels, counters = list(info["labels"]), {}
    split_counts(info, counters)
    labels = learn_labels(d, None)
    task = _task(cfg, labels)
    train_ds = _dataset(tables.get("train"), cfg, task.encoder.preprocess, True)
    eval_ds = _dataset(tables.get("eval"), cfg, task.encoder.preprocess, False)
    callbacks = [FollowEpoch(train_ds)] if train_ds is not None else []  # clips seeded by (seed, epoch, index)
    return Prepared(task, train_ds, eval_ds, CountingCollate(VideoCollator()), counters=counters, callbacks=callbacks)


def _task(cfg: VideoClassificationConfig, labels: LabelMap) -> ClassificationTask:
    """The video encoder (checked against ``data.sampling``) and a linear head over ``labels``."""
    encoder = build_encoder(VIDEO_ENCODERS, cfg.model.video, "model.video")
    check_frames(encoder, cfg.data.sampling)
    return ClassificationTask(encoder, len(labels), cfg.model.dropout, cfg.model.label_smoothing, cfg.data.labels)


def _prepare_stream(cfg: VideoClassificationConfig, train: bool) -> Prepared:
    """``data.streaming``: WebDataset tars (``{key}.mp4`` + ``{key}.cls``) or table shards, each clip sampled,
    decoded, checked and transformed per sample in the loader workers (``data.video_stream.VideoRow``)."""
    d = cfg.data
    shards = S.shards_of(cfg, train)
    labels = S.stream_labels(d, shards[0])
    task = _task(cfg, labels)

    def row(is_train: bool) -> VideoRow:
        return VideoRow(video_transforms(task.encoder.preprocess, d.augment, is_train), d.sampling, is_train,
                        d.path_column, d.label_column, labels, d.skip_bad_samples, cfg.seed)

    train_ds, eval_ds = S.streams(cfg, shards, row(True), train, eval_fn=row(False))
    return Prepared(task, train_ds, eval_ds, CountingCollate(VideoCollator()), counters={})


def predict(cfg: VideoClassificationConfig, prepared: Prepared, paths: list[str]) -> list[dict[str, Any]]:
    """Label and per-class scores for each video file (the evaluation sampling: centred, fixed)."""
    task = prepared.task
    transform = video_transforms(task.encoder.preprocess, cfg.data.augment, train=False)
    clips = [make_clip(p, cfg.data.sampling, transform, train=False) for p in paths]
    device = next(task.parameters()).device
    batch = {VIDEO: torch.stack([c[0] for c in clips]).to(device),  # (B, T, 3, H, W)
             VIDEO_MASK: torch.stack([c[1] for c in clips]).to(device)}  # (B, T)
    probs = torch.softmax(task(batch)["logits"].float(), -1)  # (B, C)
    names = cfg.data.labels
    return [{"path": p, "label": names[int(q.argmax())], "scores": {n: float(s) for n, s in zip(names, q)}}
            for p, q in zip(paths, probs)]


VideoClassification = recipe(VideoClassificationConfig, prepare, predict)
