"""The one-way path every entry point takes: config → recipe.prepare → fine-tuning → Trainer → run directory."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch

from mm_ptft.config import RunConfig
from mm_ptft.env import apply_threads, thread_message
from mm_ptft.run.continual import previous_run
from mm_ptft.contracts import Callback, Prepared
from mm_ptft.train.finetune import prepare_for_training, save_encoders
from mm_ptft.tasks import get_recipe, load_config
from mm_ptft.tasks.common import drop_data_files, load_run, pick_checkpoint
from mm_ptft.train import checkpoint as ckpt
from mm_ptft.train import distributed as D
from mm_ptft.train import rundir, runlock
from mm_ptft.train.distributed import main_process_first
from mm_ptft.train.logging import setup_console
from mm_ptft.train.trainer import Trainer, seed_everything


log = logging.getLogger("mm_ptft")

def build_trainer(prepared: Prepared, cfg: RunConfig, callbacks: Sequence[Callback] = ()) -> Trainer:
    """Apply the fine-tuning strategy (and ``finetune.regularize``, which may read an earlier run) and gradient
    checkpointing once, then hand the trainer the task, its data, its parameter groups and callbacks."""
    groups = prepare_for_training(prepared.task, cfg, load_previous=previous_run)
    return Trainer.from_prepared(prepared, cfg, group_builder=groups, callbacks=callbacks)


def fit(prepared: Prepared, cfg: RunConfig, callbacks: Sequence[Callback] = ()) -> dict[str, float]:
    """Train what a recipe prepared; save each encoder as a reloadable directory, from the checkpoint that
    eval and predict use (the best one); return the final evaluation."""
    return fit_trainer(build_trainer(prepared, cfg, callbacks), cfg)


def fit_trainer(trainer: Trainer, cfg: RunConfig) -> dict[str, float]:
    """``fit`` with the trainer built."""
    results = trainer.fit(write_timing=False)
    if trainer.already_finished is not None:  # a finished run resumed: nothing changes
        return results
    plain = trainer.plain_model()  # under FSDP every rank takes part in gathering the weights
    if plain is not None:
        save_best_encoders(plain, Path(cfg.output_dir), trainer.weights_checkpoint())
    D.barrier()
    trainer.write_timing()  # the finish includes the encoder directories
    return results


def save_best_encoders(model: torch.nn.Module, run_dir: Path, in_memory: Optional[Path] = None) -> None:
    """``encoders/`` from the checkpoint ``eval``/``predict`` pick (the best, else the latest), not from the
    last weights; ``encoders/<modality>/source.json`` says which. ``in_memory``: the checkpoint ``model`` holds the
    weights of (``Trainer.weights_checkpoint``); picked, it is neither re-hashed nor reloaded."""
    try:
        source = pick_checkpoint(run_dir, trusted=in_memory)
    except FileNotFoundError:
        source = None
    if source is not None and source != in_memory:
        ckpt.load_weights(source, model)
    save_encoders(model, run_dir / "encoders")
    best = run_dir / "checkpoints" / "best.json"
    is_best = source is not None and best.is_file() and json.loads(best.read_text()).get("path") == source.name
    note = {"checkpoint": f"checkpoints/{source.name}" if source else None,
            "why": "best checkpoint (as eval/predict use)" if is_best
            else "latest good checkpoint" if source else "final weights (no checkpoint)"}
    for enc_dir in (run_dir / "encoders").glob("*/"):
        (enc_dir / "source.json").write_text(json.dumps(note, indent=1))


def start(cfg: RunConfig, what: str = "train") -> None:
    """Seed, and claim ``output_dir`` before anything is written into it: another run there is refused
    unless resumed (``train.resume``) or replaced (``train.overwrite_output_dir``), and a second live writer
    is refused by the run lock (``train.runlock``; taken by the main process). With ``train.report`` the main
    process starts report.md's child here (``report.prestart``)."""
    seed_everything(cfg.seed)
    if D.is_main_process():
        setup_console()  # the thread line is shown (the trainer's console comes later)
    plan = apply_threads(cfg.train.threads, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    resuming = plan.auto and (cfg.train.resume or D.restart_count() > 0)
    log.info(thread_message(plan) + ("; a resume then takes the count its checkpoint records" if resuming else ""))
    rundir.claim(cfg, restarting=D.restart_count() > 0)
    with main_process_first(cfg.train.device):
        if D.is_main_process():
            runlock.acquire(Path(cfg.output_dir), what)
            rundir.clear_for_overwrite(cfg)
    if what == "train" and cfg.train.report and D.is_main_process():
        from mm_ptft.train.report import prestart

        prestart()  # report.md's child loads matplotlib while this process loads the model and data


def train(cfg: RunConfig, callbacks: Sequence[Callback] = ()) -> dict[str, float]:
    """Build the recipe's task and data, train (with ``callbacks`` besides the recipe's own), and return the
    final evaluation. A failure before the first step leaves ``output_dir`` as it was (``rundir.undo_created``)."""
    run_dir = Path(cfg.output_dir)
    before, trainer = rundir.entries(run_dir), None
    try:
        start(cfg)
        with main_process_first(cfg.train.device):  # under torchrun, rank 0 generates data before the others read
            prepared = get_recipe(cfg.task).prepare(cfg)
        trainer = build_trainer(prepared, cfg, callbacks)
        return fit_trainer(trainer, cfg)
    except BaseException:
        if runlock.is_held(run_dir) and not _stepped(trainer):
            runlock.release(run_dir)
            rundir.undo_created(run_dir, before)
        raise
    finally:
        runlock.release(run_dir)  # the kernel would at exit; a process that trains again must be able to


def _stepped(trainer: Optional[Trainer]) -> bool:
    """Whether ``trainer`` took an optimizer step in this process (its fit state exists once ``fit`` set up)."""
    state = getattr(trainer, "state", None)
    return state is not None and state.step > state.start_step


def recipe_main(schema: type) -> Callable[[Sequence[str]], dict[str, float]]:
    """A recipe script's ``main(argv)``: ``CONFIG [key.sub=value ...]`` loaded into ``schema``, trained;
    prints and returns the final evaluation."""

    def main(argv: Sequence[str]) -> dict[str, float]:
        results = train(load_config(argv[0], list(argv[1:]), schema=schema))
        print(json.dumps(results, indent=2))
        return results

    return main


def evaluate(run_dir: str | Path, overrides: Sequence[str] = (), checkpoint: Optional[str] = None,
             trust_remote_code: bool = False) -> dict[str, float]:
    """Evaluate a trained run on its (or an overridden ``data.eval_file``) eval split."""
    cfg, prepared, _ = load_run(run_dir, overrides, checkpoint, trust_remote_code=trust_remote_code)
    if prepared.eval_data is None:
        raise ValueError(f"{run_dir}: no evaluation data (the run's data.eval_file/data.train_file are empty or gone); "
                         f"pass data.eval_file=PATH")
    return Trainer.from_prepared(prepared, cfg, train=False).evaluate()


def predict(run_dir: str | Path, inputs: Sequence[Any], checkpoint: Optional[str] = None,
            trust_remote_code: bool = False, overrides: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Run a trained model on raw inputs (texts, file paths…) as its recipe defines (``overrides``: config keys, e.g.
    ``data.long_audio=chunk``)."""
    return list(predict_rows(run_dir, inputs, checkpoint, trust_remote_code, overrides))


@torch.no_grad()
def predict_rows(run_dir: str | Path, inputs: Sequence[Any], checkpoint: Optional[str] = None,
                 trust_remote_code: bool = False, overrides: Sequence[str] = ()) -> Iterator[dict[str, Any]]:
    """``predict``'s rows as the recipe makes them: a generative recipe yields each batch's rows as soon as they are
    generated (``mm-ptft predict`` writes them then), others their whole list."""
    cfg, prepared, recipe = load_run(run_dir, overrides, checkpoint=checkpoint, with_data=False,
                                     trust_remote_code=trust_remote_code)
    yield from recipe.predict(cfg, prepared, list(inputs))


__all__ = ["build_trainer", "drop_data_files", "evaluate", "fit", "start", "load_config", "load_run", "pick_checkpoint",
           "predict", "predict_rows", "recipe_main", "train"]
