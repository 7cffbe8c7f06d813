"""The one-way path every entry point takes: config → recipe.prepare → fine-tuning → Trainer → run directory."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from mm_ptft.config import RunConfig
from mm_ptft.contracts import Callback, Prepared
from mm_ptft.finetune import prepare_for_training, save_encoders
from mm_ptft.tasks import get_recipe, load_config
from mm_ptft.tasks.common import drop_data_files, load_run, pick_checkpoint
from mm_ptft.train import distributed as D
from mm_ptft.train.distributed import main_process_first
from mm_ptft.train.trainer import Trainer, seed_everything


def build_trainer(prepared: Prepared, cfg: RunConfig, callbacks: Sequence[Callback] = ()) -> Trainer:
    """Apply the fine-tuning strategy and gradient checkpointing once, then hand the trainer the task,
    its data, its parameter groups and callbacks."""
    groups = prepare_for_training(prepared.task, cfg)
    return Trainer.from_prepared(prepared, cfg, param_groups=groups, callbacks=callbacks)


def fit(prepared: Prepared, cfg: RunConfig, callbacks: Sequence[Callback] = ()) -> dict[str, float]:
    """Train what a recipe prepared; save each encoder as a reloadable directory; return the final evaluation."""
    trainer = build_trainer(prepared, cfg, callbacks)
    results = trainer.fit()
    plain = trainer.plain_model()  # under FSDP every rank takes part in gathering the weights
    if plain is not None:
        save_encoders(plain, Path(cfg.output_dir) / "encoders")
    D.barrier()
    return results


def train(cfg: RunConfig) -> dict[str, float]:
    """Build the recipe's task and data, train, and return the final evaluation."""
    seed_everything(cfg.seed)
    with main_process_first(cfg.train.device):  # under torchrun, rank 0 generates data before the others read it
        prepared = get_recipe(cfg.task).prepare(cfg)
    return fit(prepared, cfg)


def recipe_main(schema: type) -> Callable[[Sequence[str]], dict[str, float]]:
    """A recipe script's ``main(argv)``: ``CONFIG [key.sub=value ...]`` loaded into ``schema``, trained;
    prints and returns the final evaluation."""

    def main(argv: Sequence[str]) -> dict[str, float]:
        results = train(load_config(argv[0], list(argv[1:]), schema=schema))
        print(json.dumps(results, indent=2))
        return results

    return main


def evaluate(run_dir: str | Path, overrides: Sequence[str] = (), checkpoint: Optional[str] = None) -> dict[str, float]:
    """Evaluate a trained run on its (or an overridden ``data.eval_file``) eval split."""
    cfg, prepared, _ = load_run(run_dir, overrides, checkpoint)
    if prepared.eval_data is None:
        raise ValueError(f"{run_dir}: no evaluation data (the run's data.eval_file/data.train_file are empty or gone); "
                         f"pass data.eval_file=PATH")
    return Trainer.from_prepared(prepared, cfg, train=False).evaluate()


@torch.no_grad()
def predict(run_dir: str | Path, inputs: Sequence[Any], checkpoint: Optional[str] = None) -> list[dict[str, Any]]:
    """Run a trained model on raw inputs (texts, file paths…) as its recipe defines."""
    cfg, prepared, recipe = load_run(run_dir, checkpoint=checkpoint, with_data=False)
    return recipe.predict(cfg, prepared, list(inputs))


__all__ = ["build_trainer", "drop_data_files", "evaluate", "fit", "load_config", "load_run", "pick_checkpoint",
           "predict", "recipe_main", "train"]
