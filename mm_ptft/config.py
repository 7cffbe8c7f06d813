"""Run configuration: dataclass schemas filled from a recipe YAML plus ``key.sub=value`` overrides.

OmegaConf structured configs do the parsing and type checking; this module turns their errors
into one-line messages that name the offending key.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, Mapping, Optional, Sequence, TypeVar, Union

import yaml
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

C = TypeVar("C", bound="RunConfig")


class ConfigError(ValueError):
    """A config problem; the message names the key."""


def redacted(value: str) -> str:
    """``value`` without what a URL may carry of a credential: the ``user:password@`` part, the query string (a
    presigned URL's signature) and the fragment; anything not a URL is returned as it is. Config files, logs and
    messages show this form."""
    if not isinstance(value, str) or "://" not in value:
        return value
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(value)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


# ---- value ranges ------------------------------------------------------------------------------
# A config section declares the valid range of its numeric keys in one class attribute,
#     RANGES: ClassVar[dict[str, str]] = {"batch_size": ">0", "dropout": "[0,1)", "eval_fraction": "(0,1)"}
# (a comparison ``>0``/``>=0``/``>=-1``/``<=1`` or an interval with ``[``/``(`` ends; a list value has
# each item checked). ``parse`` checks every section after the type check, so a bad value is a
# ConfigError naming the key before anything is built, never a crash mid-training. A key that also takes
# a word (``num_workers: auto``) names its words in ``WORDS: ClassVar[dict[str, tuple[str, ...]]]``.
_CMP = re.compile(r"^(>=|>|<=|<)\s*(-?[\d.]+(?:e-?\d+)?)$")
_INTERVAL = re.compile(r"^([\[(])\s*(-?[\d.inf]+)\s*,\s*(-?[\d.inf]+)\s*([\])])$")


def in_range(spec: str, value: Any) -> bool:
    """Whether the number ``value`` satisfies the range ``spec`` (NaN never does)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return False
    m = _CMP.match(spec)
    if m:
        op, bound = m.group(1), float(m.group(2))
        return {">": value > bound, ">=": value >= bound, "<": value < bound, "<=": value <= bound}[op]
    m = _INTERVAL.match(spec)
    if not m:
        raise ValueError(f"bad range spec {spec!r}")
    lo, hi = float(m.group(2)), float(m.group(3))
    return (value >= lo if m.group(1) == "[" else value > lo) and (value <= hi if m.group(4) == "]" else value < hi)


def declared(cls: type, attr: str) -> dict[str, Any]:
    """A section's ``RANGES``/``WORDS`` merged down its class hierarchy: each class's own declaration (in its
    ``__dict__``) over its bases', so a subclass adds or overrides the ranges of its own keys only."""
    merged: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        merged.update(vars(klass).get(attr, {}))
    return merged


class Section:
    """Base of config sections that share keys: a subclass's ``RANGES``/``WORDS`` become the merged declaration
    (``declared``), so ``Sub.RANGES`` lists every ranged key it has, its bases' included."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.RANGES, cls.WORDS = declared(cls, "RANGES"), declared(cls, "WORDS")


@dataclass
class SplitData(Section):
    """The data keys of every recipe that reads a training file: its eval split and generated data. Recipes
    subclass it (with ``StreamingData``/``SkipBadSamples`` where they support those) and document which file
    formats their ``train_file`` takes."""

    RANGES: ClassVar[dict[str, str]] = {"eval_fraction": "(0, 1)", "remote_cache_gb": ">0", "remote_retries": ">=0"}
    train_file: str = ""  # also s3:// gs:// az:// https:// URLs (data/remote.py)
    eval_file: str = ""  # empty: a seeded split of train_file (eval_fraction)
    eval_fraction: float = 0.1
    generate: Optional[Dict[str, Any]] = None  # {name: <data generator>, ...}: generated data
    remote_cache_dir: str = ""  # local copies of remote map-style files; empty: ~/.cache/mm_ptft/remote
    remote_cache_gb: float = 20.0  # the local copies' size limit (least recently used evicted first)
    remote_retries: int = 5  # a remote read failing transiently is retried this often, with exponential backoff


@dataclass
class StreamingData(Section):
    """Keys of a recipe that can stream its shards."""

    RANGES: ClassVar[dict[str, str]] = {"shuffle_block": ">0"}
    streaming: bool = False  # read shards lazily (data bigger than memory); needs train.max_steps
    shuffle_block: int = 1000  # streaming: records shuffled together (a block is re-read on resume)


@dataclass
class SkipBadSamples(Section):
    """The key of a recipe that can drop unreadable samples and count them instead of stopping."""

    skip_bad_samples: bool = False


def validate(cfg: Any, prefix: str = "") -> None:
    """Check every key with a declared range (``RANGES``, merged down the class hierarchy) in ``cfg`` and its
    nested sections."""
    ranges, words = declared(type(cfg), "RANGES"), declared(type(cfg), "WORDS")
    for f in dataclasses.fields(cfg):
        value, key = getattr(cfg, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            validate(value, key + ".")
        elif isinstance(value, dict):
            for k, v in value.items():
                if dataclasses.is_dataclass(v):
                    validate(v, f"{key}.{k}.")
        spec = ranges.get(f.name)
        if spec is None or value is None:
            continue
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        allowed = words.get(f.name, ())
        for item in items:
            if item not in allowed and not in_range(spec, item):
                what = f"{item!r} in {key}={value!r}" if isinstance(value, (list, tuple)) else f"{key}={value!r}"
                must = f"{spec} or one of {list(allowed)}" if allowed else spec
                raise ConfigError(f"bad value for config key '{key}': {what} is out of range (must be {must})")


#: ``train.compile`` values besides false/true (true means "default"): ``torch.compile``'s modes. reduce-overhead and
#: max-autotune also replay CUDA graphs on a CUDA device (static shapes, no host syncs inside the model's forward).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_mode(value: Union[bool, str]) -> Optional[str]:
    """``train.compile`` as a ``torch.compile`` mode: None when off, "default" for true; else a ConfigError."""
    if value is False or value is True:
        return "default" if value else None
    if value in COMPILE_MODES:
        return value
    raise ConfigError(f"bad value for config key 'train.compile': {value!r}; choose one of false, true, "
                      + ", ".join(COMPILE_MODES))


@dataclass
class TrainConfig:
    RANGES: ClassVar[dict[str, str]] = {
        "epochs": ">=0", "max_steps": ">=-1", "batch_size": ">0", "eval_batch_size": ">=0", "grad_accum_steps": ">0",
        "grad_clip": ">=0", "eval_every": ">=0", "log_every": ">0", "save_every": ">=0", "keep_last": ">=0",
        "save_every_minutes": ">=0",
        "early_stopping_patience": ">=0", "max_bad_steps": ">0", "num_workers": ">=0",
        "prefetch_factor": ">0", "threads": ">=0"}
    WORDS: ClassVar[dict[str, tuple[str, ...]]] = {"num_workers": ("auto",)}
    epochs: int = 1
    max_steps: int = -1  # optimizer steps; -1: run ``epochs`` full epochs
    batch_size: int = 32
    eval_batch_size: int = 0  # 0: same as batch_size
    grad_accum_steps: int = 1
    grad_clip: float = 1.0  # 0 disables clipping
    precision: str = "auto"  # auto (bf16 where the hardware has it, else fp32) | fp32 | bf16 | fp16 (GradScaler on CUDA)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    eval_every: int = 0  # steps between evaluations; 0: once per epoch
    log_every: int = 10  # steps per train log (its losses, rate and times cover the steps since the last); NaN/Inf checks
    save_every: int = 0  # steps between checkpoints; 0: at every evaluation
    # also a checkpoint once this many minutes have passed since the last one (0: off); under torchrun the ranks agree
    # every log_every steps (with the preemption flag, in one all_reduce)
    save_every_minutes: float = 0.0
    keep_last: int = 2  # checkpoints kept besides the best one
    # write checkpoints on a background thread: the step waits only for a CPU copy of the weights + trainer state
    # (memory: one more copy of them), the write (same files, same atomic rename and keep_last) overlaps the next
    # steps; one write in flight, a failed write stops the run at the next step. FSDP: the gather stays a collective
    async_save: bool = False
    # signals that preempt the run (names): at the next optimizer step a checkpoint is written, a `preempted` row
    # logged, and the process exits with mm_ptft.train.preempt.PREEMPTED_EXIT (143); [] disables. SIGINT (Ctrl-C)
    # always does the same once; a second Ctrl-C aborts. Under torchrun the ranks agree every log_every steps
    preempt_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])
    requeue: str = "off"  # off | auto: on preemption under SLURM (SLURM_JOB_ID set), `scontrol requeue $SLURM_JOB_ID`
    resume: bool = False  # continue from the latest good checkpoint in output_dir
    overwrite_output_dir: bool = False  # replace a previous run in output_dir (else it is refused)
    on_config_change: str = "error"  # resume with a config that differs from the run's: error | new (apply it)
    metric_for_best: str = ""  # default: the task's main metric
    greater_is_better: bool = True
    early_stopping_patience: int = 0  # shorthand for callbacks: [{name: early_stopping, patience: N}]; 0: off
    callbacks: list[dict[str, Any]] = field(default_factory=list)  # [{name: <callback registry key>, ...kwargs}]
    report_to: list[str] = field(default_factory=lambda: ["tensorboard", "jsonl"])  # + wandb, mlflow (extras);
    # metrics.jsonl is written whatever this says: it is part of the run directory
    max_bad_steps: int = 20  # consecutive non-finite steps before the run stops (checked at log/eval/save steps)
    undo_skips: bool = False  # optimizers without a fused found_inf skip (non-fused SGD, RAdam, Lion...): skip a
    # NaN/Inf step on the device by restoring a pre-step copy of params + state (a copy per step, their memory
    # once) instead of a host sync per step (benchmarks/step_skip.py measures both)
    # loader worker processes, capped at the CPUs this process may use; auto: sized before the first step from a
    # measured rate (samples/s one worker makes vs samples/s the step takes), kept by a resumed run
    num_workers: Union[int, str] = 0
    persistent_workers: bool = True  # with num_workers > 0: keep the workers between epochs (no restart per epoch;
    # their random streams then run on across epochs, so worker-side augmentation is not reseeded each epoch)
    prefetch_factor: int = 2  # with num_workers > 0: batches each worker loads ahead
    # intra-op CPU threads; 0: sized at the run's first start, the CPUs this process may use (affinity, cgroup quota)
    # less those other processes keep busy now (their CPU use during start-up), / processes on this node, unless
    # OMP_NUM_THREADS is set in the environment (then it wins); recorded in the checkpoints, and a resume computes with
    # the recorded count (so bit-identical to a straight run). Loader workers run 1 thread each
    threads: int = 0
    group_by_length: bool = True  # length-grouped batches (randomised mega-batches) where lengths exist
    # CPU, one process, no compile: large trainable embedding tables (>= 1M values, e.g. a 30k-word vocabulary) take
    # sparse row gradients written into a kept dense buffer instead of a fresh zero-filled (V, D) gradient per step
    # (the same gradient; mm_ptft/train/row_grads.py). false: the plain dense backward
    sparse_embedding_grads: bool = True
    # torch.compile the model: false | true (= default) | default | reduce-overhead | max-autotune |
    # max-autotune-no-cudagraphs (see mm_ptft/train/compiling.py). reduce-overhead/max-autotune record CUDA graphs on
    # CUDA (one per batch shape: bound the shapes, e.g. data.pad_to_multiple_of); on CPU they compile like default
    # (reduce-overhead warns). Off by default: on CPU it never paid back its compile time for text and barely did for
    # a small ViT (benchmarks/RESULTS.md § torch.compile); the CUDA figures come from benchmarks/compile_speed.py.
    compile: Union[bool, str] = False
    # torch.compile(dynamic=...): None (torch's automatic dynamic: the first shape compiles static, a changed
    # dimension recompiles it as dynamic), true (dynamic from the first compile: one training graph for length-grouped
    # text whatever the first length), false (a graph per shape, until torch's recompile limit)
    compile_dynamic: Optional[bool] = None
    grad_checkpointing: bool = False
    distributed: str = "ddp"  # ddp | fsdp (used when launched by torchrun)
    deterministic: bool = False
    report: bool = True  # write report.md with plots at the end

    def __post_init__(self) -> None:
        compile_mode(self.compile)  # a bad train.compile fails when the config is parsed, before anything is built


@dataclass
class OptimConfig:
    RANGES: ClassVar[dict[str, str]] = {"lr": ">0", "weight_decay": ">=0", "betas": "[0,1)", "eps": ">=0",
                                        "momentum": "[0,1]", "l1": ">=0"}
    name: str = "adamw"  # adamw | adam | sgd | torch.<class> (torch.RAdam, ...) | timm's names (lamb, lion, ...)
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    momentum: float = 0.9  # sgd (and timm's momentum optimizers) only
    fused: Optional[bool] = None  # None: fused kernels where the device supports them
    l1: float = 0.0  # L1 penalty l1 * sum|w| over trainable weights (not biases/norms), logged as l1_loss
    # further arguments of the optimizer class (e.g. {amsgrad: true}; torch.*/timm optimizers take betas/eps here:
    # optim.betas/eps apply to adamw/adam only); a key the class lacks is an error naming optim.kwargs.<key>
    kwargs: Dict[str, Any] = field(default_factory=dict)


@dataclass
class SchedConfig:
    RANGES: ClassVar[dict[str, str]] = {"warmup_steps": ">=0", "gamma": "(0,1]", "step_size": ">0", "power": ">0",
                                        "lr_end": ">=0"}
    name: str = "linear"  # constant | linear | cosine | exponential | step | polynomial (all with warmup)
    warmup_steps: int = 0
    gamma: float = 0.1  # step: lr *= gamma every step_size steps; exponential: every step (e.g. 0.999)
    step_size: int = 100  # step: optimizer steps between decays (counted after warmup)
    power: float = 1.0  # polynomial: decay exponent (1 = linear to lr_end)
    lr_end: float = 0.0  # polynomial: the lr at the last step (absolute, <= optim.lr)


@dataclass
class FinetuneConfig:
    RANGES: ClassVar[dict[str, str]] = {"freeze_layers": ">=0", "llrd_decay": "(0,1]", "lora_r": ">0",
                                        "lora_alpha": ">0", "lora_dropout": "[0,1)"}
    strategy: str = "full"  # full | linear_probe | freeze_layers | freeze_encoder | llrd | lora
    freeze_layers: int = 0  # freeze_layers: embeddings + the first N encoder layers
    llrd_decay: float = 0.75  # llrd: lr * decay**(depth from the top)
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=list)  # empty: attention projections, found by name
    # continual fine-tuning: {name: l2_sp | ewc, weight: λ, fisher_from: RUN_DIR (ewc), fisher_samples: 256}
    regularize: Optional[Dict[str, Any]] = None


@dataclass
class RehearsalConfig:
    """``data.rehearsal``: a seeded sample of an earlier task's training rows mixed into this run's training set
    (class-incremental: the label set is the union; ``source``, not ``from``, which Python reserves)."""

    RANGES: ClassVar[dict[str, str]] = {"fraction": "(0,1]", "max_samples": ">=0"}
    source: str = MISSING  # an earlier run directory (its training rows, eval split excluded) or a data file
    fraction: float = 0.2  # of the earlier training rows
    max_samples: int = 0  # cap on the rows mixed in; 0: no cap
    seed: int = 0


@dataclass
class RunConfig:
    """Keys every recipe has. Tasks subclass it and add typed ``data`` and ``model`` sections."""

    task: str = MISSING
    output_dir: str = "runs/default"
    seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


def _explain(err: OmegaConfBaseException) -> ConfigError:
    key = getattr(err, "full_key", None) or "?"
    msg = str(err).split("\n")[0]
    if "not in" in msg or "Key '" in msg and "not" in msg:
        return ConfigError(f"unknown config key '{key}' ({msg})")
    if "Missing mandatory value" in msg:
        return ConfigError(f"missing required config value '{key}'")
    return ConfigError(f"bad value for config key '{key}': {msg}")


def parse(schema: type[C], *sources: Any) -> C:
    """Merge YAML/dict/dotlist sources over the schema and return a typed, validated instance."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), *sources)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise _explain(err) from None
    validate(cfg)
    return cfg  # type: ignore[return-value]


def load_config(path: str | os.PathLike | Mapping[str, Any] | None, overrides: Sequence[str] = (),
                schema: type[C] | Callable[[str], type[C]] | None = None) -> C:
    """Load a recipe YAML plus ``key=value`` overrides into the task's schema.

    ``schema`` is the config class, or a function from the ``task`` key to it (``mm_ptft.tasks.load_config``
    passes the recipe registry's; this module imports nothing of ours)."""
    if schema is None:
        raise ConfigError("load_config needs the task's schema; use mm_ptft.run.load_config to look it up by 'task'")
    # ``path`` may also be a config already in memory (a dict, e.g. a dataclass's ``to_dict``)
    yaml_cfg = OmegaConf.create(dict(path)) if isinstance(path, Mapping) else \
        OmegaConf.load(path) if path else OmegaConf.create({})
    cli = OmegaConf.create({})
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"override {key}: cannot parse {raw!r} ({err})") from None
        # A whole mapping replaces the YAML's (``model.image="{name: timm, ...}"`` must not keep the
        # old encoder's keys); a scalar or list is set as is. The schema merge below type-checks both.
        try:
            OmegaConf.update(yaml_cfg if isinstance(value, dict) else cli, key, value, merge=False)
        except OmegaConfBaseException as err:
            raise _explain(err) from None
    if not isinstance(schema, type):
        task = OmegaConf.select(cli, "task") or OmegaConf.select(yaml_cfg, "task")
        if not task:
            raise ConfigError("missing required config value 'task' (e.g. task: text_classification)")
        try:
            schema = schema(task)
        except KeyError as err:
            raise ConfigError(f"task: {err.args[0]}") from None
    return parse(schema, yaml_cfg, cli)


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Any) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]
