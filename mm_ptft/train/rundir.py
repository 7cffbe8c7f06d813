"""A run directory as a contract: one run per ``output_dir`` (another run there is refused unless resumed
or overwritten on purpose), resumed only with the configuration it was trained with (or with the changes
named and applied), relocatable (paths inside it are written relative to it), and no temporary leftovers.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from mm_ptft.config import ConfigError, RunConfig, redacted, to_dict

log = logging.getLogger("mm_ptft")

#: what a run writes at the top of its directory (an overwrite removes these and nothing else)
RUN_ENTRIES = ("config.yaml", "metrics.jsonl", "final_metrics.json", "checkpoints", "encoders", "tensorboard",
               "report.md", "plots", "tokenizer", "export", "detections_eval.json", "generated_data",
               "wandb", "confusion_matrix.json", "confusion_matrix.png", "pruning.json", "lm")
#: any of these means the directory holds a run
RUN_MARKERS = ("config.yaml", "checkpoints", "final_metrics.json")
#: keys a resumed run may change without becoming another run (how long, where, how it reports)
RUN_CONTROL = {"output_dir", "train.resume", "train.overwrite_output_dir", "train.on_config_change", "train.max_steps",
               "train.epochs", "train.device", "train.num_workers", "train.persistent_workers",
               "train.prefetch_factor", "train.log_every", "train.eval_every",
               "train.save_every", "train.save_every_minutes", "train.keep_last", "train.async_save", "train.report",
               "train.eval_batch_size",
               "train.early_stopping_patience", "train.max_bad_steps", "train.report_to",
               "train.threads", "train.preempt_signals", "train.requeue"}
OUTPUT_DIR_REF = "${output_dir}"


def holds_run(run_dir: Path) -> list[str]:
    """The run markers present in ``run_dir`` (empty: no run there)."""
    return [name for name in RUN_MARKERS if (run_dir / name).exists()]


def claim(cfg: RunConfig, restarting: bool = False) -> None:
    """Check ``output_dir`` before anything is written into it (every rank; read-only)."""
    run_dir, tc = Path(cfg.output_dir), cfg.train
    found = holds_run(run_dir)
    if found and not (tc.resume or tc.overwrite_output_dir or restarting):
        raise ConfigError(f"output_dir={str(run_dir)!r} already holds a run ({', '.join(found)}). Continue it with "
                          f"train.resume=true, replace it with train.overwrite_output_dir=true, or choose another "
                          f"output_dir")


def clear_for_overwrite(cfg: RunConfig) -> None:
    """With ``train.overwrite_output_dir=true`` and no resume: remove the previous run's entries (main
    process only), so none of its checkpoints, metrics or tokenizer can leak into the new run."""
    run_dir, tc = Path(cfg.output_dir), cfg.train
    if not tc.overwrite_output_dir or tc.resume or not holds_run(run_dir):
        return
    removed = [name for name in RUN_ENTRIES if (run_dir / name).exists()]
    for name in removed:
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    log.warning("train.overwrite_output_dir=true: removed the previous run's %s from %s", ", ".join(removed), run_dir)


# ---- relocatable configs --------------------------------------------------------------------------

def run_relative(value: str, root: Path) -> Optional[str]:
    """``${output_dir}/rel`` when ``value`` is a path inside ``root``, else None."""
    if not value or "\n" in value or value.startswith("${"):
        return None
    try:
        rel = Path(os.path.abspath(value)).relative_to(os.path.abspath(root))
    except ValueError:
        return None
    return OUTPUT_DIR_REF if str(rel) == "." else f"{OUTPUT_DIR_REF}/{rel.as_posix()}"


def _relocate(node: Any, root: Path, key: str = "") -> Any:
    if isinstance(node, dict):
        return {k: _relocate(v, root, k) for k, v in node.items()}
    if isinstance(node, list):
        return [_relocate(v, root) for v in node]
    if isinstance(node, str) and key != "output_dir":
        return run_relative(node, root) or redacted(node)  # a URL without its query string (a signature)
    return node


def config_yaml(cfg: RunConfig, resolved: Optional[dict[str, Any]] = None) -> str:
    """The resolved config as YAML, every path inside the run directory written as ``${output_dir}/…``:
    a copied or moved run (loaded with its new ``output_dir``) reads its own tokenizer and data. URLs are written
    ``config.redacted`` (no credentials, no query string: a presigned URL is given again to resume). ``resolved``:
    ``to_dict(cfg)`` when the caller has it already (resolving takes tens of ms)."""
    resolved = to_dict(cfg) if resolved is None else resolved
    return OmegaConf.to_yaml(OmegaConf.create(_relocate(resolved, Path(cfg.output_dir))))


# ---- resume with another configuration -------------------------------------------------------------

def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def saved_config(run_dir: Path) -> Optional[dict[str, Any]]:
    """The run's ``config.yaml`` with ``${output_dir}`` resolved to where the run is now."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    saved = OmegaConf.load(path)
    saved.output_dir = str(run_dir)
    return OmegaConf.to_container(saved, resolve=True)  # type: ignore[return-value]


def config_changes(run_dir: Path, cfg: RunConfig) -> list[tuple[str, Any, Any]]:
    """(key, saved value, new value) for every key a resume would change, run-control keys aside."""
    saved = saved_config(run_dir)
    if saved is None:
        return []
    old, new = _flatten(saved), {k: redacted(v) for k, v in _flatten(to_dict(cfg)).items()}  # as config_yaml wrote
    return [(k, old.get(k), v) for k, v in sorted(new.items())
            if k not in RUN_CONTROL and k in old and old[k] != v]


def check_resume(run_dir: Path, cfg: RunConfig) -> list[tuple[str, Any, Any]]:
    """Refuse (naming the keys) a resume whose config differs from the run's, unless
    ``train.on_config_change=new``; return the changes that will apply."""
    changes = config_changes(run_dir, cfg)
    policy = cfg.train.on_config_change
    if policy not in ("error", "new"):
        raise ConfigError(f"train.on_config_change={policy!r}; choose one of ['error', 'new']")
    if changes and policy == "error":
        listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in changes[:10])
        raise ConfigError(f"train.resume=true, but the config differs from the run's {run_dir / 'config.yaml'}: "
                          f"{listed}. Resume as it was: mm-ptft train {run_dir / 'config.yaml'} train.resume=true; "
                          f"apply the new values: train.on_config_change=new; or train into another output_dir")
    return changes


def entries(run_dir: Path) -> Optional[set[str]]:
    """The names at the top of ``run_dir``; None when it does not exist (what ``undo_created`` restores)."""
    return {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else None


def undo_created(run_dir: Path, before: Optional[set[str]]) -> None:
    """A run that failed before its first step: remove what it created in ``run_dir`` (the whole directory when
    it did not exist; else only the entries that were not there), so the rerun finds it as it was. The run lock
    guarantees no other writer made them."""
    if not run_dir.exists():
        return
    created = sorted({p.name for p in run_dir.iterdir()} - (before or set()))
    if before is None:
        shutil.rmtree(run_dir, ignore_errors=True)
    for name in created if before is not None else ():
        path = run_dir / name
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    if created or before is None:
        log.info("the run failed before its first step: removed what it created in %s (%s)", run_dir,
                 "the directory" if before is None else ", ".join(created))


def clean_stale(ckpt_root: Path) -> None:
    """Remove the half-written checkpoints (``.tmp_step_…``) and ``best.json.tmp`` a killed run left."""
    if not ckpt_root.is_dir():
        return
    for path in ckpt_root.iterdir():
        if path.name.startswith(".tmp_step_") or path.name == "best.json.tmp":
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            log.info("removed %s, left by an interrupted checkpoint write", path)


# ---- final metrics ---------------------------------------------------------------------------------

FINAL_METRICS = "final_metrics.json"
#: what final_metrics.json says besides the metrics: the step of the evaluation, the checkpoint holding its weights
#: and the run's phase split (``write_timing``)
FINAL_BOOKKEEPING = ("step", "checkpoint", "timing")


def write_final(run_dir: Path, results: dict[str, Any], step: int, checkpoint: Optional[Path]) -> None:
    """``final_metrics.json``: ``results`` (metric → value) with the ``step`` they were evaluated at and
    ``checkpoint``, that step's checkpoint (relative to the run; null when ``train.keep_last`` did not keep it), so
    the metrics cannot be taken for another checkpoint's."""
    where = f"{checkpoint.parent.name}/{checkpoint.name}" if checkpoint is not None and checkpoint.is_dir() else None
    (run_dir / FINAL_METRICS).write_text(json.dumps({"step": step, "checkpoint": where, **results}, indent=2))


def write_timing(run_dir: Path, step: int, split: dict[str, float]) -> None:
    """The run's phase split (``phases.PhaseClock.phases``), written when the run is done: a ``timing`` event
    appended to ``metrics.jsonl`` (after the trackers closed) and ``final_metrics.json``'s ``timing`` entry."""
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": step, "kind": "timing", "time": round(time.time(), 3), **split}) + "\n")
    record = final_record(run_dir)
    if record is not None:
        (run_dir / FINAL_METRICS).write_text(json.dumps({**record, "timing": split}, indent=2))


def final_record(run_dir: Path) -> Optional[dict[str, Any]]:
    """``final_metrics.json`` as written (metrics + bookkeeping), None when the run has none."""
    final = Path(run_dir) / FINAL_METRICS
    return json.loads(final.read_text()) if final.is_file() else None


def final_results(run_dir: Path) -> Optional[dict[str, float]]:
    """The metrics of ``final_metrics.json`` alone (what ``fit``/``train`` returned), bookkeeping keys stripped;
    None when the run has none."""
    record = final_record(run_dir)
    return None if record is None else {k: v for k, v in record.items() if k not in FINAL_BOOKKEEPING}


def finished_results(run_dir: Path, start_step: int, total: int) -> Optional[dict[str, float]]:
    """A resumed run that already reached its last step (``total``) and wrote its final metrics: those."""
    if start_step == 0 or start_step < total or not (run_dir / FINAL_METRICS).is_file():
        return None
    log.info("%s is finished (step %d of %d): nothing to train; final metrics unchanged", run_dir, start_step, total)
    return final_results(run_dir)
