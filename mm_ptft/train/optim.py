"""Optimizers and schedules, each chosen from a registry by name, and weight-decay parameter groups.

Fine-tuning strategies (freezing, LLRD, LoRA) live in ``mm_ptft.train.finetune``: this module knows no model."""
from __future__ import annotations

import inspect
import math
import warnings
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

from mm_ptft.config import ConfigError, OptimConfig, SchedConfig
from mm_ptft.registry import Registry

#: a function from the (wrapped) task to its optimizer parameter groups (the Trainer's ``group_builder``)
GroupBuilder = Callable[[nn.Module], list[dict[str, Any]]]
OPTIMIZERS: Registry[torch.optim.Optimizer] = Registry("optimizer")
SCHEDULERS: Registry[Any] = Registry("scheduler")


def _no_decay(name: str, p: torch.Tensor) -> bool:
    """Biases, norm scales and other 1-d parameters get no weight decay."""
    return p.ndim < 2 or name.endswith(".bias") or "norm" in name.lower()


def decay_groups(task: nn.Module, optim: OptimConfig,
                 lr_scale: Optional[Callable[[str], float]] = None) -> list[dict[str, Any]]:
    """Trainable parameters grouped by (weight decay, LR scale); ``lr_scale`` maps a name to its LR factor."""
    groups: dict[tuple[bool, float], list[torch.Tensor]] = {}
    for name, p in task.named_parameters():
        if p.requires_grad:
            groups.setdefault((_no_decay(name, p), lr_scale(name) if lr_scale else 1.0), []).append(p)
    if not groups:
        raise ConfigError("no trainable parameters (check finetune.strategy)")
    return [{"params": ps, "weight_decay": 0.0 if nd else optim.weight_decay, "lr": optim.lr * s, "lr_scale": s}
            for (nd, s), ps in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0]))]


def check_kwargs(cls: type, kwargs: dict[str, Any], taken: Iterable[str] = ()) -> None:
    """``optim.kwargs`` must be keyword arguments of the optimizer class other than ``taken`` (those we set)."""
    params = inspect.signature(cls.__init__).parameters
    accepted = [k for k in params if k not in ("self", "params", *taken)
                and params[k].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    for key in kwargs:
        if key in taken:
            raise ConfigError(f"optim.kwargs.{key}: set from optim.{key} and the parameter groups; remove it here")
        if key not in accepted:
            raise ConfigError(f"optim.kwargs.{key}: {cls.__module__}.{cls.__name__} has no argument {key!r}; "
                              f"accepted: {', '.join(accepted)}")


def _built_in(cls: type, **common: Callable[[OptimConfig], Any]) -> Callable[..., torch.optim.Optimizer]:
    """A builder for one of our named optimizers: ``common`` maps an argument to the ``OptimConfig`` field it
    comes from; ``optim.kwargs`` adds the class's other arguments (e.g. ``amsgrad``, ``nesterov``)."""

    def build(groups: list[dict[str, Any]], cfg: OptimConfig, fused: bool,
              device: torch.device) -> torch.optim.Optimizer:
        check_kwargs(cls, cfg.kwargs, taken=("lr", "weight_decay", "fused", *common))
        return cls(groups, lr=cfg.lr, **{k: get(cfg) for k, get in common.items()}, **cfg.kwargs,
                   fused=(fused and (cls is not torch.optim.SGD or device.type == "cuda")) or None)

    return build


OPTIMIZERS.register("adamw")(_built_in(torch.optim.AdamW, betas=lambda c: tuple(c.betas), eps=lambda c: c.eps))
OPTIMIZERS.register("adam")(_built_in(torch.optim.Adam, betas=lambda c: tuple(c.betas), eps=lambda c: c.eps))
OPTIMIZERS.register("sgd")(_built_in(torch.optim.SGD, momentum=lambda c: c.momentum))


@OPTIMIZERS.fallback("torch.<Optimizer class> (e.g. torch.RAdam, torch.Adafactor)")
def _torch_optimizer(name: str) -> Optional[Callable[..., torch.optim.Optimizer]]:
    """``torch.<Class>``: any ``torch.optim`` optimizer class, with ``optim.lr`` and ``optim.kwargs``."""
    cls = getattr(torch.optim, name.removeprefix("torch."), None) if name.startswith("torch.") else None
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)) or cls is torch.optim.Optimizer:
        return None

    def build(groups: list[dict[str, Any]], cfg: OptimConfig, fused: bool,
              device: torch.device) -> torch.optim.Optimizer:
        check_kwargs(cls, cfg.kwargs, taken=("lr", "weight_decay"))
        return cls(groups, lr=cfg.lr, **cfg.kwargs)

    return build


@OPTIMIZERS.fallback("timm.<name> or a bare name of timm.optim.list_optimizers() (e.g. lamb, lion, adafactor, lars)")
def _timm_optimizer(name: str) -> Optional[Callable[..., torch.optim.Optimizer]]:
    """A timm optimizer through ``timm.optim.create_optimizer_v2`` (our param groups passed through as they are)."""
    from timm.optim import create_optimizer_v2, get_optimizer_class, list_optimizers

    opt = name.removeprefix("timm.")
    if opt not in list_optimizers():
        return None

    def build(groups: list[dict[str, Any]], cfg: OptimConfig, fused: bool,
              device: torch.device) -> torch.optim.Optimizer:
        check_kwargs(get_optimizer_class(opt, bind_defaults=False), cfg.kwargs,
                     taken=("lr", "weight_decay", "momentum"))
        return create_optimizer_v2(groups, opt=opt, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                                   **cfg.kwargs)

    return build


def _warmup_then(decay: Callable[..., Callable[[int], float]]) -> Callable[..., Any]:
    """A LambdaLR builder: linear warmup from 0 over ``warmup_steps``, then the factor
    ``decay(cfg, opt, warmup, total)(steps after warmup)`` on each group's lr (as transformers' schedules do)."""

    def build(opt: torch.optim.Optimizer, warmup_steps: int, total_steps: int, cfg: Optional[SchedConfig] = None) -> Any:
        cfg = cfg or SchedConfig()
        factor = decay(cfg, opt, warmup_steps, total_steps)

        def lr_lambda(step: int) -> float:
            return step / max(1, warmup_steps) if step < warmup_steps else factor(step - warmup_steps)

        return torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)

    return build


# constant / linear / cosine: transformers' warmup schedules (get_scheduler's formulas, value for value) written
# here, because importing transformers.optimization imports its Trainer utilities and peft (~0.7 s of start-up)
@SCHEDULERS.register("constant")
@_warmup_then
def _constant(cfg: SchedConfig, opt: torch.optim.Optimizer, warmup: int, total: int) -> Callable[[int], float]:
    return lambda s: 1.0


@SCHEDULERS.register("linear")
@_warmup_then
def _linear(cfg: SchedConfig, opt: torch.optim.Optimizer, warmup: int, total: int) -> Callable[[int], float]:
    return lambda s: max(0.0, float(total - warmup - s) / float(max(1, total - warmup)))  # 1 → 0 after warmup


@SCHEDULERS.register("cosine")
@_warmup_then
def _cosine(cfg: SchedConfig, opt: torch.optim.Optimizer, warmup: int, total: int) -> Callable[[int], float]:
    """Half a cosine from 1 to 0 over the steps after warmup (transformers' ``num_cycles=0.5``)."""
    span = float(max(1, total - warmup))
    return lambda s: max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * (float(s) / span))))


@SCHEDULERS.register("exponential")
@_warmup_then
def _exponential(cfg: SchedConfig, opt: torch.optim.Optimizer, warmup: int, total: int) -> Callable[[int], float]:
    return lambda s: cfg.gamma ** s  # lr * gamma**(steps after warmup)


@SCHEDULERS.register("step")
@_warmup_then
def _step(cfg: SchedConfig, opt: torch.optim.Optimizer, warmup: int, total: int) -> Callable[[int], float]:
    return lambda s: cfg.gamma ** (s // cfg.step_size)  # lr * gamma every step_size steps


@SCHEDULERS.register("polynomial")
@_warmup_then
def _polynomial(cfg: SchedConfig, opt: torch.optim.Optimizer, warmup: int, total: int) -> Callable[[int], float]:
    """lr_end + (lr - lr_end) * (1 - s / decay_steps)**power, lr_end after the last step (transformers' formula)."""
    lr = opt.defaults["lr"]
    if cfg.lr_end > lr:
        raise ConfigError(f"sched.lr_end={cfg.lr_end} must not exceed optim.lr={lr}")
    end, span = cfg.lr_end / lr, max(1, total - warmup)
    return lambda s: end + (1 - end) * (1 - min(s, span) / span) ** cfg.power


def apply_hparams(opt: torch.optim.Optimizer, sched: Any, fresh: list[dict[str, Any]]) -> None:
    """A resumed ``opt``/``sched`` take the per-group hyperparameters (lr, weight decay, betas…) of ``fresh`` (a
    new config's groups, without their params); the schedule keeps its position."""
    for group, new in zip(opt.param_groups, fresh):
        group.update({k: v for k, v in new.items() if k != "initial_lr"}, initial_lr=new["lr"])
    sched.base_lrs = [g["initial_lr"] for g in opt.param_groups]
    for group, base, fn in zip(opt.param_groups, sched.base_lrs, getattr(sched, "lr_lambdas", [])):
        group["lr"] = base * fn(sched.last_epoch)


def l1_params(task: nn.Module) -> list[torch.Tensor]:
    """The weights ``optim.l1`` penalises: trainable, not biases or norm scales (those weight decay skips too)."""
    return [p for n, p in task.named_parameters() if p.requires_grad and not _no_decay(n, p)]


def l1_penalty(params: Iterable[torch.Tensor], l1: float) -> torch.Tensor:
    """``l1 * sum |w|`` in float32."""
    return l1 * sum(p.float().abs().sum() for p in params)


def build_optimizer(groups: Iterable[dict[str, Any]], cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    if cfg.name not in OPTIMIZERS:
        raise ConfigError(f"optim.name={cfg.name!r}; choose one of: {OPTIMIZERS.choices()}")
    # Fused Adam(W) kernels exist for CPU and CUDA (2-3x faster optimizer steps on CPU here).
    fused = cfg.fused if cfg.fused is not None else device.type in ("cpu", "cuda")
    return OPTIMIZERS.get(cfg.name, "optim")(list(groups), cfg, fused, device)


def build_scheduler(opt: torch.optim.Optimizer, cfg: SchedConfig, total_steps: int):
    """Warmup then constant / linear / cosine (transformers' schedule formulas) or exponential / step /
    polynomial decay, each a LambdaLR; the builder gets the ``SchedConfig`` as ``cfg``."""
    if cfg.name not in SCHEDULERS:
        raise ConfigError(f"sched.name={cfg.name!r}; choose one of {SCHEDULERS.names()}")
    if 0 < total_steps <= cfg.warmup_steps:
        warnings.warn(f"sched.warmup_steps={cfg.warmup_steps} >= the run's {total_steps} optimizer steps: the learning "
                      f"rate never finishes warming up", stacklevel=2)
    return SCHEDULERS.get(cfg.name, "sched")(opt, cfg.warmup_steps, max(total_steps, 1), cfg=cfg)
