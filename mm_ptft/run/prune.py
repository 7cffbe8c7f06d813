"""``mm-ptft prune RUN``: magnitude pruning of a trained run (``torch.nn.utils.prune``) into a new run directory,
optionally fine-tuned afterwards (``--finetune-steps N``) with the masks kept, so pruned weights stay zero.

The pruned copy is an ordinary run directory (config, tokenizer/vocabulary, one checkpoint, re-saved encoders,
``final_metrics.json`` re-evaluated on the run's eval set) that ``eval``, ``predict`` and ``export`` accept;
``pruning.json`` records the amount, the sparsity reached and the metrics before and after (and after fine-tuning,
whose log is ``finetune/metrics.jsonl``). The masks are folded into the weights (``prune.remove``) before saving."""
from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Optional, Sequence

from torch import nn
from torch.nn.utils import prune as tprune

from mm_ptft.config import ConfigError, SchedConfig
from mm_ptft.contracts import Callback
from mm_ptft.train.finetune import finetune_groups, save_encoders
from mm_ptft.tasks.common import load_run, pick_checkpoint
from mm_ptft.train import checkpoint as ckpt
from mm_ptft.train import rundir, runlock
from mm_ptft.train.trainer import Trainer

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: what the copy leaves behind: the source's checkpoints (one new one is written), loggers' files, exports
NOT_COPIED = (".lock", "checkpoints", "tensorboard", "wandb", "export", "report.md", "final_metrics.json",
              "confusion_matrix.json", "confusion_matrix.png", "pruning.json")


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """``(module, "weight")`` for every Linear / Conv layer (embeddings and norms are left alone)."""
    return [(m, "weight") for m in model.modules() if isinstance(m, PRUNABLE) and isinstance(m.weight, nn.Parameter)]


def sparsity(targets: list[tuple[nn.Module, str]]) -> float:
    """The fraction of exact zeros over the targets' weights."""
    zeros = sum(int((getattr(m, n) == 0).sum()) for m, n in targets)
    total = sum(getattr(m, n).numel() for m, n in targets)
    return zeros / max(total, 1)


def apply_pruning(model: nn.Module, amount: float, structured: bool = False,
                  permanent: bool = True) -> list[tuple[nn.Module, str]]:
    """Global unstructured L1 pruning of ``amount`` of all Linear/Conv weights, or (``structured``) L2
    ``ln_structured`` of ``amount`` of each layer's output channels/rows; made permanent (``prune.remove``) unless
    ``permanent=False``, which keeps ``weight_orig`` + ``weight_mask`` (training then leaves pruned weights zero)."""
    if not 0.0 <= amount < 1.0:
        raise ConfigError(f"--amount={amount} must be in [0, 1)")
    targets = prunable_weights(model)
    if not targets:
        raise ConfigError("the model has no Linear/Conv weights to prune")
    if structured:
        for m, n in targets:
            tprune.ln_structured(m, n, amount=amount, n=2, dim=0)
    else:
        tprune.global_unstructured(targets, pruning_method=tprune.L1Unstructured, amount=amount)
    if permanent:
        make_permanent(targets)
    return targets


def make_permanent(targets: list[tuple[nn.Module, str]]) -> None:
    """Fold each mask into its weight (``prune.remove``): a plain ``weight`` parameter again, for export."""
    for m, n in targets:
        if tprune.is_pruned(m):
            tprune.remove(m, n)


def finetune_pruned(prepared: Any, cfg: Any, out: Path, steps: int, callbacks: Sequence[Callback] = ()) -> dict[str, float]:
    """Train the masked model ``steps`` optimizer steps on the run's training data (its optimizer and fine-tuning
    strategy, constant LR without warmup), logging to ``out/finetune``; return the evaluation at the end. The
    trainer's checkpoints there hold masked weights and are removed: the caller saves the folded model."""
    if prepared.train_data is None:
        raise ConfigError("--finetune-steps: the run's training data is gone (data.train_file); nothing to fine-tune on")
    ft = copy.deepcopy(cfg)
    ft.output_dir = str(out / "finetune")
    ft.sched = SchedConfig(name="constant", warmup_steps=0)
    ft.train = dataclasses.replace(ft.train, max_steps=steps, eval_every=steps, save_every=0, resume=False,
                                   overwrite_output_dir=True, report=False, report_to=["jsonl"],
                                   early_stopping_patience=0, callbacks=[])
    trainer = Trainer.from_prepared(prepared, ft, group_builder=lambda m: finetune_groups(m, ft.optim, ft.finetune),
                                    callbacks=callbacks)
    results = trainer.fit()
    shutil.rmtree(out / "finetune" / "checkpoints", ignore_errors=True)
    prepared.task.eval()
    return results


def _evaluate(prepared: Any, cfg: Any) -> Optional[dict[str, float]]:
    if prepared.eval_data is None:
        return None
    return Trainer.from_prepared(prepared, cfg, train=False).evaluate()


def prune_run(run_dir: str | Path, amount: float, structured: bool = False, out: Optional[str | Path] = None,
              checkpoint: Optional[str] = None, trust_remote_code: bool = False, finetune_steps: int = 0,
              callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Prune the run's best (or given) checkpoint into ``out`` (default ``RUN_pruned<percent>``), fine-tune it
    ``finetune_steps`` steps with the masks kept (``callbacks`` see that training); return the summary written to
    ``out/pruning.json``."""
    if finetune_steps < 0:
        raise ConfigError(f"--finetune-steps={finetune_steps} must be >= 0")
    run_dir = Path(run_dir)
    tag = f"{'structured' if structured else 'pruned'}{round(amount * 100)}"
    out = Path(out) if out else run_dir.with_name(f"{run_dir.name}_{tag}")
    if out.resolve() == run_dir.resolve():
        raise ConfigError("--out must differ from the run directory (the source run is left as it is)")
    if rundir.holds_run(out):
        raise ConfigError(f"--out={str(out)!r} already holds a run; choose another directory")
    runlock.acquire(out, "prune into")  # one writer: a second prune into the same --out is refused
    source = pick_checkpoint(run_dir, checkpoint)
    cfg, prepared, _ = load_run(run_dir, checkpoint=checkpoint, trust_remote_code=trust_remote_code,
                                train_data=finetune_steps > 0)
    before = _evaluate(prepared, cfg)
    targets = apply_pruning(prepared.task, amount, structured, permanent=False)
    after = _evaluate(prepared, cfg)

    shutil.copytree(run_dir, out, ignore=lambda d, names: [n for n in names if Path(d) == run_dir and n in NOT_COPIED],
                    dirs_exist_ok=True)
    tuned = finetune_pruned(prepared, cfg, out, finetune_steps, callbacks) if finetune_steps else None
    make_permanent(targets)
    step = json.loads((source / ckpt.META).read_text())["step"]
    saved = ckpt.save(out / "checkpoints", step, prepared.task, {}, (run_dir / "config.yaml").read_text())
    if (out / "encoders").exists():  # the encoders eval/predict would not use, re-saved pruned
        shutil.rmtree(out / "encoders")
        save_encoders(prepared.task, out / "encoders")
    summary = {"source": str(run_dir), "checkpoint": str(source), "pruned_checkpoint": f"checkpoints/{saved.name}",
               "method": "ln_structured (L2, output channels/rows, per layer)" if structured
               else "global_unstructured L1", "amount": amount, "sparsity": sparsity(targets),
               "pruned_layers": len(targets), "pruned_weights": sum(getattr(m, n).numel() for m, n in targets),
               "metrics_before": before, "metrics_after": after, "finetune_steps": finetune_steps,
               "metrics_after_finetune": tuned}
    (out / "pruning.json").write_text(json.dumps(summary, indent=2))
    final = tuned or after
    if final:
        rundir.write_final(out, final, step, saved)
    return summary
