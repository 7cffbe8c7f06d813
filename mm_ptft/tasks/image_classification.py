"""Image classification: any image encoder + a linear head, with config-driven augmentation,
MixUp/CutMix soft labels and optional EMA weights evaluated alongside the live ones."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, Optional

import torch

from mm_ptft.config import RehearsalConfig, RunConfig, SkipBadSamples, SplitData, StreamingData
from mm_ptft.contracts import Prepared
import mm_ptft.data.generated.images  # noqa: F401  (registers the image_shapes generator)
from mm_ptft.data.folders import FolderSpec
from mm_ptft.data.image import ImageAugment, ImageCollator, ImageDataset, batch_mix, classification_ops, \
    classification_transforms, image_table, scan_images
from mm_ptft.data.image_device import DeviceDecode, EncodedReader, check_decode_on
from mm_ptft.data.image_stream import ImageRow
from mm_ptft.data.stream import CountingCollate
from mm_ptft.data.table_cache import CacheFields
from mm_ptft.data.tables import LabelMap, seeded_split
from mm_ptft.encoders.base import build_encoder
from mm_ptft.encoders.image import IMAGE_ENCODERS
from mm_ptft.heads.image_classification import EmaCallback, ImageClassificationTask
from mm_ptft.tasks import recipe
from mm_ptft.tasks import streaming as S
from mm_ptft.tasks.cached_tables import prepare_tables, split_counts, store_splits
from mm_ptft.tasks.common import check_rehearsed_labels, earlier_config, few_shot_rows, learn_labels, \
    needs_train_file, rehearsal_picks, resolve_files
from mm_ptft.types import IMAGE, LABELS


@dataclass
class ImageClsData(SplitData, StreamingData, SkipBadSamples, CacheFields):
    """train_file: CSV/TSV/JSON/JSONL/parquet with image paths (relative to the file), or a class-folder root;
    with streaming also WebDataset tars ({key}.jpg + {key}.cls) or table shards: a glob, brace range, directory,
    hf:<dataset>."""

    RANGES: ClassVar[dict[str, str]] = {"labels_per_class": ">=0"}  # with SplitData's: checked by config.parse
    path_column: str = "path"
    label_column: str = "label"
    labels: list[str] = field(default_factory=list)  # empty: learned from the training data
    labels_per_class: int = 0  # > 0: few-shot, train on K seeded rows per class of the training split
    verify_images: bool = True  # decode every image once at load time (finds corrupt/truncated files early)
    augment: ImageAugment = field(default_factory=ImageAugment)
    decode_on: str = "worker"  # worker | device: loader workers read JPEG bytes; decode + augment on the train device
    rehearsal: Optional[RehearsalConfig] = None  # {source: RUN_DIR | file, fraction, max_samples}: earlier rows mixed in

    def folder(self) -> FolderSpec:
        """A folder of class sub-folders: image paths and class names in the path and label columns."""
        return FolderSpec("image", self.path_column, self.label_column)


@dataclass
class ImageClsModel:
    RANGES: ClassVar[dict[str, str]] = {
        "dropout": "[0, 1)", "label_smoothing": "[0, 1)", "ema_decay": "[0, 1)"
    }  # checked by config.parse
    image: Dict[str, Any] = field(default_factory=lambda: {"name": "tiny_cnn"})
    dropout: float = 0.0
    label_smoothing: float = 0.0
    ema_decay: float = 0.0  # > 0: keep EMA weights (timm ModelEmaV3) and report ema_* metrics


@dataclass
class ImageClassificationConfig(RunConfig):
    task: str = "image_classification"
    data: ImageClsData = field(default_factory=ImageClsData)
    model: ImageClsModel = field(default_factory=ImageClsModel)


def _split(cfg: ImageClassificationConfig, train: bool,
           counters: dict[str, int]) -> tuple[Optional[tuple], Optional[tuple]]:
    """(paths, raw labels, file rows) of the training and evaluation data; the rows (0-based, header
    excluded) survive the seeded split, so messages name the row in the user's file. Files a folder's listing
    skipped are counted in ``counters``."""
    d = cfg.data
    tr = ev = None
    if needs_train_file(d, train, learn=not d.labels):
        tr = _with_rows(image_table(d.train_file, "data.train_file", d.path_column, d.label_column, counters))
    if d.eval_file:
        ev = _with_rows(image_table(d.eval_file, "data.eval_file", d.path_column, d.label_column, counters))
    elif tr is not None:
        keep, held = seeded_split(tr[0], d.eval_fraction, cfg.seed)
        tr, ev = _pick(tr, keep), _pick(tr, held)
    return tr, ev


def _with_rows(table: tuple[list, list]) -> tuple[list, list, list]:
    return table[0], table[1], list(range(len(table[0])))


def _pick(table: tuple[list, list, list], idx: list[int]) -> tuple[list, list, list]:
    return tuple([column[i] for i in idx] for column in table)  # type: ignore[return-value]


def _rehearsed(cfg: ImageClassificationConfig, tr: tuple, counters: dict[str, int]) -> tuple:
    """``tr`` plus a seeded sample of the earlier task's training images named by ``data.rehearsal`` (a run: its
    training split; a table or class folder: all of it), counted as ``rehearsal_samples``."""
    d = cfg.data
    earlier = earlier_config(cfg, ["path_column", "label_column"])
    if earlier is not None:
        resolve_files(earlier.data, earlier.output_dir)
        rows = _split(earlier, True, counters)[0]
    else:
        rows = _with_rows(image_table(d.rehearsal.source, "data.rehearsal.source", d.path_column, d.label_column))
    picked = _pick(rows, rehearsal_picks(d.rehearsal, len(rows[0])))
    check_rehearsed_labels(cfg, picked[1], tr[1])
    counters["rehearsal_samples"] = len(picked[0])
    return tuple(ours + theirs for ours, theirs in zip(tr, picked))


def _checked(table: tuple, labels: LabelMap, d: ImageClsData, where: str, counters: dict[str, int]) -> dict[str, list]:
    """The usable images of ``(paths, raw labels, rows)`` and their class indices (a bad file named or counted)."""
    paths, raw, rows = table
    kept = scan_images(paths, where, d.skip_bad_samples, counters, decode=d.verify_images, rows=rows)
    return {"path": [paths[i] for i in kept], LABELS: labels.encode([raw[i] for i in kept], where,
                                                                    [rows[i] for i in kept])}


def _dataset(records: Optional[Any], transform: Callable, d: ImageClsData) -> Optional[ImageDataset]:
    """Images of a checked table (``records``: memory-mapped when it came from the cache) decoded on access."""
    if records is None:
        return None
    ds = ImageDataset(records.view("path"), records.view(LABELS), skip_bad=d.skip_bad_samples, **_image_args(transform))
    ds.cache = records.cache  # check-data reports the entry
    return ds


def _image_args(transform: Callable) -> dict[str, Any]:
    """How a dataset or stream row makes its image: ``transform`` of the decoded image, or the encoded bytes
    (``read``) where ``datasets`` was handed an ``EncodedReader`` (``data.decode_on=device``)."""
    return {"transform": None, "read": transform} if isinstance(transform, EncodedReader) else {"transform": transform}


def prepare(cfg: ImageClassificationConfig, train: bool = True) -> Prepared:
    """Learn labels, build the encoder (its preprocessing), the head and transforms; the checked image tables (which
    files decode, their class indices) come from the preprocessing cache when the same data was checked the same
    way before (``tasks/cached_tables.py``), else the tables or folders are read and every image checked."""
    d = cfg.data
    check_decode_on(d.decode_on)
    if d.streaming:
        return _prepare_stream(cfg, train)
    learn = not d.labels

    def build(cache: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        counters: dict[str, int] = {}
        tr, ev = _split(cfg, train, counters)
        if train and tr is not None and d.rehearsal is not None:
            tr = _rehearsed(cfg, tr, counters)  # the label set is the union of both tasks'
        labels = learn_labels(d, {d.label_column: tr[1]} if tr is not None else None)
        few = few_shot_rows(d, tr[1], cfg.seed, counters) if tr is not None and train else None
        tr = _pick(tr, few) if few is not None else tr  # before scanning: a K-shot run decodes only its K images
        check = lambda table, where: _checked(table, labels, d, where, counters)  # noqa: E731
        return store_splits(cfg, (tr, ev), train, check, cache, FEATURES), {"labels": d.labels, "counters": counters}

    settings = {"recipe": "image_classification", "path_column": d.path_column, "label_column": d.label_column,
                "labels": list(d.labels), "labels_per_class": d.labels_per_class, "skip_bad": d.skip_bad_samples,
                "verify_images": d.verify_images}
    tables, info, _ = prepare_tables(cfg, train, learn, settings, build)
    d.labels, counters = list(info["labels"]), {}
    split_counts(info, counters)
    labels = learn_labels(d, None)

    def datasets(train_tf: Callable, eval_tf: Callable) -> tuple[Any, Any]:
        return _dataset(tables.get("train"), train_tf, d), _dataset(tables.get("eval"), eval_tf, d)

    return _build(cfg, labels, datasets, counters)


FEATURES = {"path": "string", LABELS: "int64"}


def _prepare_stream(cfg: ImageClassificationConfig, train: bool) -> Prepared:
    """``data.streaming``: images decoded, checked and transformed per sample in the loader workers."""
    d = cfg.data
    S.unsupported(labels_per_class=d.labels_per_class > 0, rehearsal=d.rehearsal is not None)
    shards = S.shards_of(cfg, train)
    labels = S.stream_labels(d, shards[0])

    def streams(train_tf: Callable, eval_tf: Callable) -> tuple[Any, Any]:
        row = lambda tf: ImageRow(path_column=d.path_column, label_column=d.label_column, labels=labels,  # noqa
                                  skip_bad=d.skip_bad_samples, seed=cfg.seed, **_image_args(tf))
        return S.streams(cfg, shards, row(train_tf), train, eval_fn=row(eval_tf))

    return _build(cfg, labels, streams, {})


def _build(cfg: ImageClassificationConfig, labels: LabelMap, datasets: Callable, counters: dict[str, int]) -> Prepared:
    """The encoder (its preprocessing), head, transforms, and the (train, eval) data that
    ``datasets(train transform, eval transform)`` makes with them (map-style or streams)."""
    d = cfg.data
    encoder = build_encoder(IMAGE_ENCODERS, cfg.model.image, "model.image")
    m = cfg.model
    task = ImageClassificationTask(encoder, len(labels), m.dropout, m.label_smoothing,
                                   batch_mix(d.augment, len(labels)), m.ema_decay, d.labels)
    ops = {train: classification_ops(encoder.preprocess, d.augment, train) for train in (True, False)}
    if d.decode_on == "device":  # the workers read bytes; the collate's device stage decodes and augments
        train_ds, eval_ds = datasets(EncodedReader(True), EncodedReader(False))
        collate: Any = DeviceDecode(ImageCollator(), ops, d.skip_bad_samples)
    else:
        train_ds, eval_ds = datasets(ops[True].compose(), ops[False].compose())
        collate = ImageCollator()
    callbacks = [EmaCallback(task)] if m.ema_decay > 0 else []
    return Prepared(task, train_ds, eval_ds, CountingCollate(collate), counters=counters, callbacks=callbacks)


def predict(cfg: ImageClassificationConfig, prepared: Prepared, paths: list[str]) -> list[dict[str, Any]]:
    """Label and per-class scores for each image file."""
    from mm_ptft.data.image import load_image

    task = prepared.task
    transform = classification_transforms(task.encoder.preprocess, cfg.data.augment, train=False)
    device = next(task.parameters()).device
    images = torch.stack([transform(load_image(p)) for p in paths]).to(device)  # (B, 3, H, W)
    probs = torch.softmax(task({IMAGE: images})["logits"].float(), -1)  # (B, C)
    names = cfg.data.labels
    return [{"path": p, "label": names[int(q.argmax())], "scores": {n: float(s) for n, s in zip(names, q)}}
            for p, q in zip(paths, probs)]


ImageClassification = recipe(ImageClassificationConfig, prepare, predict)
