"""The one-way path every entry point takes: config → recipe.prepare → Trainer → run directory."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from mm_ptft.config import RunConfig, load_config
from mm_ptft.encoders.base import untrusted_source
from mm_ptft.tasks import get_recipe
from mm_ptft.train import checkpoint as ckpt
from mm_ptft.train.distributed import main_process_first
from mm_ptft.train.optim import apply_finetune
from mm_ptft.train.trainer import Trainer, seed_everything


def train(cfg: RunConfig) -> dict[str, float]:
    """Build the recipe's task and data, train, and return the final evaluation."""
    seed_everything(cfg.seed)
    with main_process_first(cfg.train.device):  # under torchrun, rank 0 generates data before the others read it
        prepared = get_recipe(cfg.task).prepare(cfg)
    trainer = Trainer(prepared.task, cfg, prepared.train_data, prepared.eval_data, prepared.collate,
                      prepared.train_lengths, prepared.eval_lengths, prepared.counters)
    return trainer.fit()


def pick_checkpoint(run_dir: str | Path, checkpoint: Optional[str] = None) -> Path:
    """``checkpoint`` if given, else the run's best checkpoint, else its latest good one."""
    if checkpoint:
        return Path(checkpoint)
    root = Path(run_dir) / "checkpoints"
    best = root / "best.json"
    if best.exists():
        path = root / json.loads(best.read_text())["path"]
        if path.is_dir() and ckpt.verify(path) is None:
            return path
    found = ckpt.latest_good(root)
    if found is None:
        raise FileNotFoundError(f"no usable checkpoint under {root}")
    return found


def load_run(run_dir: str | Path, overrides: Sequence[str] = (), checkpoint: Optional[str] = None,
             with_data: bool = True, trust_remote_code: bool = False):
    """Rebuild a trained run from its resolved ``config.yaml`` and load its weights.
    Returns (cfg, prepared, recipe) with ``prepared.task`` in eval mode. ``with_data=False`` builds
    the model alone (labels, vocabulary and tokenizer are in the run), so a run directory copied to
    another machine predicts without its training data. A run directory is data, not code: an encoder
    whose config asks for ``trust_remote_code`` is refused unless the caller passes
    ``trust_remote_code=True`` (the command line's ``--trust-remote-code``)."""
    path = Path(run_dir)
    cfg_path = path if path.is_file() else path / "config.yaml"
    cfg = load_config(cfg_path, overrides)
    if not with_data:
        drop_data_files(cfg)
    recipe = get_recipe(cfg.task)
    with contextlib.nullcontext() if trust_remote_code else untrusted_source(str(run_dir)):
        prepared = recipe.prepare(cfg, train=False)
    apply_finetune(prepared.task, cfg.finetune)
    ckpt.load(pick_checkpoint(cfg.output_dir if path.is_file() else path, checkpoint), prepared.task)
    prepared.task.eval()
    return cfg, prepared, recipe


def evaluate(run_dir: str | Path, overrides: Sequence[str] = (), checkpoint: Optional[str] = None,
             trust_remote_code: bool = False) -> dict[str, float]:
    """Evaluate a trained run on its (or an overridden ``data.eval_file``) eval split."""
    cfg, prepared, _ = load_run(run_dir, overrides, checkpoint, trust_remote_code=trust_remote_code)
    if prepared.eval_data is None:
        raise ValueError(f"{run_dir}: no evaluation data (the run's data.eval_file/data.train_file are empty or gone); "
                         f"pass data.eval_file=PATH")
    trainer = Trainer(prepared.task, cfg, None, prepared.eval_data, prepared.collate, eval_lengths=prepared.eval_lengths)
    return trainer.evaluate()


@torch.no_grad()
def predict(run_dir: str | Path, inputs: Sequence[Any], checkpoint: Optional[str] = None,
            trust_remote_code: bool = False) -> list[dict[str, Any]]:
    """Run a trained model on raw inputs (texts, file paths…) as its recipe defines."""
    cfg, prepared, recipe = load_run(run_dir, checkpoint=checkpoint, with_data=False,
                                     trust_remote_code=trust_remote_code)
    return recipe.predict(cfg, prepared, list(inputs))


def drop_data_files(cfg: RunConfig) -> None:
    """Clear the data files (and generator) a config names, for building a trained model alone."""
    data = getattr(cfg, "data", None)
    for key, empty in (("train_file", ""), ("eval_file", ""), ("generate", None)):
        if data is not None and hasattr(data, key):
            setattr(data, key, empty)
