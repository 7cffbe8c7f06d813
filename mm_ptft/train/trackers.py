"""Where a run's records go (``train.report_to``): metrics.jsonl and TensorBoard in the run directory, and
W&B and MLflow through their own libraries (``pip install 'mm_ptft[trackers]'``, imported only when used).

Every tracker receives the same records: the resolved config once at the start, each row the run logs
(``{"step", "kind", "time", **values}``: train / eval / data / fault / early_stop / config_change …) and the
final metrics at the end. Only the main process reports. ``jsonl`` is always on, listed or not:
metrics.jsonl is part of the run directory (report.md, resume and the tests read it)."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from mm_ptft.config import ConfigError
from mm_ptft.registry import Registry

META = ("step", "kind", "time")  # the keys of a record that are not values


class TrackerError(ConfigError):
    """A tracker that would not start; the message is one line naming it and the settings it read."""


class Tracker:
    """A sink for a run's records. ``start`` once (resumed runs: ``start_step`` > 0), ``log`` each record,
    ``finish`` with the final metrics (None when the run failed)."""

    def start(self, run_dir: Path, config: dict[str, Any], start_step: int) -> None: ...

    def log(self, record: dict[str, Any]) -> None: ...

    def finish(self, results: Optional[dict[str, float]]) -> None: ...

    #: the environment variables that choose where it reports (named when it fails to start)
    settings: tuple[str, ...] = ()


def start(tracker: Tracker, run_dir: Path, config: dict[str, Any], start_step: int) -> None:
    """``tracker.start``; any failure (a refused store URI, a login W&B wants) as one ``TrackerError`` line naming
    the tracker, its ``train.report_to`` entry and the settings it read."""
    try:
        tracker.start(run_dir, config, start_step)
    except Exception as err:
        raise start_error(tracker, err) from err


def start_error(tracker: Tracker, err: BaseException) -> TrackerError:
    """The one line for a tracker that did not start: its ``train.report_to`` entry, the settings it read, the error."""
    where = getattr(tracker, "where", type(tracker).__name__)
    env = ", ".join(f"{k}={os.environ[k]!r}" for k in tracker.settings if k in os.environ)
    msg = (str(err).strip().splitlines() or [""])[0][:300]
    return TrackerError(f"{where}: the tracker did not start ({env or 'no ' + '/'.join(tracker.settings) + ' set'}"
                        f"): {type(err).__name__}: {msg}")


TRACKERS: Registry[Tracker] = Registry("tracker")
EXTRA = "pip install 'mm_ptft[trackers]'"


def scalars(record: dict[str, Any]) -> Iterator[tuple[str, float]]:
    """``(<kind>/<name>, value)`` for every number in a record (the names TensorBoard shows)."""
    for k, v in record.items():
        if k not in META and isinstance(v, (int, float)) and not isinstance(v, bool):
            yield f"{record['kind']}/{k}", v


def flatten(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1e-3}}`` → ``{"optim.lr": 1e-3}`` (lists and empty dicts stay values)."""
    out: dict[str, Any] = {}
    for k, v in node.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, key + ".") if isinstance(v, dict) and v else {key: v})
    return out


def _step_of(line: str) -> Optional[int]:
    """The step of one metrics.jsonl line; None for a blank or half-written one (a run killed mid-write)."""
    try:
        return int(json.loads(line).get("step", 0))
    except ValueError:
        return None


@TRACKERS.register("jsonl")
class JsonlTracker(Tracker):
    """``metrics.jsonl``: one JSON object per record; a resumed run first forgets the rows after its checkpoint."""

    def start(self, run_dir: Path, config: dict[str, Any], start_step: int) -> None:
        self.path = run_dir / "metrics.jsonl"
        if self.path.exists():
            keep = [ln for ln in self.path.read_text().splitlines()
                    if _step_of(ln) is not None and _step_of(ln) <= start_step]
            self.path.write_text("".join(ln + "\n" for ln in keep))

    def log(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


@TRACKERS.register("tensorboard")
class TensorBoardTracker(Tracker):
    """TensorBoard events in ``tensorboard/``, one scalar per number (``train/loss``, ``eval/accuracy`` …).

    Importing ``torch.utils.tensorboard`` (40–60 ms measured once a run's other imports are done; more on a cold
    start) and opening the writer happen in a background thread started by ``start``, off the run's start-up: the
    first steps run meanwhile (their kernels release the GIL). Records logged before the writer is ready wait in a
    list; the first ``log`` after it is ready writes them, ``finish`` waits for it. A start that failed there is
    retried once here (a failure of the thread's import machinery, not of the start, does not lose the events) and,
    failing again, raised at that ``log`` / ``finish`` as the ``TrackerError`` naming the ``train.report_to`` entry."""

    def start(self, run_dir: Path, config: dict[str, Any], start_step: int) -> None:
        self.dir, self.purge_step = run_dir / "tensorboard", start_step or None
        self.writer: Any = None
        self.pending: list[dict[str, Any]] = []
        self.error: Optional[BaseException] = None
        self.opening = threading.Thread(target=self._open_in_background, name="mm_ptft-tensorboard", daemon=True)
        self.opening.start()

    def _open(self) -> Any:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.dir), purge_step=self.purge_step)

    def _open_in_background(self) -> None:
        try:
            self.writer = self._open()
        except Exception as err:  # kept for the main thread: raised at the next log / finish
            self.error = err

    def _ready(self, wait: bool) -> bool:
        """Whether the writer is open (waiting for it when ``wait``); a failed start is retried once, then raised."""
        if self.opening is not None:
            if self.opening.is_alive() and not wait:
                return False
            self.opening.join()
            self.opening = None
            if self.error is not None:
                try:
                    self.writer = self._open()
                except Exception as err:
                    raise start_error(self, err) from err
            for record in self.pending:
                self._write(record)
            self.pending = []
        return True

    def _write(self, record: dict[str, Any]) -> None:
        for name, v in scalars(record):
            self.writer.add_scalar(name, v, record["step"])

    def log(self, record: dict[str, Any]) -> None:
        if self._ready(wait=False):
            self._write(record)
        else:
            self.pending.append(record)

    def finish(self, results: Optional[dict[str, float]]) -> None:
        self._ready(wait=True)
        if self.writer is not None:  # None: its start failed, already raised at a log
            self.writer.close()


@TRACKERS.register("wandb")
class WandbTracker(Tracker):
    """A W&B run: the config as its (nested) config, numbers as history at each step, the final metrics as
    ``final/<name>`` in its summary. W&B's own environment variables apply (``WANDB_MODE=offline``,
    ``WANDB_ENTITY``…); the project defaults to ``mm_ptft``, the name to the run directory's, the files to
    ``<run dir>/wandb`` (``WANDB_DIR`` overrides). A resumed run reports as a new W&B run."""

    settings = ("WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_DIR", "WANDB_BASE_URL")

    def start(self, run_dir: Path, config: dict[str, Any], start_step: int) -> None:
        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "mm_ptft",
                              name=os.environ.get("WANDB_NAME") or run_dir.name,
                              dir=os.environ.get("WANDB_DIR") or str(run_dir), config=config,
                              reinit="create_new")
        if start_step:
            self.run.summary["resumed_from_step"] = start_step

    def log(self, record: dict[str, Any]) -> None:
        values = dict(scalars(record))
        if values:
            self.run.log(values, step=record["step"])

    def finish(self, results: Optional[dict[str, float]]) -> None:
        if results:
            self.run.summary.update({f"final/{k}": v for k, v in results.items()})
        self.run.finish(exit_code=0 if results is not None else 1)


_MLFLOW_BAD = re.compile(r"[^\w\-. /:]")  # MLflow names: alphanumerics, _ - . space / (and : here)


@TRACKERS.register("mlflow")
class MlflowTracker(Tracker):
    """An MLflow run (through its own client, not the global active run): the flattened config as params
    (``optim.lr`` …), numbers as metrics at each step, the final metrics as ``final/<name>``. MLflow's own
    environment variables choose the store (``MLFLOW_TRACKING_URI``); the experiment is
    ``MLFLOW_EXPERIMENT_NAME``, else ``mm_ptft``; the run is named after the run directory."""

    settings = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")
    MAX_PARAMS, MAX_VALUE = 100, 6000  # per log_batch call; characters per param value

    def start(self, run_dir: Path, config: dict[str, Any], start_step: int) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "mm_ptft"
        exp = self.client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(name)
        tags = {"mm_ptft.output_dir": str(run_dir.resolve()), "mm_ptft.task": str(config.get("task", ""))}
        if start_step:
            tags["mm_ptft.resumed_from_step"] = str(start_step)
        self.run_id = self.client.create_run(exp_id, run_name=run_dir.name, tags=tags).info.run_id
        params = [Param(_MLFLOW_BAD.sub("_", k), str(v)[: self.MAX_VALUE]) for k, v in flatten(config).items()]
        for i in range(0, len(params), self.MAX_PARAMS):
            self.client.log_batch(self.run_id, params=params[i:i + self.MAX_PARAMS])
        self.last_step = start_step

    def _metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(_MLFLOW_BAD.sub("_", k), float(v), now, step) for k, v in values.items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def log(self, record: dict[str, Any]) -> None:
        self.last_step = record["step"]
        self._metrics(dict(scalars(record)), record["step"])

    def finish(self, results: Optional[dict[str, float]]) -> None:
        numbers = {f"final/{k}": v for k, v in (results or {}).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self._metrics(numbers, self.last_step)
        self.client.set_terminated(self.run_id, "FINISHED" if results is not None else "FAILED")


_PACKAGES = {"wandb": "wandb", "mlflow": "mlflow"}  # tracker → the module it imports


def from_config(report_to: Sequence[str]) -> list[Tracker]:
    """The trackers ``train.report_to`` names, metrics.jsonl first (always: the run directory needs it).
    An unknown name, or a tracker whose library is not installed, is a ``ConfigError`` naming the entry."""
    trackers: list[Tracker] = [JsonlTracker()]
    for i, name in enumerate(report_to):
        where = f"train.report_to[{i}]={name!r}"
        if name not in TRACKERS:
            raise ConfigError(f"{where}: unknown tracker; choose from {TRACKERS.names()}")
        package = _PACKAGES.get(name)
        if package and importlib.util.find_spec(package) is None:
            raise ConfigError(f"{where} needs the {package} package: {EXTRA}")
        if name != "jsonl" and name not in report_to[:i]:
            tracker = TRACKERS.build(name, where)
            tracker.where = where
            trackers.append(tracker)
    return trackers


__all__ = ["EXTRA", "TRACKERS", "Tracker", "TrackerError", "start", "start_error", "flatten", "from_config",
           "scalars"]
