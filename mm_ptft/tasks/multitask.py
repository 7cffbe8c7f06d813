"""Multi-task fine-tuning: several single-task recipes trained together on one shared encoder per modality.

Each entry of ``tasks`` names a registered recipe (``text_classification``, ``text_regression``,
``speech_recognition``, ``image_classification``, ...) with that recipe's own ``data`` and ``model`` sections
(less the encoders, which are the top-level ``model.text/image/audio``). The recipe's own ``prepare`` builds
its data and head, with the shared encoders handed to it (``encoders.base.shared_encoders``). Training draws
the tasks' samples by ``data.sampling``: ``proportional`` (p_i ∝ n_i), ``temperature`` (p_i ∝ n_i^(1/T)),
both as mixed batches ``{task: sub-batch}`` (joint pretraining's ``MixtureDataset``), or ``round_robin``
(whole batches of one task, in turn). The loss is Σ ``tasks.<t>.weight`` · ``<t>_loss``; one evaluation
reports every task's metrics as ``<t>/<metric>``; ``train.metric_for_best`` picks the one that selects the
best checkpoint (default: the weighted eval ``loss``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict

from mm_ptft.config import ConfigError, RunConfig, parse, to_dict
from mm_ptft.contracts import Prepared, Recipe
from mm_ptft.data.multimodal import MixtureCollator, MixtureDataset
from mm_ptft.data.multitask import RoundRobinDataset, TaskDataset, sampling_probs
from mm_ptft.data.tables import DataError
from mm_ptft.encoders.base import Encoder, shared_encoders
from mm_ptft.heads.multitask import MultiTask
from mm_ptft.tasks import get_recipe, recipe
from mm_ptft.tasks.common import load_splits
from mm_ptft.tasks.pretrain_common import EncoderSpecs, build_encoders

MODALITIES = ("audio", "image", "text")


@dataclass
class TaskEntry:
    RANGES: ClassVar[dict[str, str]] = {"weight": ">=0"}  # checked by config.parse
    recipe: str = ""  # a registered single-task recipe, e.g. text_classification
    weight: float = 1.0  # this task's loss weight
    data: Dict[str, Any] = field(default_factory=dict)  # that recipe's data section
    model: Dict[str, Any] = field(default_factory=dict)  # that recipe's model section, less the (shared) encoders


@dataclass
class MultiTaskData:
    RANGES: ClassVar[dict[str, str]] = {"temperature": ">0", "epoch_size": ">=0"}  # checked by config.parse
    sampling: str = "proportional"  # proportional | temperature | round_robin
    temperature: float = 2.0  # sampling=temperature: p_i ∝ n_i^(1/T)
    epoch_size: int = 0  # training samples per epoch over all tasks; 0: the sum of their sizes


@dataclass
class MultiTaskConfig(RunConfig):
    task: str = "multitask"
    tasks: Dict[str, TaskEntry] = field(default_factory=dict)
    data: MultiTaskData = field(default_factory=MultiTaskData)
    model: EncoderSpecs = field(default_factory=EncoderSpecs)  # one shared encoder per modality


def _sub_config(cfg: MultiTaskConfig, name: str, entry: TaskEntry) -> tuple[Recipe, Any]:
    """The named recipe and its own config, built from the entry's data/model and the run's shared sections."""
    if not entry.recipe or entry.recipe == cfg.task:
        raise ConfigError(f"tasks.{name}.recipe={entry.recipe!r}: name a single-task recipe, e.g. text_classification")
    if "/" in name:
        raise ConfigError(f"tasks.{name}: a task name may not contain '/' (metrics are named <task>/<metric>)")
    try:
        rec = get_recipe(entry.recipe)
    except KeyError as err:
        raise ConfigError(f"tasks.{name}.recipe: {err.args[0]}") from None
    own = sorted(set(entry.model) & set(MODALITIES))
    if own:
        raise ConfigError(f"tasks.{name}.model.{own[0]}: the tasks share one encoder per modality; "
                          f"set model.{own[0]} at the top level instead")
    shared = {k: to_dict(getattr(cfg, k)) for k in ("train", "optim", "sched", "finetune")}
    try:
        sub = parse(rec.config_cls, {"task": entry.recipe, "output_dir": cfg.output_dir, "seed": cfg.seed,
                                     **shared, "data": entry.data, "model": entry.model})
    except ConfigError as err:
        raise ConfigError(f"tasks.{name}: {err}") from None
    return rec, sub


def _modalities(cfg: MultiTaskConfig, name: str, sub: Any) -> list[str]:
    """The encoder modalities the task's recipe uses; each must be set at the top level."""
    used = [m for m in MODALITIES if hasattr(sub.model, m)
            and (getattr(sub.model, m) is not None or getattr(cfg.model, m) is not None)]
    for m in used:
        if getattr(cfg.model, m) is None:
            raise ConfigError(f"model.{m} is not set, but tasks.{name} ({sub.task}) needs a {m} encoder "
                              f"(e.g. model.{m}={{name: tiny}}; the tasks share it)")
    return used


def _corpus(cfg: MultiTaskConfig, subs: dict[str, Any], train: bool) -> list[str] | None:
    """Every text task's training texts, for a text encoder that learns its tokenizer (None otherwise)."""
    spec = cfg.model.text
    if not train or spec is None or spec.get("tokenizer") or spec.get("name_or_path"):
        return None
    texts: list[str] = []
    for sub in subs.values():
        column = getattr(sub.data, "text_column", None)
        table = load_splits(sub, True)[0] if column and hasattr(sub.model, "text") else None
        texts += [t for t in table[column] if t] if table is not None else []
    return texts


def _prepare_task(name: str, rec: Recipe, sub: Any, encoders: dict[str, Encoder], train: bool) -> Prepared:
    """The recipe's own ``prepare`` with the shared encoders handed to it."""
    try:
        with shared_encoders(encoders):
            prepared = rec.prepare(sub, train)
    except ValueError as err:  # the recipe's message names its key (data.train_file): say which task's
        if type(err) not in (ValueError, ConfigError, DataError):
            raise
        raise type(err)(f"tasks.{name} ({sub.task}): {err}") from err
    if getattr(sub.data, "streaming", False):
        raise ConfigError(f"tasks.{name}.data.streaming: multitask mixes its tasks by index and needs in-memory "
                          f"data; set it to false")
    own = sorted(m for m, enc in prepared.task.encoders().items() if encoders.get(m) is not enc)
    if own:
        raise ConfigError(f"tasks.{name} ({sub.task}) builds its own {own} encoder(s), which cannot be shared")
    return prepared


def _check_metric(cfg: MultiTaskConfig, eval_tasks: list[str]) -> None:
    m = cfg.train.metric_for_best
    if m and m != "loss" and m.split("/")[0] not in eval_tasks:
        raise ConfigError(f"train.metric_for_best={m!r}: use 'loss' or '<task>/<metric>' for a task with eval data "
                          f"({eval_tasks}), e.g. '{eval_tasks[0] if eval_tasks else 'task'}/accuracy'")


def prepare(cfg: MultiTaskConfig, train: bool = True) -> Prepared:
    """Shared encoders, each task's data and head from its own recipe, the sampled mixture of their data."""
    if not cfg.tasks:
        raise ConfigError("tasks is empty: name at least two, e.g. tasks={topic: {recipe: text_classification, "
                          "data: {...}}, score: {recipe: text_regression, data: {...}}}")
    subs = {n: _sub_config(cfg, n, e) for n, e in sorted(cfg.tasks.items())}
    uses = {n: _modalities(cfg, n, sub) for n, (_, sub) in subs.items()}
    corpus = _corpus(cfg, {n: sub for n, (_, sub) in subs.items()}, train)
    encoders = build_encoders(cfg.model, sorted({m for ms in uses.values() for m in ms}), cfg.output_dir, corpus)
    prepared = {}
    for n, (rec, sub) in subs.items():
        for m in uses[n]:
            setattr(sub.model, m, dict(getattr(cfg.model, m)))  # the shared spec (with its tokenizer), for the record
        prepared[n] = _prepare_task(n, rec, sub, encoders, train)
        entry = cfg.tasks[n]  # what the recipe learned (labels, target scale, files) goes into the run's config
        entry.data = to_dict(sub.data)
        entry.model = {k: v for k, v in to_dict(sub.model).items() if k not in MODALITIES}
    evals = {n: p.eval_data for n, p in prepared.items() if p.eval_data is not None}
    if train:
        _check_metric(cfg, sorted(evals))
    task = MultiTask({n: p.task for n, p in prepared.items()}, {n: e.weight for n, e in cfg.tasks.items()}, list(evals))
    counters = {f"{n}/{k}": v for n, p in prepared.items() for k, v in p.counters.items()}
    tr = _train_data(cfg, {n: p.train_data for n, p in prepared.items()}, counters) if train else None
    collate = MixtureCollator({n: p.collate for n, p in prepared.items()})  # {task: sub-batch}, each its recipe's way
    return Prepared(task, tr, TaskDataset(evals) if evals else None, collate, counters=counters,
                    callbacks=[cb for p in prepared.values() for cb in p.callbacks])


def _train_data(cfg: MultiTaskConfig, parts: dict[str, Any], counters: dict[str, int]) -> Any:
    """The tasks' training sets drawn by ``data.sampling``; the samples per task per epoch go into ``counters``."""
    missing = sorted(n for n, p in parts.items() if p is None)
    if missing:
        raise ConfigError(f"tasks.{missing[0]}.data: no training data (set its train_file or generate)")
    d = cfg.data
    probs = sampling_probs({n: len(p) for n, p in parts.items()}, d.sampling, d.temperature)
    if d.sampling == "round_robin":
        return RoundRobinDataset(parts, d.epoch_size)
    mix = MixtureDataset(parts, probs, d.epoch_size, cfg.seed)
    counters.update({f"epoch_samples_{n}": c for n, c in mix.counts().items()})
    return mix


def predict(cfg: MultiTaskConfig, prepared: Prepared, inputs: list[Any]) -> list[dict[str, Any]]:
    """Every task's own prediction (its recipe's ``predict``) of each input: ``{task: prediction}`` per input.
    The inputs must suit every task (e.g. texts for text tasks)."""
    rows: list[dict[str, Any]] = [{} for _ in inputs]
    for name, entry in sorted(cfg.tasks.items()):
        rec, sub = _sub_config(cfg, name, entry)
        own = Prepared(prepared.task.tasks[name], None, None, prepared.collate.collate_of(name))
        for row, pred in zip(rows, rec.predict(sub, own, inputs)):
            row[name] = pred
    return rows


Multitask = recipe(MultiTaskConfig, prepare, predict)
