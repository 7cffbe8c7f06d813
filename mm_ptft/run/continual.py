"""Continual fine-tuning's view of an earlier run: its encoder weights and their Fisher diagonal, read from its
run directory for ``finetune.regularize: {name: ewc, fisher_from: RUN_DIR}`` (see ``mm_ptft.train.regularize``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import torch

from mm_ptft.config import ConfigError
from mm_ptft.tasks.common import load_run
from mm_ptft.train.regularize import Weights, encoder_params, fisher_diagonal, snapshot
from mm_ptft.train.trainer import device_batch


def _one_by_one(data: Any, collate: Any, n: int, seed: int, device: torch.device) -> Iterator[dict[str, Any]]:
    """``n`` samples of ``data`` in a seeded random order, each collated as a batch of one."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    for i in order.tolist():
        yield device_batch(collate([data[i]]), device, collate)


def previous_run(run_dir: str, samples: int) -> tuple[Weights, Weights]:
    """(encoder weights, empirical Fisher diagonal over ``samples`` of its training samples) of the run in
    ``run_dir`` (its best checkpoint, as eval uses), keyed ``<modality>/<name>``."""
    if not (Path(run_dir) / "config.yaml").is_file():
        raise ConfigError(f"finetune.regularize.fisher_from={run_dir!r}: not a run directory (no config.yaml)")
    cfg, prepared, _ = load_run(run_dir, train_data=True)
    if prepared.train_data is None or len(prepared.train_data) == 0:
        raise ConfigError(f"finetune.regularize.fisher_from={run_dir!r}: its training data is gone "
                          f"(data.train_file={getattr(cfg.data, 'train_file', '?')!r})")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    task = prepared.task.to(device)  # eval mode: no dropout, BatchNorm statistics as trained
    params = encoder_params(task, trainable=False)
    for p in params.values():
        p.requires_grad_(True)  # an encoder that run kept frozen still has a Fisher
    batches = _one_by_one(prepared.train_data, prepared.collate, samples, cfg.seed, device)
    return snapshot(params), fisher_diagonal(task, batches, params)


__all__ = ["previous_run"]
