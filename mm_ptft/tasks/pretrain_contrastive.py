"""Contrastive pretraining (CLIP / SigLIP) between any modality pairs of a paired manifest,
evaluated by retrieval recall@K both ways and zero-shot classification."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict

from mm_ptft.config import RunConfig
from mm_ptft.contracts import Prepared
from mm_ptft.heads.pretraining import PretrainTask
from mm_ptft.objectives import OBJECTIVES
from mm_ptft.tasks import recipe
from mm_ptft.data.stream import CountingCollate
from mm_ptft.tasks.pretrain_common import (EncoderSpecs, PretrainData, class_prompts, collator, paired_data,
                                           predict_embeddings, seeded_clips, streamed)


@dataclass
class ContrastiveData(PretrainData):
    modalities: list[str] = field(default_factory=lambda: ["image", "text"])  # read from the manifest


@dataclass
class ContrastiveModel(EncoderSpecs):
    # {name: clip|siglip, pairs: all | [[a, b], ...], anchor: '', embed_dim, proj_hidden, init_scale, ...}
    objective: Dict[str, Any] = field(default_factory=lambda: {"name": "clip"})


@dataclass
class PretrainContrastiveConfig(RunConfig):
    task: str = "pretrain_contrastive"
    data: ContrastiveData = field(default_factory=ContrastiveData)
    model: ContrastiveModel = field(default_factory=ContrastiveModel)


def prepare(cfg: PretrainContrastiveConfig, train: bool = True) -> Prepared:
    """Encoders of ``data.modalities``, one contrastive objective over their pairs, paired data."""
    d, mods = cfg.data, list(cfg.data.modalities)
    counters: dict[str, int] = {}
    if d.streaming:
        encoders, labels, (tr, ev) = streamed(cfg, mods, train)
        prompts = class_prompts(labels, d.prompt_templates, encoders["text"].tokenizer) if labels else None
    else:
        pairs = paired_data(cfg, mods, train)
        encoders, labels, prompts, tr, ev, counters = (pairs.encoders, pairs.labels, pairs.prompts, pairs.train,
                                                       pairs.eval, pairs.counters)
    callbacks = seeded_clips([tr], cfg.seed) if not d.streaming else []
    spec = {"modalities": mods, **cfg.model.objective}
    objectives = {"contrastive": OBJECTIVES.build(spec, "model.objective", encoders=encoders)}
    task = PretrainTask(encoders, objectives, prompts=prompts, num_classes=len(labels) if labels else 0)
    return Prepared(task, tr, ev, CountingCollate(collator(encoders, d)), None, None, counters, callbacks)


def predict(cfg: PretrainContrastiveConfig, prepared: Prepared, inputs: list[str]) -> list[dict[str, Any]]:
    """Embedding of each caption or media file, with zero-shot class scores for media."""
    return predict_embeddings(cfg, prepared, inputs)


PretrainContrastive = recipe(PretrainContrastiveConfig, prepare, predict)
