"""Captioning pretraining: a caption decoder cross-attending to an image (or audio) encoder, alone or with a
contrastive objective in the same run (CoCa: ``clip`` + ``captioning``, each with its weight), and optionally
image–text matching (``itm``). Evaluated by caption perplexity, BLEU-4 and CIDEr (and, with ``clip``, retrieval
recall@K and zero-shot accuracy); ``predict`` on an image or audio file writes its caption."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict

from mm_ptft.config import ConfigError, RunConfig
from mm_ptft.contracts import Prepared
from mm_ptft.data.stream import CountingCollate
from mm_ptft.data.text import OVERLONG
from mm_ptft.heads.pretraining import PretrainTask
from mm_ptft.tasks import recipe
from mm_ptft.tasks.pretrain_common import (EncoderSpecs, PretrainData, build_objectives, class_prompts, collator,
                                           paired_data, predict_embeddings, streamed)


@dataclass
class CaptioningData(PretrainData):
    modalities: list[str] = field(default_factory=lambda: ["image", "text"])  # read from the manifest
    # a caption cut at max_length would teach the decoder to end mid-sentence: drop it and count it
    overlong_text: str = "skip"


@dataclass
class CaptioningModel(EncoderSpecs):
    # name → {name: <objective>, weight: w, ...}, at least one captioning; CoCa: {clip: {name: clip, weight: 1},
    # caption: {name: captioning, weight: 2}}; the text encoder's tokenizer tokenises the captions. No default entry:
    # a default would be merged into the user's own dict
    objectives: Dict[str, Any] = field(default_factory=dict)


@dataclass
class PretrainCaptioningConfig(RunConfig):
    task: str = "pretrain_captioning"
    data: CaptioningData = field(default_factory=CaptioningData)
    model: CaptioningModel = field(default_factory=CaptioningModel)


def prepare(cfg: PretrainCaptioningConfig, train: bool = True) -> Prepared:
    """Encoders of ``data.modalities``, the weighted objectives (at least one ``captioning``), paired data whose
    eval split keeps its raw captions as references."""
    d, mods = cfg.data, list(cfg.data.modalities)
    if d.overlong_text not in OVERLONG:
        raise ConfigError(f"data.overlong_text={d.overlong_text!r}; choose one of {list(OVERLONG)}")
    if "text" not in mods:
        raise ConfigError(f"data.modalities={mods}: captioning needs the text (caption) column; add text")
    counters: dict[str, int] = {}
    if d.streaming:
        encoders, labels, (tr, ev) = streamed(cfg, mods, train, references=True)
        prompts = class_prompts(labels, d.prompt_templates, encoders["text"].tokenizer) if labels else None
    else:
        pairs = paired_data(cfg, mods, train, references=True)
        encoders, labels, prompts, tr, ev, counters = (pairs.encoders, pairs.labels, pairs.prompts, pairs.train,
                                                       pairs.eval, pairs.counters)
    objectives, weights = build_objectives(cfg.model.objectives, encoders)
    task = PretrainTask(encoders, objectives, weights, prompts=prompts, num_classes=len(labels) if labels else 0)
    if not task.captioners:
        raise ConfigError(f"model.objectives {sorted(cfg.model.objectives)} has no captioning objective; add e.g. "
                          f"model.objectives.caption={{name: captioning}}")
    for key, obj in objectives.items():
        missing = sorted(set(obj.modalities) - set(mods))
        if missing:
            raise ConfigError(f"model.objectives.{key} reads {missing}, which data.modalities={mods} does not load")
    return Prepared(task, tr, ev, CountingCollate(collator(encoders, d)), None, None, counters)


def predict(cfg: PretrainCaptioningConfig, prepared: Prepared, inputs: list[str]) -> list[dict[str, Any]]:
    """A greedy caption for each image/audio file (plus its embedding and zero-shot scores with ``clip``)."""
    return predict_embeddings(cfg, prepared, inputs)


PretrainCaptioning = recipe(PretrainCaptioningConfig, prepare, predict)
