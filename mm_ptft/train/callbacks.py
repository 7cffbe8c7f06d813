"""Trainer callbacks chosen in the config: ``train.callbacks: [{name: <key>, ...kwargs}]`` built from the
``CALLBACKS`` registry, plus early stopping (also reachable as ``train.early_stopping_patience``).

A callback asks the loop to stop by setting ``trainer.should_stop = True``; one that keeps state across a
resume gives ``state_dict()``/``load_state_dict()`` (plain numbers and strings: the trainer state is read
with ``weights_only=True``)."""
from __future__ import annotations

import math
from typing import Any, Optional

from mm_ptft.config import ConfigError, RunConfig
from mm_ptft.contracts import Callback
from mm_ptft.registry import Registry
from mm_ptft.train import preempt
from mm_ptft.train.logging import log

CALLBACKS: Registry[Callback] = Registry("callback")
MODES = ("max", "min")


@CALLBACKS.register("early_stopping")
class EarlyStopping(Callback):
    """Stop after ``patience`` evaluations in a row without improving ``metric`` by more than ``min_delta``.
    ``metric`` defaults to the trainer's (``train.metric_for_best``, else the task's main metric) and ``mode``
    (``max``/``min``) to its direction; another metric needs its ``mode``. Logs an ``early_stop`` event to
    metrics.jsonl when it stops the run. Every rank sees the same (synced) results, so all stop together."""

    def __init__(self, patience: int = 3, metric: str = "", mode: str = "", min_delta: float = 0.0) -> None:
        if patience < 1:
            raise ConfigError(f"early_stopping: patience={patience}; must be >= 1")
        if mode and mode not in MODES:
            raise ConfigError(f"early_stopping: mode={mode!r}; choose one of {list(MODES)}")
        self.patience, self.metric, self.mode, self.min_delta = patience, metric, mode, min_delta
        self.best: Optional[float] = None
        self.best_step, self.wait, self._warned = -1, 0, False

    def _target(self, trainer: Any) -> tuple[str, bool]:
        """(metric, greater is better), falling back on the trainer's best-checkpoint metric."""
        metric = self.metric or trainer.metric
        return metric, self.mode == "max" if self.mode else trainer.greater

    def on_train_start(self, trainer: Any) -> None:
        if self.metric and self.metric != trainer.metric and not self.mode:
            raise ConfigError(f"early_stopping: metric={self.metric!r} is not the run's best-checkpoint metric "
                              f"({trainer.metric!r}); say whether it should grow or shrink with mode: max|min")

    def on_evaluate(self, trainer: Any, results: dict[str, float]) -> None:
        metric, greater = self._target(trainer)
        value = results.get(metric)
        if value is None:
            if results and not self._warned:
                self._warned = True
                log.warning(f"early_stopping: metric {metric!r} is not among the eval results "
                                    f"({', '.join(sorted(results))}); it cannot stop this run")
            return
        gain = (value - self.best if greater else self.best - value) if self.best is not None else math.inf
        if gain > self.min_delta:  # NaN never improves
            self.best, self.best_step, self.wait = value, trainer.step, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            trainer.should_stop = True
            trainer.logger.log(trainer.step, "early_stop", {"best_step": self.best_step, f"best_{metric}": self.best})

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_step, self.wait = state["best"], state["best_step"], state["wait"]


def from_config(cfg: RunConfig, **runtime: Any) -> list[Callback]:
    """The callbacks ``cfg.train`` asks for: ``train.callbacks`` in order, then early stopping when
    ``train.early_stopping_patience`` > 0 (unless ``train.callbacks`` has one already). ``runtime`` (e.g. the
    task) reaches the builders that take it."""
    tc, built = cfg.train, []
    for i, spec in enumerate(tc.callbacks):
        where = f"train.callbacks[{i}]"
        if not isinstance(spec, dict) or "name" not in spec:
            raise ConfigError(f"{where}: expected {{name: <one of {CALLBACKS.names()}>, ...kwargs}}, got {spec!r}")
        if spec["name"] not in CALLBACKS:
            raise ConfigError(f"{where}.name={spec['name']!r}: unknown callback; choose one of {CALLBACKS.names()}")
        try:
            built.append(CALLBACKS.build(spec, where, cfg=cfg, **runtime))
        except (KeyError, TypeError) as err:
            raise ConfigError(f"{where}: {err.args[0] if err.args else err}") from None
    if tc.early_stopping_patience > 0 and not any(isinstance(cb, EarlyStopping) for cb in built):
        built.append(EarlyStopping(patience=tc.early_stopping_patience))
    return [*built, *preempt.from_config(tc)]


__all__ = ["CALLBACKS", "EarlyStopping", "from_config"]
