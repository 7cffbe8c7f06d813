"""Masked-modelling pretraining of one encoder (or text conditioned on another modality):
MLM for text, MAE-style for images, VideoMAE-style tube masking for video, masked spectrogram modelling for
audio — chosen by config."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict

from mm_ptft.config import RunConfig
from mm_ptft.contracts import Prepared
from mm_ptft.data.stream import CountingCollate
from mm_ptft.heads.pretraining import PretrainTask
from mm_ptft.objectives import OBJECTIVES
from mm_ptft.tasks import recipe
from mm_ptft.tasks.pretrain_common import (EncoderSpecs, PretrainData, build_objectives, collator, paired_data,
                                           seeded_clips, streamed)


@dataclass
class MaskedData(PretrainData):
    modalities: list[str] = field(default_factory=lambda: ["text"])  # what the objective reads
    prompt_templates: list[str] = field(default_factory=list)  # no zero-shot evaluation for masked modelling


@dataclass
class MaskedModel(EncoderSpecs):
    # {name: mlm | clm | nsp | sop | mae | masked_video | masked_spectrogram | conditioned_mlm, ...objective kwargs}
    objective: Dict[str, Any] = field(default_factory=lambda: {"name": "mlm"})
    # several weighted objectives instead (replaces `objective`): {mlm: {name: mlm}, sop: {name: sop, weight: 1}}
    objectives: Dict[str, Any] = field(default_factory=dict)


@dataclass
class PretrainMaskedConfig(RunConfig):
    task: str = "pretrain_masked"
    data: MaskedData = field(default_factory=MaskedData)
    model: MaskedModel = field(default_factory=MaskedModel)


def prepare(cfg: PretrainMaskedConfig, train: bool = True) -> Prepared:
    """Encoders of ``data.modalities`` and the objective (or weighted ``model.objectives``); eval reports the
    mean losses (and perplexity for ``clm``)."""
    mods = list(cfg.data.modalities)
    if cfg.data.streaming:
        encoders, _, (tr, ev) = streamed(cfg, mods, train)
        return Prepared(_task(cfg, mods, encoders), tr, ev, CountingCollate(collator(encoders, cfg.data)))
    pairs = paired_data(cfg, mods, train, zero_shot_eval=False)
    tr, ev = pairs.train, pairs.eval
    return Prepared(_task(cfg, mods, pairs.encoders), tr, ev, collator(pairs.encoders, cfg.data),
                    tr.lengths() if tr is not None else None,
                    ev.lengths() if ev else None, pairs.counters, seeded_clips([tr], cfg.seed))


def _task(cfg: PretrainMaskedConfig, mods: list[str], encoders: Dict[str, Any]) -> PretrainTask:
    """The objective (or weighted ``model.objectives``) over ``encoders``, each checked against ``mods``."""
    spec = cfg.model.objective
    if cfg.model.objectives:
        objectives, weights = build_objectives(cfg.model.objectives, encoders)
    else:
        objectives = {spec["name"]: OBJECTIVES.build(spec, "model.objective", encoders=encoders)}
        weights = {}
    for key, objective in objectives.items():
        missing = sorted(set(objective.modalities) - set(mods))
        if missing:
            where = f"model.objectives.{key}" if cfg.model.objectives else f"model.objective={key}"
            raise ValueError(f"{where} reads {list(objective.modalities)} but data.modalities={mods}; add {missing}")
    return PretrainTask(encoders, objectives, weights)


# Masked modelling has no predict: its encoders (``encoders/`` in the run) are what it makes.
PretrainMasked = recipe(PretrainMaskedConfig, prepare)
