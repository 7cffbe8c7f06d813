"""Hyperparameter search with Optuna: ``mm-ptft sweep CONFIG --space SPACE.yaml --trials N [--jobs J] [--out DIR]``.

Each trial is a normal run directory (``DIR/trial_000/``…) trained by the run path with one extra callback that
reports every evaluation's metric to Optuna (``trial.report``) and, when the median pruner says so, asks the
trainer to stop after that evaluation (``trainer.should_stop``): a pruned run still ends with its checkpoint,
``final_metrics.json`` and report; a run whose loss diverges (``NonFiniteError``) is a failed trial and the
search goes on. TPE samples the space. The metric is ``train.metric_for_best`` (with
``train.greater_is_better``), else the task's main metric, as the trainer picks it; the study maximises it signed
by that direction, and everything written here shows the metric itself. ``--jobs J`` runs J worker *processes*
(not threads: a run seeds the global RNGs and sets process-wide torch state) that share one Optuna journal file.
Written to DIR: ``sweep.csv`` and ``sweep.md`` (trial, state, value, params, run), ``sweep.png`` (value per
trial and best so far), ``sweep.json`` and ``best.yaml`` (the base config with the best parameters, for
``mm-ptft train best.yaml``).
"""
from __future__ import annotations

import csv
import json
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import yaml

from mm_ptft.config import ConfigError, to_yaml
from mm_ptft.contracts import Callback
from mm_ptft.env import EnvironmentProblem
from mm_ptft.train.trainer import NonFiniteError

TYPES = {"float": {"low", "high", "log", "step"}, "int": {"low", "high", "log", "step"}, "categorical": {"choices"}}
STUDY = "mm_ptft_sweep"
#: errors that fail one trial (state ``fail`` in the table) and let the sweep go on; any other error stops it
CATCH = (NonFiniteError,)


def load_space(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Read and check ``{key.path: {type: float|int|categorical, low, high, log, step, choices}}``; every error
    names the key."""
    raw = yaml.safe_load(Path(path).read_text()) if Path(path).is_file() else None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"--space {path}: expected a YAML mapping {{key.path: {{type: float|int|categorical, ...}}}}")
    space = {}
    for key, spec in raw.items():
        where = f"--space {path}: {key}"
        if not isinstance(spec, dict) or spec.get("type") not in TYPES:
            raise ConfigError(f"{where}: needs type: float, int or categorical")
        kind = spec["type"]
        unknown = sorted(set(spec) - TYPES[kind] - {"type"})
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {unknown} for type {kind} (accepted: {sorted(TYPES[kind])})")
        if kind == "categorical":
            if not isinstance(spec.get("choices"), list) or not spec["choices"]:
                raise ConfigError(f"{where}: categorical needs a non-empty list of choices")
        else:
            num = float if kind == "float" else int
            lo, hi = spec.get("low"), spec.get("high")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)) or lo >= hi:
                raise ConfigError(f"{where}: needs numbers low < high (got low={lo!r}, high={hi!r})")
            if num is int and not (float(lo).is_integer() and float(hi).is_integer()):
                raise ConfigError(f"{where}: an int range needs integer low and high")
            if spec.get("log") and lo <= 0:
                raise ConfigError(f"{where}: log: true needs low > 0")
            if spec.get("log") and spec.get("step") is not None:
                raise ConfigError(f"{where}: log and step cannot be combined")
        space[str(key)] = dict(spec)
    return space


def check_space(space: Mapping[str, Mapping[str, Any]], config: str, overrides: Sequence[str], path: str) -> None:
    """Each key set to a value of its range must make a valid config (a missing key or a wrong type is named)."""
    from mm_ptft.run import library

    for key, s in space.items():
        value = s["choices"][0] if s["type"] == "categorical" else s["low"]
        try:
            library.load_config(config, list(overrides), **{key: value})
        except ConfigError as err:
            raise ConfigError(f"--space {path}: {key}: {err}") from None


def suggest(trial: Any, space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One value per key of the space, drawn by the trial's sampler."""
    out = {}
    for key, s in space.items():
        if s["type"] == "categorical":
            out[key] = trial.suggest_categorical(key, s["choices"])
        else:
            fn = trial.suggest_float if s["type"] == "float" else trial.suggest_int
            extra = {"step": s["step"]} if s.get("step") is not None else {}
            out[key] = fn(key, s["low"], s["high"], log=bool(s.get("log", False)), **extra)
    return out


class ReportToTrial(Callback):
    """Reports each evaluation's metric to an Optuna trial; stops the run cleanly when the pruner says so."""

    def __init__(self, trial: Any) -> None:
        self.trial, self.pruned = trial, False

    def on_train_start(self, trainer: Any) -> None:
        self.trial.set_user_attr("metric", trainer.metric)
        self.trial.set_user_attr("greater_is_better", bool(trainer.greater))

    def on_evaluate(self, trainer: Any, results: dict[str, float]) -> None:
        value = results.get(trainer.metric)
        if value is None or not math.isfinite(value):
            return
        self.trial.report(value if trainer.greater else -value, trainer.step)
        if self.trial.should_prune():
            self.pruned = trainer.should_stop = True
            trainer.logger.log(trainer.step, "stop_requested", {"by": "optuna pruner", "best_step": trainer.best_step})


def _objective(config: str, overrides: Sequence[str], space: dict, out: Path):
    def objective(trial: Any) -> float:
        import optuna

        from mm_ptft.run import library

        params = suggest(trial, space)
        run_dir = out / f"trial_{trial.number:03d}"
        trial.set_user_attr("run_dir", run_dir.name)
        cb = ReportToTrial(trial)
        try:
            results = library.train(config, [*overrides, f"output_dir={json.dumps(str(run_dir))}"], callbacks=[cb],
                                **params)
        except NonFiniteError as err:  # e.g. a learning rate too high: a failed trial (CATCH), not a failed sweep
            trial.set_user_attr("error", str(err).split(";")[0])
            raise
        metric = trial.user_attrs["metric"]
        if metric not in results:
            raise ConfigError(f"{run_dir}: the final evaluation has no {metric!r} (has {sorted(results)}); "
                              f"set train.metric_for_best")
        trial.set_user_attr("value", results[metric])
        if cb.pruned:
            raise optuna.TrialPruned(f"{run_dir.name}: stopped by the median pruner")
        return results[metric] if trial.user_attrs["greater_is_better"] else -results[metric]

    return objective


def _study(storage: Any, seed: int, pruner: Any = None, create: bool = False) -> Any:
    import optuna

    sampler = optuna.samplers.TPESampler(seed=seed)
    pruner = pruner if pruner is not None else optuna.pruners.MedianPruner()
    if create:
        return optuna.create_study(storage=storage, sampler=sampler, pruner=pruner, study_name=STUDY,
                                   direction="maximize")
    return optuna.load_study(study_name=STUDY, storage=storage, sampler=sampler, pruner=pruner)


def _worker(config: str, overrides: Sequence[str], space: dict, out: str, journal: str, n_trials: int, seed: int) -> None:
    """One ``--jobs`` process: its share of the trials, on the study in the shared journal file."""
    import optuna

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(journal))
    _study(storage, seed).optimize(_objective(config, overrides, space, Path(out)), n_trials=n_trials,
                                   catch=CATCH, gc_after_trial=True)


def run_sweep(config: str, space_path: str, trials: int, jobs: int = 1, out: Optional[str] = None,
              overrides: Sequence[str] = (), pruner: Any = None) -> dict[str, Any]:
    """Run the search and write its summary; returns what ``sweep.json`` holds."""
    try:
        import optuna
    except ModuleNotFoundError as err:
        raise EnvironmentProblem(f"mm-ptft sweep needs optuna ({err}): pip install -e '.[search]'") from None

    from mm_ptft.run import library

    base = library.load_config(config, list(overrides))
    space = load_space(space_path)
    check_space(space, config, overrides, space_path)
    if trials < 1 or jobs < 1:
        raise ConfigError(f"--trials ({trials}) and --jobs ({jobs}) must be at least 1")
    out_dir = Path(out or Path(base.output_dir).with_name(Path(base.output_dir).name + "_sweep"))
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"--out {out_dir} is not empty (another sweep's trials?); choose a new directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if jobs == 1:
        study = _study(None, base.seed, pruner, create=True)
        study.optimize(_objective(config, list(overrides), space, out_dir), n_trials=trials, catch=CATCH)
    else:
        journal = str(out_dir / "optuna_journal.log")
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(journal))
        study = _study(storage, base.seed, pruner, create=True)
        shares = [trials // jobs + (i < trials % jobs) for i in range(jobs)]
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_worker, config, list(overrides), space, str(out_dir), journal, n, base.seed + i)
                       for i, n in enumerate(shares) if n]
            for f in futures:
                f.result()
        study = _study(storage, base.seed)
    return write_summary(study, config, list(overrides), space, out_dir)


def write_summary(study: Any, config: str, overrides: Sequence[str], space: Mapping[str, Any],
                  out: Path) -> dict[str, Any]:
    """``sweep.csv``/``.md``/``.png``/``.json`` and ``best.yaml`` from the finished study."""
    from mm_ptft.run import library

    rows = [{"trial": t.number, "state": t.state.name.lower(), "value": t.user_attrs.get("value"),
             **{k: t.params.get(k) for k in space}, "run": t.user_attrs.get("run_dir", "")}
            for t in sorted(study.trials, key=lambda t: t.number)]
    with open(out / "sweep.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cell(r[k]) for k in head) + " |" for r in rows]
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    attrs = next((t.user_attrs for t in study.trials if "metric" in t.user_attrs), {})
    metric, greater = attrs.get("metric", "?"), attrs.get("greater_is_better", True)
    summary: dict[str, Any] = {"metric": metric, "greater_is_better": greater, "trials": rows, "best": None}
    if done:
        best = max(done, key=lambda t: t.value)
        summary["best"] = {"trial": best.number, "value": best.user_attrs["value"], "params": best.params,
                           "run": best.user_attrs["run_dir"]}
        cfg = library.load_config(config, [*overrides, f"output_dir={json.dumps(str(out / 'best'))}"], **best.params)
        (out / "best.yaml").write_text(f"# best of sweep {out}: trial {best.number}, {metric}="
                                       f"{best.user_attrs['value']:.6g}; params {json.dumps(best.params)}\n"
                                       + to_yaml(cfg))
    title = f"{metric} ({'higher' if greater else 'lower'} is better)"
    (out / "sweep.md").write_text(f"# Sweep: {title}\n\n" + "\n".join(lines) + "\n\n![search](sweep.png)\n")
    (out / "sweep.json").write_text(json.dumps(summary, indent=1))
    _plot(rows, title, greater, out / "sweep.png")
    return summary


def _cell(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else "" if v is None else str(v)


def _plot(rows: list[dict[str, Any]], title: str, greater: bool, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for state, marker in (("complete", "o"), ("pruned", "x")):
        pts = [(r["trial"], r["value"]) for r in rows if r["state"] == state and r["value"] is not None]
        if pts:
            ax.scatter(*zip(*pts), marker=marker, label=state)
    best, xs, ys = None, [], []
    for r in rows:
        if r["state"] == "complete" and r["value"] is not None:
            best = r["value"] if best is None else (max if greater else min)(best, r["value"])
        if best is not None:
            xs.append(r["trial"])
            ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", label="best so far")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
