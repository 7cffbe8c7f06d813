"""Masked-modelling pretraining of one encoder (or text conditioned on another modality):
MLM for text, MAE-style for images, masked spectrogram modelling for audio — chosen by config."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict

from mm_ptft.config import RunConfig
from mm_ptft.data.multimodal import MultimodalCollator
from mm_ptft.heads.pretraining import PretrainTask
from mm_ptft.objectives import OBJECTIVES
from mm_ptft.tasks import TASKS
from mm_ptft.tasks.base import Prepared
from mm_ptft.tasks.pretrain_common import (EncoderSpecs, PretrainData, build_encoders, load_tables, media_config,
                                           paired_split)


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


@TASKS.register("pretrain_masked")
class PretrainMasked:
    config_cls = PretrainMaskedConfig

    @staticmethod
    def prepare(cfg: PretrainMaskedConfig, train: bool = True) -> Prepared:
        """Encoders of ``data.modalities`` and the one masked objective; eval reports its mean loss."""
        d, mods = cfg.data, list(cfg.data.modalities)
        train_ds, eval_ds = load_tables(d, cfg.output_dir, cfg.seed, train)
        corpus = train_ds[d.text_column] if train_ds is not None and "text" in mods else None
        encoders = build_encoders(cfg.model, mods, cfg.output_dir, corpus)
        objective = OBJECTIVES.build(cfg.model.objective, "model.objective", encoders=encoders)
        missing = sorted(set(objective.modalities) - set(mods))
        if missing:
            raise ValueError(f"model.objective={cfg.model.objective['name']} reads {list(objective.modalities)} "
                             f"but data.modalities={mods}; add {missing}")
        task = PretrainTask(encoders, {cfg.model.objective["name"]: objective})
        media, counters = media_config(encoders, d), {}
        tr = paired_split(train_ds, d.train_file, mods, d, media, encoders, None, counters) if train_ds else None
        ev = (paired_split(eval_ds, d.eval_file or f"{d.train_file} (eval split)", mods, d, media, encoders, None,
                           counters) if eval_ds is not None else None)
        pad = encoders["text"].tokenizer.pad_token_id if "text" in encoders else 0
        lengths = tr.lengths() if tr is not None else None
        return Prepared(task, tr, ev, MultimodalCollator(pad), lengths, ev.lengths() if ev else None, counters)
