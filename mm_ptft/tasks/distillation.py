"""Knowledge distillation: a frozen teacher (a trained classification run) teaches a student built from the
teacher's task with another ``model`` section, on the teacher task's data.

loss = alpha * KL(softmax(teacher / T) || softmax(student / T)) * T**2 + (1 - alpha) * cross-entropy
(Hinton et al., 2015). The student is an ordinary task of the teacher's kind: its encoders are saved
with the run and ``mm-ptft export`` exports the student alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict

from omegaconf import OmegaConf
from torch import nn

from mm_ptft.config import ConfigError, RunConfig, parse
from mm_ptft.contracts import Prepared
from mm_ptft.heads.distillation import DistillationTask
from mm_ptft.tasks import get_recipe, recipe
from mm_ptft.tasks.common import load_run

#: teacher tasks whose outputs carry class ``logits`` over ``data.labels``
SUPPORTED = ("text_classification", "image_classification", "multimodal_classification")


@dataclass
class DistillModel:
    RANGES: ClassVar[dict[str, str]] = {"alpha": "[0,1]", "temperature": ">0"}  # checked by config.parse
    teacher_run: str = ""  # a trained run directory (its config.yaml + best checkpoint)
    teacher_checkpoint: str = ""  # empty: the teacher run's best checkpoint
    student: Dict[str, Any] = field(default_factory=dict)  # the teacher task's ``model`` section for the student
    alpha: float = 0.5  # weight of the distillation term; 1 - alpha weighs the cross-entropy
    temperature: float = 2.0


@dataclass
class DistillationConfig(RunConfig):
    task: str = "distillation"
    data: Dict[str, Any] = field(default_factory=dict)  # the teacher task's data keys to change (empty: the same data)
    model: DistillModel = field(default_factory=DistillModel)


def student_config(cfg: DistillationConfig, teacher_cfg: Any) -> Any:
    """The teacher task's config with the student's model section, the run's output/seed/training keys and
    the teacher's labels (and, unless the student names its own, the teacher's text tokenizer)."""
    teacher = OmegaConf.structured(teacher_cfg)
    model = dict(cfg.model.student)
    if not model:
        raise ConfigError("model.student is empty: give the student's model section, e.g. "
                          "{text: {name: tiny, dim: 32, depth: 1}}")
    text = model.get("text")
    t_text = getattr(teacher_cfg.model, "text", None) or {}
    tok = t_text.get("tokenizer") or t_text.get("name_or_path")
    if isinstance(text, dict) and tok and not text.get("tokenizer") and not text.get("name_or_path"):
        model["text"] = {**text, "tokenizer": tok}  # same token ids for both (checked after building)
    try:
        data = OmegaConf.merge(teacher.data, cfg.data)
    except Exception as err:
        raise ConfigError(f"data: {err}") from None
    data.labels = list(teacher_cfg.data.labels)
    source = {"task": teacher_cfg.task, "output_dir": cfg.output_dir, "seed": cfg.seed,
              "train": OmegaConf.structured(cfg.train), "optim": OmegaConf.structured(cfg.optim),
              "sched": OmegaConf.structured(cfg.sched), "finetune": OmegaConf.structured(cfg.finetune),
              "data": data, "model": model}
    return parse(get_recipe(teacher_cfg.task).config_cls, source)


def _check_same_vocab(student: nn.Module, teacher: nn.Module) -> None:
    """Student and teacher read one batch of token ids: their text tokenizers must share the vocabulary."""
    toks = [getattr(t.encoders().get("text"), "tokenizer", None) for t in (student, teacher)]
    if None in toks:
        return
    vocabs = [t.get_vocab() if hasattr(t, "get_vocab") else len(t) for t in toks]
    if vocabs[0] != vocabs[1]:
        raise ConfigError(f"model.student.text: the student's tokenizer ({len(toks[0])} tokens) differs from the "
                          f"teacher's ({len(toks[1])} tokens); both read the same token ids, so leave "
                          f"model.student.text.tokenizer unset (the teacher's is used) or give a compatible one")


def prepare(cfg: DistillationConfig, train: bool = True) -> Prepared:
    """Load the teacher run (frozen), build the student from the teacher's recipe, pair them."""
    m = cfg.model
    if not m.teacher_run:
        raise ConfigError("model.teacher_run is empty: give a trained classification run directory")
    teacher_cfg, teacher_prep, _ = load_run(m.teacher_run, checkpoint=m.teacher_checkpoint or None)
    if teacher_cfg.task not in SUPPORTED:
        raise ConfigError(f"model.teacher_run={m.teacher_run} is a {teacher_cfg.task} run; distillation "
                          f"supports teachers of {list(SUPPORTED)}")
    scfg = student_config(cfg, teacher_cfg)
    student = get_recipe(scfg.task).prepare(scfg, train=train)
    pre_s = getattr(student.task.encoders().get("image"), "preprocess", None)
    pre_t = getattr(teacher_prep.task.encoders().get("image"), "preprocess", None)
    same = lambda a, b: (a.size, a.mean, a.std) == (b.size, b.mean, b.std)  # noqa: E731
    if pre_s is not None and pre_t is not None and not same(pre_s, pre_t):
        raise ConfigError(f"model.student.image: input {pre_s.size} mean {pre_s.mean} std {pre_s.std} differs from "
                          f"the teacher's {pre_t.size} {pre_t.mean} {pre_t.std}: both see the same image tensor")
    _check_same_vocab(student.task, teacher_prep.task)
    cfg.data = OmegaConf.to_container(OmegaConf.structured(scfg.data))  # resolved: saved in config.yaml
    task = DistillationTask(student.task, teacher_prep.task, m.alpha, m.temperature)
    task.student_config = scfg
    return Prepared(task, student.train_data, student.eval_data, student.collate, student.train_lengths,
                    student.eval_lengths, student.counters, student.callbacks)


def predict(cfg: DistillationConfig, prepared: Prepared, inputs: list[Any]) -> list[dict[str, Any]]:
    """The student's predictions, as its task's recipe makes them."""
    task: DistillationTask = prepared.task  # type: ignore[assignment]
    scfg = task.student_config
    student = Prepared(task.student, prepared.train_data, prepared.eval_data, prepared.collate)
    return list(get_recipe(scfg.task).predict(scfg, student, inputs))



def exported(cfg: DistillationConfig, prepared: Prepared) -> tuple[nn.Module, Any]:
    """A distilled run exports its student, described by the student's config."""
    task: DistillationTask = prepared.task  # type: ignore[assignment]
    return task.student, task.student_config


Distillation = recipe(DistillationConfig, prepare, predict, exported)


__all__ = ["Distillation", "DistillationConfig", "student_config"]
