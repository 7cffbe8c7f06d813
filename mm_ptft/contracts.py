"""The contracts every layer agrees on: a ``Task`` the trainer runs, what a recipe ``Prepared`` for it,
the ``Recipe`` protocol, ``Metrics``, training ``Callback`` hooks and a task's ``ExportSpec``.

**Device stage of a collate.** A recipe's collate function may also have ``on_device(batch, device) -> batch``:
work that must run where the model runs, after the batch has reached it (``data.decode_on=device``: decoding
JPEG bytes and running the augmentations there). Whoever moves a batch to its device calls ``on_device(collate,
batch, device)`` after ``to_device`` (the trainer for every train and eval batch; export, predict-like helpers);
it returns the batch unchanged for a collate without that stage. Per-sample skip counts (``types.COUNTS``) the
stage adds are taken off the batch after it.

Ground floor: this module imports nothing of ours, so encoders, heads, data, the trainer and the
recipes can all depend on it without depending on each other."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Optional, Protocol, Sequence, runtime_checkable

import torch
from torch import nn
from torch.utils.data import Dataset


class Metrics(Protocol):
    """Accumulates eval outputs; ``compute`` returns metric name → float (synced across ranks)."""

    def update(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> None: ...

    def compute(self) -> dict[str, float]: ...

    def to(self, device: torch.device) -> "Metrics": ...


@runtime_checkable
class EncoderLike(Protocol):
    """What fine-tuning strategies, saving and export need of an encoder (``encoders.base.Encoder``)."""

    modality: str
    out_dim: int

    def lora_targets(self) -> list[str]: ...

    def set_grad_checkpointing(self, enabled: bool = True) -> None: ...

    def save_pretrained(self, path: Any) -> None: ...


@dataclass
class ExportSpec:
    """What a task's exported graph takes and returns, and what a server needs to know about it."""

    keys: list[str]  # batch keys, in input order
    outputs: list[str]  # output names, in order
    output_axes: dict[str, dict[int, str]]  # output name → dynamic axes
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. vocab + decoding, or postprocessing


class ExportError(ValueError):
    """A run that cannot be exported as asked; the message names the model part and the reason."""


def export_spec(task: nn.Module) -> ExportSpec:
    """The task's own inputs and outputs; an error naming the task where it has no export path."""
    try:
        return task.export_spec()
    except (AttributeError, NotImplementedError):
        raise ExportError(f"{type(task).__name__}: export supports classification (text/image/audio), CTC speech "
                          f"recognition and multimodal classification tasks (any Task with export_spec and "
                          f"export_forward), not this one") from None


class Task(nn.Module):
    """A trainable model. In training ``forward(batch)`` returns ``{"loss": total, "<part>_loss": …}``;
    in eval mode it returns what ``build_metrics()`` consumes (and ``loss`` where labels exist)."""

    main_metric: str = "loss"
    greater_is_better: bool = True

    def train(self, mode: bool = True) -> "Task":
        """``nn.Module.train``, except that frozen parts stay in eval mode (see ``keep_frozen_in_eval``).
        Wrappers (DDP, FSDP2, ``torch.compile``) reach this through ``nn.Module.train`` of their child."""
        super().train(mode)
        if mode:
            keep_frozen_in_eval(self)
        return self

    def build_metrics(self) -> Metrics:
        raise NotImplementedError

    def encoders(self) -> dict[str, nn.Module]:
        """Modality → encoder, for fine-tuning strategies and for saving encoder directories."""
        return {m.modality: m for m in self.modules() if m is not self and isinstance(m, EncoderLike)}

    def export_spec(self) -> ExportSpec:
        """Inputs/outputs of ``export_forward``; tasks that export override both."""
        raise NotImplementedError(f"{type(self).__name__} has no export path")

    def export_forward(self, batch: dict[str, torch.Tensor]) -> Any:
        """Plain tensors in (``export_spec().keys``), the outputs named by ``export_spec().outputs`` out."""
        raise NotImplementedError(f"{type(self).__name__} has no export path")

    def export_hf(self) -> nn.Module:
        """A transformers ``*For<Task>`` model (weights and labels set) computing what ``export_forward`` computes,
        for ``mm-ptft export --format hf``; NotImplementedError with the reason where none fits."""
        raise NotImplementedError(f"{type(self).__name__}: no transformers class computes this task")

    def export_hf_files(self, path: Any, max_length: Optional[int] = None) -> None:
        """Save what the transformers model needs beside it (tokenizer, processor): each encoder's own, by default
        (``max_length``: the token limit the run truncates to)."""
        for enc in self.encoders().values():
            enc.hf_save_processing(path, max_length)


def frozen_parts(module: nn.Module) -> list[nn.Module]:
    """The outermost sub-modules (``module`` itself included) that hold parameters and train none."""
    params = list(module.parameters())
    if params and not any(p.requires_grad for p in params):
        return [module]
    return [part for child in module.children() for part in frozen_parts(child)]


def keep_frozen_in_eval(module: nn.Module) -> None:
    """Put every frozen part of ``module`` in eval mode: a linear-probed encoder, the layers
    ``freeze_layers`` froze, the BatchNorms beside LoRA adapters, a distillation teacher. Their
    BatchNorm running statistics (and counters) then stay as loaded and their dropout is off;
    parameter-free modules among trainable ones (a head's dropout) keep training mode."""
    for part in frozen_parts(module):
        part.eval()


class Callback:
    """Training hooks; the trainer calls each with itself. Subclass and override what you need. Setting
    ``trainer.should_stop = True`` ends the run after the current step; a callback that also has
    ``state_dict()``/``load_state_dict(state)`` (plain values) keeps its state in checkpoints across a resume.

    ``every_step = True``: ``on_step_end`` follows every optimizer step, a skipped NaN/Inf one too (a step timer;
    ``trainer.found_inf``, a 0-d device tensor, is 1.0 after a skipped step: gate device work on it, never read it).
    Otherwise it follows only steps that changed the weights, so the trainer must learn each step's verdict on the
    host: one device sync per step while such a callback overrides ``on_step_end``.

    A callback that ends the run between log steps (e.g. preemption) calls ``trainer.log_train()`` first, so the steps
    since the last ``train`` row are logged, and ``trainer.save_checkpoint()`` to keep them (both collectives under
    torchrun: every rank calls them at the same step)."""

    every_step: bool = False

    def on_train_start(self, trainer: Any) -> None: ...

    def on_step_end(self, trainer: Any) -> None:
        """After an optimizer step that changed the weights (``every_step``: after every optimizer step)."""

    def on_evaluate(self, trainer: Any, results: dict[str, float]) -> None: ...

    def on_save(self, trainer: Any, path: Optional[Any]) -> None: ...

    def on_train_end(self, trainer: Any, results: dict[str, float]) -> None: ...


def on_device(collate: Any, batch: Any, device: torch.device) -> Any:
    """``collate.on_device(batch, device)`` where the collate has a device stage (see the module docstring), else
    ``batch`` as it is."""
    stage = getattr(collate, "on_device", None)
    return stage(batch, device) if stage is not None else batch


def parity_batch(prepared: Any, fmt: str, n: int = 16) -> Any:
    """The first ``n`` evaluation samples of a prepared run, collated (rows of different lengths padded) and put
    through the collate's device stage on the CPU: what an export checks its model against. ExportError when the
    run has no evaluation data."""
    data = prepared.eval_data
    if data is None or len(data) == 0:
        raise ExportError(f"--format {fmt}: the run has no evaluation data to check the exported model against "
                          f"(export with the run's data present)")
    batch = prepared.collate([data[i] for i in range(min(len(data), n))])
    return on_device(prepared.collate, batch, torch.device("cpu"))


GENERATION_STRATEGIES = ("greedy", "beam", "sample")


@dataclass
class GenerationConfig:
    """How a generative task decodes, in evaluation and in ``predict``: always through the model's own ``generate``,
    at most ``max_new_tokens`` new tokens per sample. ``strategy``: greedy, beam (``num_beams``) or sample
    (``temperature``, ``top_k``, ``top_p``; seeded by ``seed`` on every call, so eval and predict repeat)."""

    RANGES: ClassVar[dict[str, str]] = {"max_new_tokens": ">0", "num_beams": ">0", "temperature": ">0",
                                        "top_k": ">=0", "top_p": "(0,1]"}  # checked by config.parse
    max_new_tokens: int = 32
    strategy: str = "greedy"  # greedy | beam | sample
    num_beams: int = 4
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    top_p: float = 1.0
    seed: int = 0

    def hf_kwargs(self, where: str = "generation") -> dict[str, Any]:
        """The keyword arguments of transformers' ``generate`` for this strategy (ValueError naming the key)."""
        if self.strategy not in GENERATION_STRATEGIES:
            raise ValueError(f"{where}.strategy={self.strategy!r}; choose one of {list(GENERATION_STRATEGIES)}")
        out: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.strategy == "sample",
                               "num_beams": self.num_beams if self.strategy == "beam" else 1}
        if self.strategy == "sample":
            out.update(temperature=self.temperature, top_k=self.top_k or None, top_p=self.top_p)
        return out


@runtime_checkable
class GenerativeTask(Protocol):
    """A task that writes text. ``generate(batch, gen)`` decodes the batch's prompts (``gen`` bounds and picks the
    decoding) and returns one string per sample, the prompt left out. In eval mode such a task's forward returns
    ``{"loss", ..., "generated": list[str]}`` batch by batch, and its metrics consume the strings as they come
    (per-sample scores summed on the fly): no logits are kept past their batch, so a big eval set is safe."""

    generation: GenerationConfig

    def generate(self, batch: Mapping[str, Any], gen: Optional[GenerationConfig] = None) -> list[str]: ...


@dataclass
class Prepared:
    """Everything a recipe hands the trainer."""

    task: Task
    train_data: Optional[Dataset]
    eval_data: Optional[Dataset]
    collate: Callable[[list[Any]], dict[str, Any]]
    train_lengths: Optional[Sequence[int]] = None  # for length-grouped batching
    eval_lengths: Optional[Sequence[int]] = None
    counters: dict[str, int] = field(default_factory=dict)  # skipped/dropped/truncated samples
    callbacks: list[Callback] = field(default_factory=list)  # the task's own hooks (e.g. EMA updates)


class Recipe(Protocol):
    """A registered recipe: its config schema, ``prepare`` (model + data), ``predict`` (raw inputs) and
    ``exported`` (the task and config a run exports)."""

    config_cls: type

    def prepare(self, cfg: Any, train: bool = True) -> Prepared: ...

    def predict(self, cfg: Any, prepared: Prepared, inputs: list[Any]) -> list[dict[str, Any]]: ...

    def exported(self, cfg: Any, prepared: Prepared) -> tuple[Task, Any]: ...


class BaseRecipe:
    """Defaults for the optional parts of ``Recipe``: subclass it and write ``config_cls`` and ``prepare``."""

    config_cls: type

    @staticmethod
    def predict(cfg: Any, prepared: Prepared, inputs: list[Any]) -> list[dict[str, Any]]:
        raise NotImplementedError(f"{getattr(cfg, 'task', '?')}: this recipe has no predict")

    @staticmethod
    def exported(cfg: Any, prepared: Prepared) -> tuple[Task, Any]:
        """The task (and its config) that ``mm-ptft export`` writes: the run's own."""
        return prepared.task, cfg


__all__ = ["BaseRecipe", "Callback", "EncoderLike", "ExportSpec", "GenerationConfig", "GenerativeTask", "Metrics", "Prepared", "Recipe", "Task", "on_device"]
