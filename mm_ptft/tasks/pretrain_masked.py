"""Masked-modelling pretraining of one encoder (or text conditioned on another modality):
MLM for text, MAE-style for images, masked spectrogram modelling for audio — chosen by config."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict

from mm_ptft.config import RunConfig
from mm_ptft.contracts import Prepared
from mm_ptft.heads.pretraining import PretrainTask
from mm_ptft.objectives import OBJECTIVES
from mm_ptft.tasks import recipe
from mm_ptft.data.stream import CountingCollate
from mm_ptft.tasks.pretrain_common import (EncoderSpecs, PretrainData, collator, paired_splits, streamed,
                                           tables_and_encoders)


@dataclass
class MaskedData(PretrainData):
    modalities: list[str] = field(default_factory=lambda: ["text"])  # what the objective reads
    prompt_templates: list[str] = field(default_factory=list)  # no zero-shot evaluation for masked modelling


@dataclass
class MaskedModel(EncoderSpecs):
    # {name: mlm | mae | masked_spectrogram | conditioned_mlm, ...objective kwargs}
    objective: Dict[str, Any] = field(default_factory=lambda: {"name": "mlm"})


@dataclass
class PretrainMaskedConfig(RunConfig):
    task: str = "pretrain_masked"
    data: MaskedData = field(default_factory=MaskedData)
    model: MaskedModel = field(default_factory=MaskedModel)


def prepare(cfg: PretrainMaskedConfig, train: bool = True) -> Prepared:
    """Encoders of ``data.modalities`` and the one masked objective; eval reports its mean loss."""
    objective_spec, mods = cfg.model.objective, list(cfg.data.modalities)
    if cfg.data.streaming:
        encoders, _, (tr, ev) = streamed(cfg, mods, train)
        return Prepared(_task(objective_spec, mods, encoders), tr, ev, CountingCollate(collator(encoders)))
    train_ds, eval_ds, encoders = tables_and_encoders(cfg, mods, train)
    counters: dict[str, int] = {}
    tr, ev = paired_splits(cfg.data, (train_ds, eval_ds), mods, encoders, None, counters)
    return Prepared(_task(objective_spec, mods, encoders), tr, ev, collator(encoders),
                    tr.lengths() if tr is not None else None, ev.lengths() if ev else None, counters)


def _task(objective_spec: Dict[str, Any], mods: list[str], encoders: Dict[str, Any]) -> PretrainTask:
    objective = OBJECTIVES.build(objective_spec, "model.objective", encoders=encoders)
    missing = sorted(set(objective.modalities) - set(mods))
    if missing:
        raise ValueError(f"model.objective={objective_spec['name']} reads {list(objective.modalities)} "
                         f"but data.modalities={mods}; add {missing}")
    return PretrainTask(encoders, {objective_spec["name"]: objective})


# Masked modelling has no predict: its encoders (``encoders/`` in the run) are what it makes.
PretrainMasked = recipe(PretrainMaskedConfig, prepare)
