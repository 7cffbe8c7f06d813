"""Image classification: any image encoder + a linear head, with config-driven augmentation,
MixUp/CutMix soft labels and optional EMA weights evaluated alongside the live ones."""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from mm_ptft.config import RunConfig
from mm_ptft.data import generated_images  # noqa: F401  (registers the image_shapes generator)
from mm_ptft.data.image import (ImageAugment, ImageCollator, ImageDataset, batch_mix, classification_transforms,
                                image_table, scan_images)
from mm_ptft.data.tables import DataError, LabelMap
from mm_ptft.encoders.base import Encoder, build_encoder
from mm_ptft.encoders.image import IMAGE_ENCODERS
from mm_ptft.heads.classification import ClassificationTask
from mm_ptft.metrics import ClassificationMetrics
from mm_ptft.tasks import TASKS
from mm_ptft.tasks.base import Prepared
from mm_ptft.tasks.common import needs_train_file, resolve_files
from mm_ptft.types import IMAGE, LABELS


@dataclass
class ImageClsData:
    train_file: str = ""  # CSV/TSV/JSON/JSONL/parquet with image paths (relative to the file), or a class-folder root
    eval_file: str = ""  # empty: a seeded split of train_file (eval_fraction)
    path_column: str = "path"
    label_column: str = "label"
    eval_fraction: float = 0.1
    labels: list[str] = field(default_factory=list)  # empty: learned from the training data
    skip_bad_samples: bool = False
    verify_images: bool = True  # decode every image once at load time (finds corrupt/truncated files early)
    augment: ImageAugment = field(default_factory=ImageAugment)
    generate: Optional[Dict[str, Any]] = None  # {name: <data generator>, ...}: generated data


@dataclass
class ImageClsModel:
    image: Dict[str, Any] = field(default_factory=lambda: {"name": "tiny_cnn"})
    dropout: float = 0.0
    label_smoothing: float = 0.0
    ema_decay: float = 0.0  # > 0: keep EMA weights (timm ModelEmaV3) and report ema_* metrics


@dataclass
class ImageClassificationConfig(RunConfig):
    task: str = "image_classification"
    data: ImageClsData = field(default_factory=ImageClsData)
    model: ImageClsModel = field(default_factory=ImageClsModel)


class EmaMetrics:
    """Classification metrics for the live weights and, under an ``ema_`` prefix, the EMA weights."""

    def __init__(self, num_classes: int) -> None:
        self.live, self.ema = ClassificationMetrics(num_classes), ClassificationMetrics(num_classes)

    def to(self, device: torch.device) -> "EmaMetrics":
        self.live, self.ema = self.live.to(device), self.ema.to(device)
        return self

    def update(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        self.live.update(out, batch)
        self.ema.update({"logits": out["ema_logits"]}, batch)

    def compute(self) -> dict[str, float]:
        return {**self.live.compute(), **{f"ema_{k}": v for k, v in self.ema.compute().items()}}


class ImageClassificationTask(ClassificationTask):
    """``ClassificationTask`` plus batch-level MixUp/CutMix in training and optional EMA weights.

    Mixing happens here rather than in the collator because the trainer uses one collate function
    for training and evaluation; evaluation batches must keep their hard labels. The EMA copy is made
    at the first training forward (after fine-tuning strategies such as LoRA changed the model) and
    folded in right after every optimizer step that updates this task's weights."""

    def __init__(self, encoder: Encoder, num_classes: int, dropout: float = 0.0, label_smoothing: float = 0.0,
                 mix: Optional[Callable[..., tuple[torch.Tensor, torch.Tensor]]] = None,
                 ema_decay: float = 0.0) -> None:
        super().__init__(encoder, num_classes, dropout, label_smoothing)
        self.mix, self.ema_decay = mix, ema_decay
        self.ema: Optional[nn.Module] = None
        self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))  # saved: EMA warm-up survives resume

    def encoders(self) -> dict[str, nn.Module]:
        return {self.encoder.modality: self.encoder}  # not the EMA copy

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        if self.training and self.mix is not None and LABELS in batch:
            images, soft = self.mix(batch[IMAGE], batch[LABELS])  # (B, 3, H, W), (B, C)
            batch = {**batch, IMAGE: images, LABELS: soft}
        if self.training and self.ema_decay > 0:
            self._start_ema()
        out = super().forward(batch)
        if self.ema is not None and not self.training:
            ema = self.ema.module
            out["ema_logits"] = ema["head"](ema["encoder"](batch).pooled)  # (B, C)
        return out

    def _live(self) -> nn.ModuleDict:
        return nn.ModuleDict({"encoder": self.encoder, "head": self.head})

    def _make_ema(self) -> None:
        from timm.utils import ModelEmaV3

        self.ema = ModelEmaV3(self._live(), decay=self.ema_decay or 0.999, use_warmup=True).requires_grad_(False)

    def _start_ema(self) -> None:
        """Copy the weights into the EMA (once) and watch optimizer steps (once per process)."""
        if self.ema is None:
            self._make_ema()
        if self not in _EMA_HOOKS:
            mine = {id(p) for p in self.parameters() if p.requires_grad}
            ref = weakref.ref(self)

            def after_step(opt: torch.optim.Optimizer, *_: Any) -> None:
                task = ref()
                if task is not None and any(id(p) in mine for g in opt.param_groups for p in g["params"][:1]):
                    task._update_ema()

            # a global post-step hook: it fires for fused/foreach optimizers too, after the weights changed
            handle = register_optimizer_step_post_hook(after_step)
            _EMA_HOOKS[self] = handle
            weakref.finalize(self, handle.remove)

    @torch.no_grad()
    def _update_ema(self) -> None:
        self.ema_steps += 1
        self.ema.update(self._live(), step=int(self.ema_steps))

    def build_metrics(self) -> Any:
        return EmaMetrics(self.num_classes) if self.ema is not None else ClassificationMetrics(self.num_classes)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Create the EMA copy first when the checkpoint holds one (resume, evaluation)."""
        if self.ema is None and any(k.startswith("ema.") for k in state_dict):
            self._make_ema()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


#: optimizer-step hooks of live tasks; an entry (and its hook) goes away with its task
_EMA_HOOKS: "weakref.WeakKeyDictionary[ImageClassificationTask, Any]" = weakref.WeakKeyDictionary()


def _split(cfg: ImageClassificationConfig, train: bool) -> tuple[Optional[tuple], Optional[tuple]]:
    """(paths, raw labels) of the training and evaluation data."""
    d = cfg.data
    tr = ev = None
    if needs_train_file(d, train, learn=not d.labels):
        tr = image_table(d.train_file, "data.train_file", d.path_column, d.label_column)
    if d.eval_file:
        ev = image_table(d.eval_file, "data.eval_file", d.path_column, d.label_column)
    elif tr is not None:
        tr, ev = _seeded_split(tr, d.eval_fraction, cfg.seed)
    return tr, ev


def _seeded_split(table: tuple[list, list], fraction: float, seed: int) -> tuple[tuple, tuple]:
    """Split (paths, labels) into train/eval parts by a seeded permutation (eval gets ``fraction``)."""
    if not 0 < fraction < 1:
        raise DataError(f"data.eval_fraction must be in (0, 1), got {fraction}")
    order = torch.randperm(len(table[0]), generator=torch.Generator().manual_seed(seed)).tolist()
    n_eval = max(1, round(fraction * len(order)))

    def pick(idx: list[int]) -> tuple[list, list]:
        return [table[0][i] for i in sorted(idx)], [table[1][i] for i in sorted(idx)]

    return pick(order[n_eval:]), pick(order[:n_eval])


def _dataset(table: Optional[tuple], labels: LabelMap, transform: Callable, cfg: ImageClassificationConfig,
             where: str, counters: dict[str, int]) -> Optional[ImageDataset]:
    if table is None:
        return None
    d = cfg.data
    kept = scan_images(table[0], where, d.skip_bad_samples, counters, decode=d.verify_images)
    y = labels.encode([table[1][i] for i in kept], where)
    return ImageDataset([table[0][i] for i in kept], y, transform, d.skip_bad_samples)


@TASKS.register("image_classification")
class ImageClassification:
    config_cls = ImageClassificationConfig

    @staticmethod
    def prepare(cfg: ImageClassificationConfig, train: bool = True) -> Prepared:
        """Scan image tables, learn labels, build the encoder (its preprocessing), the head and transforms."""
        d = cfg.data
        resolve_files(d, cfg.output_dir)
        tr, ev = _split(cfg, train)
        if not d.labels:
            if tr is None:
                raise ValueError("data.labels is empty and there is no data.train_file to learn them from")
            d.labels = [str(x) for x in LabelMap.from_values(tr[1]).names]
        labels = LabelMap(d.labels)
        encoder = build_encoder(IMAGE_ENCODERS, cfg.model.image, "model.image")
        m = cfg.model
        task = ImageClassificationTask(encoder, len(labels), m.dropout, m.label_smoothing,
                                       batch_mix(d.augment, len(labels)), m.ema_decay)
        counters: dict[str, int] = {}
        train_tf = classification_transforms(encoder.preprocess, d.augment, train=True)
        eval_tf = classification_transforms(encoder.preprocess, d.augment, train=False)
        train_ds = _dataset(tr, labels, train_tf, cfg, d.train_file, counters) if train else None
        eval_ds = _dataset(ev, labels, eval_tf, cfg, d.eval_file or f"{d.train_file} (eval split)", counters)
        return Prepared(task, train_ds, eval_ds, ImageCollator(), counters=counters)

    @staticmethod
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
