"""Config sections and preparation steps shared by the pretraining recipes
(``pretrain_contrastive``, ``pretrain_masked``, ``pretrain_joint``)."""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Mapping, Optional, Sequence

import torch

import mm_ptft.data.generated.multimodal  # noqa: F401  (registers the shapes_captions generator)
import mm_ptft.objectives.contrastive  # noqa: F401  (registers clip, siglip)
import mm_ptft.objectives.captioning  # noqa: F401  (registers captioning)
import mm_ptft.objectives.causal  # noqa: F401  (registers clm)
import mm_ptft.objectives.matching  # noqa: F401  (registers itm)
import mm_ptft.objectives.masked  # noqa: F401  (registers mlm, mae, masked_spectrogram, conditioned_mlm)
import mm_ptft.objectives.sentence  # noqa: F401  (registers nsp, sop)
from mm_ptft.config import ConfigError, SkipBadSamples, SplitData, StreamingData
from mm_ptft.data.folders import EXTS
from mm_ptft.data.image_device import DeviceDecode, check_decode_on
from mm_ptft.data.multimodal import (MIN_AUDIO_SECONDS, Columns, MediaConfig, MultimodalCollator, PairedDataset,
                                     build_paired, paired_ops)
from mm_ptft.data.table_cache import CacheFields, features, tokenizer_identity
from mm_ptft.data.tables import ROW, LabelMap
from mm_ptft.data.video import VideoSampling
from mm_ptft.types import AUDIO, IMAGE, LABELS, REFERENCE, TEXT, VIDEO, VIDEO_MASK
from mm_ptft.encoders import TEXT_ENCODERS, build_encoder
from mm_ptft.encoders.base import Encoder, one_clip_per_model
from mm_ptft.objectives import OBJECTIVES, Objective
from mm_ptft.tasks.cached_tables import learned_tokenizer, once, prepare_tables, split_counts, splits, store_columns
from mm_ptft.tasks.common import eval_name, load_splits, save_tokenizer

log = logging.getLogger("mm_ptft")


@dataclass
class PretrainData(SplitData, StreamingData, SkipBadSamples, CacheFields):
    """A paired manifest (CSV/JSONL/parquet): caption, image path, audio path, video path, optional label."""

    RANGES: ClassVar[dict[str, str]] = {
        "max_length": ">0", "max_audio_seconds": ">0", "min_audio_seconds": ">=0"
    }  # checked by config.parse
    text_column: str = "caption"
    image_column: str = "image"
    audio_column: str = "audio"
    video_column: str = "video"
    label_column: str = "label"  # class names for zero-shot eval; '' when the data has none
    # zero-shot prompts, '{}' = class name; several are averaged per class (CLIP's prompt ensembling);
    # empty: no zero-shot evaluation
    prompt_templates: list[str] = field(default_factory=lambda: ["a picture of a {}"])
    labels: list[str] = field(default_factory=list)  # empty: learned from the data
    max_length: int = 64
    max_audio_seconds: float = 10.0
    min_audio_seconds: float = MIN_AUDIO_SECONDS  # shorter clips are dropped and counted
    decode_on: str = "worker"  # worker | device: loader workers read JPEG bytes; decode + resize on the train device
    overlong_text: str = "truncate"  # a caption over max_length tokens: truncate | skip | error (counted when not error)
    sampling: VideoSampling = field(default_factory=VideoSampling)  # which frames of a video a sample holds


@dataclass
class EncoderSpecs:
    """One encoder spec per modality (``{name: <registry key>, ...}`` or ``name_or_path: <dir>``)."""

    text: Optional[Dict[str, Any]] = None
    image: Optional[Dict[str, Any]] = None
    audio: Optional[Dict[str, Any]] = None
    video: Optional[Dict[str, Any]] = None


def columns(d: PretrainData) -> Columns:
    return Columns(d.text_column, d.image_column, d.audio_column, d.label_column, d.video_column)


def load_tables(cfg: Any, train: bool) -> tuple[Any, Any]:
    """(train table or None, eval table or None) of ``cfg.data``, generating data first where configured."""
    tables = load_splits(cfg, train)
    if train and tables == (None, None):
        raise ConfigError("data.train_file is empty and data.generate is not set")
    return tables  # without training: rebuilding a trained model alone (labels and tokenizer are in the run)


def build_encoders(specs: EncoderSpecs, needed: Sequence[str], output_dir: str,
                   corpus: Optional[Sequence[str]]) -> dict[str, Encoder]:
    """The encoders of ``needed`` modalities; a text encoder without a tokenizer learns one on ``corpus``."""
    from mm_ptft.encoders.audio import AUDIO_ENCODERS
    from mm_ptft.encoders.image import IMAGE_ENCODERS
    from mm_ptft.encoders.video import VIDEO_ENCODERS

    registries = {"text": TEXT_ENCODERS, "image": IMAGE_ENCODERS, "audio": AUDIO_ENCODERS, "video": VIDEO_ENCODERS}
    out: dict[str, Encoder] = {}
    with one_clip_per_model():  # open_clip image + text towers of one model: one CLIP created, not two
        for m in sorted(set(needed)):
            _build_one(specs, m, out, output_dir, corpus, registries)
    return out


def _build_one(specs: EncoderSpecs, m: str, out: dict[str, Encoder], output_dir: str,
               corpus: Optional[Sequence[str]], registries: Mapping[str, Any]) -> None:
    """Build the ``m`` encoder into ``out`` (a text encoder learns its tokenizer on ``corpus`` if it has none)."""
    spec = getattr(specs, m)
    if spec is None:
        raise ConfigError(f"model.{m} is not set, but the objectives/data need a {m} encoder "
                          f"(e.g. model.{m}={{name: tiny}})")
    runtime = {"corpus": [t for t in corpus if t]} if m == "text" and corpus else {}
    out[m] = build_encoder(registries[m], spec, f"model.{m}", **runtime)
    if m == "text":
        save_tokenizer(spec, out[m].tokenizer, output_dir)


def media_config(encoders: Mapping[str, Encoder], d: PretrainData) -> MediaConfig:
    """Decoding settings taken from the encoders themselves (input size, normalisation, sample rate)."""
    decode_on = getattr(d, "decode_on", "worker")  # the multimodal-classification data section has none
    check_decode_on(decode_on)
    media = MediaConfig(max_audio_seconds=d.max_audio_seconds, min_audio_seconds=d.min_audio_seconds,
                        decode_on=decode_on)
    pre = getattr(encoders.get("image"), "preprocess", None)
    if pre is not None:
        media.image_size, media.image_mean, media.image_std = pre.size[0], list(pre.mean), list(pre.std)
        media.image_interpolation = pre.interpolation
    video = getattr(encoders.get("video"), "preprocess", None)
    if video is not None:
        media.video_size, media.video_mean, media.video_std = video.size[0], list(video.mean), list(video.std)
    sampling = getattr(d, "sampling", None)  # a data section without video keys keeps the default
    if sampling is not None:
        sampling.check()
        media.video_sampling = sampling
    audio = encoders.get("audio")
    if audio is not None:
        media.sample_rate = int(getattr(audio, "sample_rate", media.sample_rate))
        if getattr(audio, "input_kind", "waveform") == "features":
            media.n_mels = int(audio.n_mels)  # type: ignore[attr-defined]
    return media


def label_map(d: PretrainData, tables: Sequence[Any]) -> Optional[LabelMap]:
    """Class names from ``data.labels`` or the label column of the given tables; None without labels."""
    if not d.label_column or not d.prompt_templates:
        return None
    if not d.labels:
        values = [v for t in tables if t is not None and d.label_column in t.column_names for v in t[d.label_column]]
        if not values:
            return None
        d.labels = [str(x) for x in LabelMap.from_values(values).names]
    return LabelMap(d.labels)


def class_prompts(labels: LabelMap, templates: Sequence[str], tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and mask (C * T, L) of every template for every class (class-major), e.g.
    'a picture of a circle'; the task averages the T prompt embeddings of each class."""
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise ConfigError(f"data.prompt_templates: {bad} must contain '{{}}' where the class name goes")
    texts = [t.format(n) for n in labels.names for t in templates]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def paired_split(table: Any, path: str, modalities: Sequence[str], d: PretrainData, media: MediaConfig,
                 encoders: Mapping[str, Encoder], labels: Optional[LabelMap],
                 counters: dict[str, int], references: bool = False) -> PairedDataset:
    """One split as a ``PairedDataset`` of the given modalities (labels kept where known; with ``references`` the
    raw captions too, for caption metrics)."""
    text = encoders.get("text")
    max_len = min(d.max_length, getattr(text, "max_length", d.max_length))
    use_labels = labels if labels is not None and d.label_column in table.column_names else None
    return build_paired(table, path, modalities, columns(d), media, getattr(text, "tokenizer", None), max_len,
                        use_labels, d.skip_bad_samples, counters, references, d.overlong_text)


@dataclass
class PairedData:
    """What a map-style pretraining recipe trains on: its encoders, zero-shot classes and prompts (None without), the
    paired splits (rows memory-mapped from the preprocessing cache) and the counts preparing made."""

    encoders: dict[str, Encoder]
    labels: Optional[LabelMap]
    prompts: Optional[tuple[torch.Tensor, torch.Tensor]]
    train: Optional[PairedDataset]
    eval: Optional[PairedDataset]
    counters: dict[str, int]


#: the columns of a checked pair (``build_paired``'s rows): file row, token ids, media paths, class, raw caption
PAIR_FEATURES = {ROW: "int64", TEXT: "int32[]", IMAGE: "string", AUDIO: "string", VIDEO: "string", LABELS: "int64",
                 REFERENCE: "string"}


def paired_data(cfg: Any, modalities: Sequence[str], train: bool, zero_shot_eval: bool = True,
                references: bool = False) -> PairedData:
    """Encoders of ``modalities`` (a text encoder without a tokenizer learns one on the training captions) and the
    checked, tokenised pairs of the training and evaluation tables, from the preprocessing cache when the same data
    was prepared the same way before (``tasks/cached_tables.py``), else read and every media file checked. With
    ``zero_shot_eval`` the eval split keeps its classes (``zero_shot``); with ``references`` its raw captions."""
    d = cfg.data
    raw = once(lambda: load_tables(cfg, train))
    if train:
        raw()  # no data at all is an error before anything is built
    learn = "text" in modalities and learned_tokenizer(cfg.model.text or {})
    corpus = raw()[0][d.text_column] if learn and raw()[0] is not None else None
    encoders = build_encoders(cfg.model, modalities, cfg.output_dir, corpus)
    media, text = media_config(encoders, d), encoders.get("text")
    given = list(d.labels)

    def build(cache: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        counters: dict[str, int] = {}
        tables = list(raw())
        labels = label_map(d, tables) if zero_shot_eval and text is not None else None
        out = {}
        for split, table, where in splits(cfg, *tables, train):
            ds = paired_split(table, where, modalities, d, media, encoders, labels if split == "eval" else None,
                              counters, references and split == "eval")
            out[split] = store_pairs(ds, cache, split)
        skip = "" if labels is not None else zero_shot_skip_reason(d, tables, text is not None)
        return out, {"labels": d.labels, "zero_shot_skipped": skip, "counters": counters}

    settings = pair_settings(cfg, modalities, media, encoders, given, zero_shot=zero_shot_eval, references=references)
    tables, info, _ = prepare_tables(cfg, train, False, settings, build)
    labels, prompts, counters = zero_shot_of(d, info, encoders, zero_shot_eval)
    tr, ev = (paired_table(tables.get(s), media, w) for s, w in (("train", d.train_file), ("eval", eval_name(d))))
    return PairedData(encoders, labels, prompts, tr, ev, counters)


def store_pairs(ds: PairedDataset, cache: Any, split: str) -> Any:
    """``build_paired``'s checked rows of one split as the cache entry's ``split`` table (``PAIR_FEATURES``)."""
    spec = {k: v for k, v in PAIR_FEATURES.items() if k in (ds.rows[0] if ds.rows else {ROW: 0})}
    return store_columns({k: [r[k] for r in ds.rows] for k in spec}, cache, split, features(spec))


def pair_settings(cfg: Any, modalities: Sequence[str], media: MediaConfig, encoders: Mapping[str, Encoder],
                  labels: Sequence[str], **more: Any) -> dict[str, Any]:
    """What checked pairs depend on (the cache key's settings): recipe, modalities, columns and checks, media
    decoding, the effective max_length, the tokenizer, the class names given, and ``more``."""
    d, text = cfg.data, encoders.get("text")
    return {"recipe": cfg.task, "modalities": list(modalities), "labels": list(labels),
            "media": dataclasses.asdict(media), "data": {k: getattr(d, k) for k in PAIR_KEYS},
            "max_length": min(d.max_length, getattr(text, "max_length", d.max_length)),
            "tokenizer": tokenizer_identity(text.tokenizer) if text is not None else None, **more}


def zero_shot_of(d: PretrainData, info: Mapping[str, Any], encoders: Mapping[str, Encoder], wanted: bool = True
                 ) -> tuple[Optional[LabelMap], Optional[tuple[torch.Tensor, torch.Tensor]], dict[str, int]]:
    """(zero-shot classes, their prompts, preparing's counts) from what a cache entry kept (``info``: the classes
    learned, or why there are none); ``data.labels`` set to the classes."""
    d.labels, counters = list(info["labels"]), {}
    split_counts(info, counters)
    labels = LabelMap(d.labels) if wanted and not info["zero_shot_skipped"] else None
    if wanted and labels is None:
        log.info("zero-shot evaluation skipped: %s", info["zero_shot_skipped"])
    prompts = class_prompts(labels, d.prompt_templates, encoders["text"].tokenizer) if labels is not None else None
    return labels, prompts, counters


PAIR_KEYS = ("text_column", "image_column", "audio_column", "video_column", "label_column", "prompt_templates",
             "overlong_text", "skip_bad_samples")  # what a checked pair depends on, besides media and tokenizer


def paired_table(records: Any, media: MediaConfig, where: str) -> Optional[PairedDataset]:
    """The pairs of a checked table (memory-mapped when it came from the cache), media decoded on access."""
    if records is None:
        return None
    ds = PairedDataset(records, media, where)
    ds.cache = records.cache  # check-data reports the entry
    return ds


def seeded_clips(datasets: Sequence[Optional[PairedDataset]], seed: int) -> list[Any]:
    """Training ``PairedDataset``s that read videos draw random clips seeded by (``seed``, epoch, index), each
    following the trainer's epoch (``FollowEpoch``): the callbacks to hand the trainer."""
    from mm_ptft.data.text import FollowEpoch

    return [FollowEpoch(ds.train_clips(seed)) for ds in datasets
            if isinstance(ds, PairedDataset) and ds.rows and "video" in ds.rows[0]]


def collator(encoders: Mapping[str, Encoder], d: Optional[PretrainData] = None) -> Any:
    """Pads token ids with the text encoder's pad id (0 without text); with ``data.decode_on=device`` (``d``) wrapped
    in the device stage that decodes and resizes the images where the model runs (``data.image_device``)."""
    collate = MultimodalCollator(encoders["text"].tokenizer.pad_token_id if "text" in encoders else 0)
    if d is None or d.decode_on == "worker" or "image" not in encoders:
        return collate
    ops = paired_ops(media_config(encoders, d))
    return DeviceDecode(collate, {True: ops, False: ops}, d.skip_bad_samples)


def zero_shot(d: PretrainData, tables: Sequence[Any],
              encoders: Mapping[str, Encoder]) -> tuple[Optional[LabelMap], Optional[tuple[torch.Tensor, torch.Tensor]]]:
    """Class names and their prompt token ids (C * T, L) for zero-shot evaluation; (None, None) without."""
    labels = label_map(d, tables) if "text" in encoders else None
    if labels is None:
        log.info("zero-shot evaluation skipped: %s", zero_shot_skip_reason(d, tables, "text" in encoders))
    return labels, class_prompts(labels, d.prompt_templates, encoders["text"].tokenizer) if labels else None


def zero_shot_skip_reason(d: PretrainData, tables: Sequence[Any], has_text: bool) -> str:
    """Why a run has no zero-shot classes: what is missing and the key that would give them."""
    if not has_text:
        return "the run has no text encoder to embed class prompts"
    if not d.label_column:
        return "data.label_column is empty (set it to the column of class names)"
    if not d.prompt_templates:
        return "data.prompt_templates is empty (e.g. ['a picture of a {}'])"
    names = [list(t.column_names) for t in tables if t is not None]
    return (f"no table has the label column data.label_column={d.label_column!r} (columns: {names}); "
            f"set data.label_column to the class-name column, or data.labels to the class names")


def _record_fn(d: PretrainData, modalities: Sequence[str], encoders: Mapping[str, Encoder],
               labels: Optional[LabelMap] = None, train: bool = False, seed: int = 0, references: bool = False) -> Any:
    """The map function of a paired stream: ``modalities`` of a record, decoded for ``encoders`` (``train``:
    random video clips, seeded per sample from ``seed``); captions over ``data.max_length`` handled by
    ``data.overlong_text`` as the manifest path does (``references``: raw captions kept, for caption metrics)."""
    from mm_ptft.data.paired_stream import PairedRecord

    text = encoders.get("text")
    max_len = min(d.max_length, getattr(text, "max_length", d.max_length))
    return PairedRecord(modalities, columns(d), media_config(encoders, d), getattr(text, "tokenizer", None), max_len,
                        labels, d.skip_bad_samples, train, seed, d.overlong_text, references)


def _bucket_length(modalities: Sequence[str]) -> Any:
    """Length bucketing (``train.group_by_length``) for text-only streams (a bucketed block is decoded at once)."""
    from mm_ptft.data.text import text_length

    return text_length if list(modalities) == ["text"] else None


def streamed(cfg: Any, modalities: Sequence[str], train: bool, encoder_modalities: Optional[Sequence[str]] = None,
             references: bool = False) -> tuple[dict[str, Encoder], Optional[LabelMap], tuple[Any, Any]]:
    """``data.streaming``: (encoders of ``encoder_modalities`` (default: ``modalities``), zero-shot labels from
    ``data.labels`` or None, (train stream, eval stream) of ``modalities``) — samples decoded and checked per
    record in the loader workers (``PairedRecord``; ``references``: the eval stream keeps raw captions)."""
    from mm_ptft.data.paired_stream import PairedRecord
    from mm_ptft.tasks import streaming as S

    d = cfg.data
    shards = S.shards_of(cfg, train)
    needed = list(encoder_modalities or modalities)
    reader = PairedRecord(modalities, columns(d), MediaConfig())
    corpus = S.stream_corpus(shards[0], reader.text_of) if train and "text" in needed else None
    encoders = build_encoders(cfg.model, needed, cfg.output_dir, corpus)
    labels = LabelMap(d.labels) if d.labels and d.label_column and d.prompt_templates and "text" in encoders else None
    if labels is None:
        log.info("zero-shot evaluation skipped: %s", "a stream's classes are not read ahead: set data.labels"
                 if d.label_column and d.prompt_templates and "text" in encoders and not d.labels
                 else zero_shot_skip_reason(d, [], "text" in encoders))
    return encoders, labels, S.streams(cfg, shards, _record_fn(d, modalities, encoders, None, True, cfg.seed), train,
                                       _bucket_length(modalities),
                                       _record_fn(d, modalities, encoders, labels, references=references))


def source_stream(cfg: Any, train_file: str, modalities: Sequence[str], encoders: Mapping[str, Encoder],
                  key: str) -> Any:
    """The training stream of one source of a mixture (``train_file``'s shards; the same hash eval split)."""
    from mm_ptft.data.shards import expand_sources
    from mm_ptft.tasks import streaming as S

    shards = expand_sources(train_file, key)
    return S.streams(cfg, (shards, []), _record_fn(cfg.data, modalities, encoders, None, True, cfg.seed), True,
                     _bucket_length(modalities))[0]


def build_objectives(specs: Mapping[str, Mapping[str, Any]], encoders: Mapping[str, Encoder],
                     where: str = "model.objectives") -> tuple[dict[str, Objective], dict[str, float]]:
    """Objectives from ``{name: {name: <objective>, weight: w, ...}}`` and their weights."""
    objectives, weights = {}, {}
    for key, spec in specs.items():
        spec = dict(spec)
        weights[key] = float(spec.pop("weight", 1.0))
        objectives[key] = OBJECTIVES.build(spec, f"{where}.{key}", encoders=encoders)
    return objectives, weights



def input_modality(value: str) -> str:
    """'image' / 'audio' / 'video' for an existing media file (by extension), else 'text'."""
    ext = os.path.splitext(value)[1].lower()
    if not os.path.isfile(value):
        return "text"
    return next((m for m, exts in EXTS.items() if ext in exts), "text")


def media_item(value: str, modality: str, media: MediaConfig, tokenizer: Any) -> dict[str, Any]:
    """One input as a paired item of ``modality`` (a caption tokenised; media decoded as in evaluation)."""
    from mm_ptft.data.multimodal import load_audio, load_image, load_video

    if modality == "text":
        return {"text": tokenizer(value)["input_ids"]}
    if modality == "video":
        video, mask = load_video(value, media)
        return {VIDEO: video, VIDEO_MASK: mask}
    return {"image": load_image(value, media)} if modality == "image" else {"audio": load_audio(value, media)}


@torch.no_grad()
def predict_embeddings(cfg: Any, prepared: Any, inputs: Sequence[str]) -> list[dict[str, Any]]:
    """Each input (a caption, or an image/audio/video file path) → its normalised contrastive embedding, plus
    zero-shot class scores for media when the run has class prompts, and a greedy ``caption`` for media of a
    modality a captioning objective reads (at most its ``max_new_tokens``)."""
    from mm_ptft.data.multimodal import MultimodalCollator
    from mm_ptft.objectives import EncodedBatch

    task = prepared.task
    captioners = dict(getattr(task, "captioners", {}))
    embeds = tuple(task.retrieval.modalities) if task.retrieval is not None else ()
    if not embeds and not captioners:
        raise ValueError(f"{cfg.task}: predict needs a contrastive objective (clip/siglip) to embed inputs or a "
                         f"captioning objective to caption them")
    media = media_config(dict(task.towers.items()), cfg.data)
    tok = getattr(task.towers["text"], "tokenizer", None) if "text" in task.towers else None
    classes = task.class_embeddings() if task.num_classes and embeds else None
    results = []
    for value in inputs:
        m = input_modality(value)
        if m not in embeds and m not in captioners:
            raise ValueError(f"input {value!r} is {m}, but this run embeds {list(embeds)} and captions "
                             f"{sorted(captioners)}")
        item = media_item(value, m, media, tok)
        batch = MultimodalCollator(tok.pad_token_id if tok is not None else 0)([item])
        feats = EncodedBatch(task.towers, batch)
        row: dict[str, Any] = {"input": value, "modality": m}
        if m in embeds:
            emb = task.retrieval.embed(feats, m)[0]  # (E,)
            row["embedding"] = [round(float(x), 5) for x in emb]
            if classes is not None and m != "text":
                probs = (task.retrieval.losses[_pair_key(task, m)].scale * classes @ emb).softmax(-1)  # (C,)
                row["scores"] = {n: float(p) for n, p in zip(cfg.data.labels, probs)}
                row["label"] = max(row["scores"], key=row["scores"].get)
        if m in captioners:
            row["caption"] = captioners[m].caption(feats)[0]
        results.append(row)
    return results


def _pair_key(task: Any, modality: str) -> str:
    a, b = sorted((modality, "text"))
    return f"{a}_{b}"
