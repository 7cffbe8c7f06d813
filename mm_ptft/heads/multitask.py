"""Several single-task models on shared encoders, trained together on batches ``{task: sub-batch}``."""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn

from mm_ptft.contracts import Task
from mm_ptft.metrics.multitask import MultiTaskMetrics


class MultiTask(Task):
    """``tasks``: name → a single-task model (classification, regression, CTC, ...) whose encoders are the same
    module objects as the other tasks' of that modality. In training, each sub-batch goes to its task;
    ``<task>_loss`` is that task's own loss and ``loss = Σ weights[task] · <task>_loss`` over the tasks in the
    batch. In eval the output is ``{task: that task's outputs}``, which ``build_metrics`` consumes (its
    ``loss`` is the weighted sum of the tasks' mean eval losses)."""

    main_metric = "loss"
    greater_is_better = False

    def __init__(self, tasks: Mapping[str, Task], weights: Mapping[str, float],
                 eval_tasks: Optional[Sequence[str]] = None) -> None:
        super().__init__()
        missing = sorted(set(tasks) - set(weights))
        if missing:
            raise ValueError(f"tasks {missing} have no loss weight")
        self.tasks = nn.ModuleDict(dict(sorted(tasks.items())))
        self.weights = {n: float(weights[n]) for n in self.tasks}
        self.eval_tasks = sorted(eval_tasks if eval_tasks is not None else self.tasks)

    def forward(self, batch: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        unknown = sorted(set(batch) - set(self.tasks))
        if unknown:
            raise KeyError(f"batch holds tasks {unknown}; this model has {list(self.tasks)}")
        outs = {name: self.tasks[name](sub) for name, sub in sorted(batch.items())}
        if not self.training:
            return outs
        parts = {f"{name}_loss": out["loss"] for name, out in outs.items()}
        total = sum(self.weights[name] * out["loss"] for name, out in outs.items())
        return {"loss": torch.as_tensor(total), **parts}

    def build_metrics(self) -> MultiTaskMetrics:
        return MultiTaskMetrics({n: self.tasks[n].build_metrics() for n in self.eval_tasks}, self.weights)
