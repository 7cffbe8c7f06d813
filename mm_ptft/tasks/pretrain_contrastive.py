"""Contrastive pretraining (CLIP / SigLIP) between any modality pairs of a paired manifest,
evaluated by retrieval recall@K both ways and zero-shot classification."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict

from mm_ptft.config import RunConfig
from mm_ptft.data.multimodal import MultimodalCollator
from mm_ptft.heads.pretraining import PretrainTask
from mm_ptft.objectives import OBJECTIVES
from mm_ptft.tasks import TASKS
from mm_ptft.tasks.base import Prepared
from mm_ptft.tasks.pretrain_common import (EncoderSpecs, PretrainData, build_encoders,
                                           class_prompts, label_map, load_tables, media_config, paired_split,
                                           predict_embeddings)


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


@TASKS.register("pretrain_contrastive")
class PretrainContrastive:
    config_cls = PretrainContrastiveConfig

    @staticmethod
    def prepare(cfg: PretrainContrastiveConfig, train: bool = True) -> Prepared:
        """Encoders of ``data.modalities``, one contrastive objective over their pairs, paired data."""
        d, mods = cfg.data, list(cfg.data.modalities)
        train_ds, eval_ds = load_tables(d, cfg.output_dir, cfg.seed, train)
        corpus = train_ds[d.text_column] if train_ds is not None and "text" in mods else None
        encoders = build_encoders(cfg.model, mods, cfg.output_dir, corpus)
        spec = {"modalities": mods, **cfg.model.objective}
        objectives = {"contrastive": OBJECTIVES.build(spec, "model.objective", encoders=encoders)}
        labels = label_map(d, [train_ds, eval_ds]) if "text" in encoders else None
        prompts = class_prompts(labels, d.prompt_templates, encoders["text"].tokenizer) if labels else None
        task = PretrainTask(encoders, objectives, prompts=prompts, num_classes=len(labels) if labels else 0)
        media, counters = media_config(encoders, d), {}
        tr = paired_split(train_ds, d.train_file, mods, d, media, encoders, None, counters) if train_ds else None
        ev = (paired_split(eval_ds, d.eval_file or f"{d.train_file} (eval split)", mods, d, media, encoders, labels,
                           counters) if eval_ds is not None else None)
        pad = encoders["text"].tokenizer.pad_token_id if "text" in encoders else 0
        return Prepared(task, tr, ev, MultimodalCollator(pad), None, None, counters)

    @staticmethod
    def predict(cfg: PretrainContrastiveConfig, prepared: Prepared, inputs: list[str]) -> list[dict[str, Any]]:
        """Embedding of each caption or media file, with zero-shot class scores for media."""
        return predict_embeddings(cfg, prepared, inputs)
