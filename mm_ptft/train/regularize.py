"""Regularisation toward the starting weights for continual fine-tuning: L2-SP and EWC, chosen by
``finetune.regularize: {name: l2_sp | ewc, weight: λ, ...}`` from the ``REGULARIZERS`` registry.

- **L2-SP** (Li et al. 2018): ``λ/2 · Σ (θ − θ0)²`` over the encoders' trainable parameters, θ0 their values
  when fine-tuning starts (as loaded from ``model.<modality>.name_or_path``); the new head is not penalised.
- **EWC** (Kirkpatrick et al. 2017): ``λ/2 · Σ F_i (θ_i − θ*_i)²``, θ* the encoders of an earlier run and F the
  diagonal of its empirical Fisher: the squared per-sample gradients of the log-likelihood (the task's loss on
  its own labels), averaged over ``fisher_samples`` training samples of that run (``fisher_from: RUN_DIR``).

The penalty is added by a forward hook on the task, in training mode only: the output gains ``l2sp_loss`` /
``ewc_loss`` and its ``loss`` grows by it, so the trainer logs it like any other loss part and sums nothing
itself. Parameters are matched by ``<modality>/<name inside the encoder>``, so an earlier run of another
recipe with the same encoder serves too. The engine knows no run directory: the entry layer hands
``load_previous(run_dir, samples) -> (θ*, F)`` to ``attach``."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Optional

import torch
from torch import nn

from mm_ptft.config import ConfigError
from mm_ptft.registry import Registry
from mm_ptft.train.logging import log

#: ``<modality>/<parameter name inside the encoder>`` → tensor
Weights = dict[str, torch.Tensor]
#: the entry layer's loader of an earlier run: (run dir, samples) → (its encoder weights, their Fisher diagonal)
LoadPrevious = Callable[[str, int], tuple[Weights, Weights]]
REGULARIZERS: Registry["Penalty"] = Registry("regularizer")
WHERE = "finetune.regularize"


def encoder_params(task: nn.Module, trainable: bool = True) -> dict[str, nn.Parameter]:
    """The parameters of the task's encoders (``Task.encoders()``), keyed ``<modality>/<name>``; with
    ``trainable`` only those that train (a linear-probed encoder gives none)."""
    encoders = task.encoders() if hasattr(task, "encoders") else {}
    return {f"{modality}/{name}": p for modality, enc in sorted(encoders.items())
            for name, p in enc.named_parameters() if p.requires_grad or not trainable}


def snapshot(params: Mapping[str, torch.Tensor]) -> Weights:
    """Detached float32 CPU copies (θ0)."""
    return {k: p.detach().float().cpu().clone() for k, p in params.items()}


def l2sp_penalty(params: Mapping[str, torch.Tensor], anchor: Mapping[str, torch.Tensor], weight: float) -> torch.Tensor:
    """``weight/2 · Σ ||θ − θ0||²`` in float32."""
    return weight / 2 * sum(((params[k].float() - anchor[k]) ** 2).sum() for k in anchor)


def ewc_penalty(params: Mapping[str, torch.Tensor], anchor: Mapping[str, torch.Tensor],
                fisher: Mapping[str, torch.Tensor], weight: float) -> torch.Tensor:
    """``weight/2 · Σ F (θ − θ*)²`` in float32."""
    return weight / 2 * sum((fisher[k] * (params[k].float() - anchor[k]) ** 2).sum() for k in anchor)


def fisher_diagonal(model: nn.Module, samples: Iterable[Mapping[str, Any]],
                    params: Mapping[str, torch.Tensor]) -> Weights:
    """The empirical Fisher diagonal ``mean_n (∂ log p(y_n|x_n) / ∂θ)²`` of ``params``: each of ``samples`` is a
    batch of ONE sample whose ``model(batch)["loss"]`` is its negative log-likelihood (a mean over a larger
    batch would square the batch's mean gradient, not average the per-sample squares)."""
    total = {k: torch.zeros_like(p, dtype=torch.float32) for k, p in params.items()}
    n = 0
    for batch in samples:
        out = model(batch)
        if "loss" not in out:
            raise ConfigError(f"{WHERE}: the earlier run's task gives no 'loss' for its training samples; "
                              f"EWC needs their log-likelihood")
        grads = torch.autograd.grad(out["loss"], list(params.values()), allow_unused=True)
        for k, g in zip(params, grads):
            if g is not None:
                total[k] += g.detach().float() ** 2
        n += 1
    if n == 0:
        raise ConfigError(f"{WHERE}.fisher_from: the earlier run has no training samples to estimate the Fisher on")
    return {k: (v / n).cpu() for k, v in total.items()}


class Penalty:
    """A forward hook that adds ``<name>_loss`` (the penalty on the live parameters) to the training output."""

    def __init__(self, name: str, fn: Callable[..., torch.Tensor], params: Mapping[str, nn.Parameter],
                 **tensors: Weights) -> None:
        self.name, self.fn, self.params, self.tensors = name, fn, dict(params), tensors
        self.handle: Optional[Any] = None

    def _on(self, device: torch.device) -> dict[str, Weights]:
        first = next(iter(self.tensors.values()))
        if first and next(iter(first.values())).device != device:  # moved once, with the task
            self.tensors = {k: {n: t.to(device) for n, t in v.items()} for k, v in self.tensors.items()}
        return self.tensors

    def value(self) -> torch.Tensor:
        device = next(iter(self.params.values())).device
        return self.fn(self.params, **self._on(device))

    def __call__(self, module: nn.Module, args: Any, out: Any) -> Any:
        if not module.training or not isinstance(out, Mapping) or "loss" not in out:
            return out
        part = self.value()
        return {**out, f"{self.name}_loss": part, "loss": out["loss"] + part}

    def attach(self, task: nn.Module) -> "Penalty":
        self.handle = task.register_forward_hook(self)
        return self


def _matched(params: dict[str, nn.Parameter], previous: Weights, fisher_from: str) -> dict[str, nn.Parameter]:
    """The trainable encoder parameters the earlier run also has (same key); a shape mismatch is an error."""
    for k in params.keys() & previous.keys():
        if params[k].shape != previous[k].shape:
            raise ConfigError(f"{WHERE}.fisher_from={fisher_from!r}: {k} has shape {tuple(previous[k].shape)} there "
                              f"and {tuple(params[k].shape)} here; EWC needs the same encoder architecture")
    matched = {k: p for k, p in params.items() if k in previous}
    if not matched:
        raise ConfigError(f"{WHERE}.fisher_from={fisher_from!r}: none of this run's trainable encoder parameters "
                          f"exists in that run (different encoders?)")
    if len(matched) < len(params):
        log.warning("%s: %d of %d trainable encoder parameters are not in %s and are not penalised", WHERE,
                    len(params) - len(matched), len(params), fisher_from)
    return matched


def _trainable(task: nn.Module) -> dict[str, nn.Parameter]:
    params = encoder_params(task)
    if not params:
        raise ConfigError(f"{WHERE}: the task's encoders have no trainable parameters (finetune.strategy?): "
                          f"nothing to hold near its starting weights")
    return params


@REGULARIZERS.register()
def l2_sp(task: nn.Module, weight: float) -> Penalty:
    """``weight/2 · ||θ − θ0||²`` over the encoders' trainable parameters, θ0 their values now."""
    params = _trainable(task)
    return Penalty("l2sp", l2sp_penalty, params, anchor=snapshot(params), weight=_weight(weight))


@REGULARIZERS.register()
def ewc(task: nn.Module, weight: float, fisher_from: str, fisher_samples: int = 256,
        load_previous: Optional[LoadPrevious] = None) -> Penalty:
    """``weight/2 · Σ F (θ − θ*)²`` with θ*, F from the run directory ``fisher_from`` (``fisher_samples`` of its
    training samples)."""
    if fisher_samples < 1:
        raise ConfigError(f"{WHERE}.fisher_samples={fisher_samples}; must be >= 1")
    if load_previous is None:
        raise ConfigError(f"{WHERE}: ewc reads the earlier run {fisher_from!r}; train through mm_ptft.run "
                          f"(mm-ptft train) or pass load_previous")
    previous, fisher = load_previous(fisher_from, fisher_samples)
    params = _matched(_trainable(task), previous, fisher_from)
    return Penalty("ewc", ewc_penalty, params, anchor={k: previous[k] for k in params},
                   fisher={k: fisher[k] for k in params}, weight=_weight(weight))


def _weight(weight: float) -> float:
    if not isinstance(weight, (int, float)) or not weight >= 0:
        raise ConfigError(f"{WHERE}.weight={weight!r}; must be a number >= 0")
    return float(weight)


def attach(task: nn.Module, spec: Optional[Mapping[str, Any]], load_previous: Optional[LoadPrevious] = None,
           distributed: str = "") -> Optional[Penalty]:
    """Build ``finetune.regularize`` (None: nothing) and hook it onto ``task``."""
    if not spec:
        return None
    if not isinstance(spec, Mapping) or spec.get("name") not in REGULARIZERS:
        raise ConfigError(f"{WHERE}: expected {{name: <one of {REGULARIZERS.names()}>, weight: λ, ...}}, got {spec!r}")
    if distributed == "fsdp":
        raise ConfigError(f"{WHERE} is not supported with train.distributed=fsdp (sharded weights)")
    try:
        penalty = REGULARIZERS.build(spec, WHERE, task=task, load_previous=load_previous)
    except (KeyError, TypeError) as err:
        raise ConfigError(f"{WHERE}: {err.args[0] if err.args else err}") from None
    return penalty.attach(task)


__all__ = ["REGULARIZERS", "Penalty", "attach", "encoder_params", "ewc_penalty", "fisher_diagonal", "l2sp_penalty",
           "snapshot"]
