"""Joint pretraining: several weighted objectives in one run, each source dataset mixed in by weight.

``data.sources`` names the datasets (paired image-text, audio-text, unpaired text/image/audio…),
each a manifest read for its own ``modalities`` and drawn with its ``weight``; a training batch is
``{source: sub-batch}`` and every objective takes the sub-batches that carry its modalities.
Evaluation runs on ``data.eval_file`` (or a split of the first source) read for
``data.eval_modalities``: the objectives' losses, retrieval recall@K and zero-shot accuracy, and with a
``captioning`` objective (CoCa: ``clip`` + ``captioning``) caption perplexity, BLEU-4 and CIDEr.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict

from mm_ptft.config import ConfigError, RunConfig
from mm_ptft.contracts import Prepared
from mm_ptft.data.multimodal import JointCollator, MixtureDataset
from mm_ptft.data.stream import CountingCollate, MixtureStream
from mm_ptft.data.tables import load_table
from mm_ptft.heads.pretraining import PretrainTask
from mm_ptft.objectives.captioning import CaptioningObjective
from mm_ptft.tasks import recipe
from mm_ptft.tasks.cached_tables import learned_tokenizer, once, prepare_tables
from mm_ptft.tasks.common import eval_name, resolve_files
from mm_ptft.tasks.pretrain_common import (EncoderSpecs, PretrainData, build_encoders, build_objectives, class_prompts,
                                           collator, label_map, load_tables, media_config, pair_settings,
                                           paired_split, paired_table, predict_embeddings, seeded_clips, source_stream,
                                           store_pairs, streamed, zero_shot_of, zero_shot_skip_reason)


@dataclass
class SourceConfig:
    RANGES: ClassVar[dict[str, str]] = {"weight": ">=0"}  # checked by config.parse
    train_file: str = ""  # empty: data.train_file (e.g. the generated manifest)
    modalities: list[str] = field(default_factory=lambda: ["image", "text"])
    weight: float = 1.0  # share of each epoch's samples drawn from this source


@dataclass
class JointData(PretrainData):
    RANGES: ClassVar[dict[str, str]] = {"epoch_size": ">=0"}  # with PretrainData's: checked by config.parse
    sources: Dict[str, SourceConfig] = field(default_factory=dict)
    eval_modalities: list[str] = field(default_factory=lambda: ["image", "text"])
    epoch_size: int = 0  # samples per epoch over all sources; 0: the sum of their sizes


@dataclass
class JointModel(EncoderSpecs):
    # name → {name: <objective>, weight: w, ...}: e.g. {clip_it: {name: clip, pairs: [[image, text]]}, mlm: {name: mlm}}
    objectives: Dict[str, Any] = field(default_factory=dict)


@dataclass
class PretrainJointConfig(RunConfig):
    task: str = "pretrain_joint"
    data: JointData = field(default_factory=JointData)
    model: JointModel = field(default_factory=JointModel)


def prepare(cfg: PretrainJointConfig, train: bool = True) -> Prepared:
    """Encoders of every modality the sources carry, the weighted objectives, the mixture."""
    d = cfg.data
    if not d.sources:
        raise ConfigError("data.sources is empty: name at least one source, e.g. "
                          "data.sources={pairs: {modalities: [image, text]}}")
    if d.decode_on != "worker":
        raise ConfigError(f"data.decode_on={d.decode_on!r} is not supported by pretrain_joint (its batches mix "
                          f"sources); use data.decode_on=worker, or pretrain_contrastive / pretrain_masked")
    if d.streaming:
        return _prepare_stream(cfg, train)
    resolve_files(d, cfg.output_dir)  # generated data: data.train_file, which sources without their own file read
    files = {n: s.train_file or d.train_file for n, s in sorted(d.sources.items())}
    mods = sorted({m for s in d.sources.values() for m in s.modalities} | set(d.eval_modalities))

    @once
    def raw() -> tuple[dict[str, Any], Any]:
        first, eval_ds = load_tables(cfg, train)
        tables = {n: load_table(f, f"data.sources.{n}.train_file") if f != d.train_file else first
                  for n, f in files.items()} if train else {}
        return tables, eval_ds

    learn = train and "text" in mods and learned_tokenizer(cfg.model.text or {})
    texts = [t for n, tb in raw()[0].items() if "text" in d.sources[n].modalities for t in tb[d.text_column]] \
        if learn else []
    encoders = build_encoders(cfg.model, mods, cfg.output_dir, texts or None)
    objectives, weights = build_objectives(cfg.model.objectives, encoders)
    media, given = media_config(encoders, d), list(d.labels)
    captions = any(isinstance(o, CaptioningObjective) for o in objectives.values())  # eval keeps its raw captions

    def build(cache: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        tables, eval_ds = raw()
        counters: dict[str, int] = {}
        out = {f"source_{n}": store_pairs(paired_split(tb, files[n], d.sources[n].modalities, d, media, encoders,
                                                       None, counters), cache, f"source_{n}")
               for n, tb in tables.items()}
        labels = label_map(d, [eval_ds]) if "text" in encoders else None
        if eval_ds is not None:
            out["eval"] = store_pairs(paired_split(eval_ds, eval_name(d), d.eval_modalities, d, media, encoders,
                                                   labels, counters, references=captions), cache, "eval")
        skip = "" if labels is not None else zero_shot_skip_reason(d, [eval_ds], "text" in encoders)
        return out, {"labels": d.labels, "zero_shot_skipped": skip, "counters": counters}

    settings = pair_settings(cfg, mods, media, encoders, given, sources={n: [files[n], d.sources[n].modalities]
                                                                          for n in files}, references=captions)
    sources = sorted(set(files.values())) if train else []  # the sources' own files key the entry too
    tables, info, status = prepare_tables(cfg, train, False, settings, build, sources)
    labels, prompts, counters = zero_shot_of(d, info, encoders)
    task = PretrainTask(encoders, objectives, weights, sources=list(files), prompts=prompts,
                        num_classes=len(labels) if labels else 0)
    parts = {n: paired_table(tables[f"source_{n}"], media, files[n]) for n in files if f"source_{n}" in tables}
    tr = MixtureDataset(parts, {n: s.weight for n, s in d.sources.items()}, d.epoch_size, cfg.seed) if parts else None
    if tr is not None:
        counters.update({f"epoch_samples_{n}": c for n, c in tr.counts().items()})
        tr.cache = status  # check-data reports the entry
    ev = paired_table(tables.get("eval"), media, eval_name(d))
    return Prepared(task, tr, ev, JointCollator(collator(encoders)), None, None, counters,
                    seeded_clips(list(parts.values()), cfg.seed))


def _prepare_stream(cfg: PretrainJointConfig, train: bool) -> Prepared:
    """``data.streaming``: one stream per source (its own shards, or ``data.train_file``'s), mixed by weight."""
    d = cfg.data
    mods = sorted({m for s in d.sources.values() for m in s.modalities} | set(d.eval_modalities))
    encoders, labels, (_, ev) = streamed(cfg, d.eval_modalities, train, mods)
    objectives, weights = build_objectives(cfg.model.objectives, encoders)
    prompts = class_prompts(labels, d.prompt_templates, encoders["text"].tokenizer) if labels else None
    task = PretrainTask(encoders, objectives, weights, sources=sorted(d.sources), prompts=prompts,
                        num_classes=len(labels) if labels else 0)
    tr = None
    if train:
        parts = {n: source_stream(cfg, src.train_file or d.train_file, src.modalities, encoders,
                                  f"data.sources.{n}.train_file") for n, src in sorted(d.sources.items())}
        tr = MixtureStream(parts, {n: s.weight for n, s in d.sources.items()}, cfg.seed)
    return Prepared(task, tr, ev, CountingCollate(JointCollator(collator(encoders))))


def predict(cfg: PretrainJointConfig, prepared: Prepared, inputs: list[str]) -> list[dict[str, Any]]:
    """Embedding of each caption or media file, with zero-shot class scores for media."""
    return predict_embeddings(cfg, prepared, inputs)


PretrainJoint = recipe(PretrainJointConfig, prepare, predict)
