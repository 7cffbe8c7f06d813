"""Run logging: events to the trackers (metrics.jsonl, TensorBoard, …) and a progress bar (plain lines when not a tty)."""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from mm_ptft.train.trackers import Tracker
from mm_ptft.train.trackers import start as start_tracker

log = logging.getLogger("mm_ptft")


class CurrentStderr(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is when a record is emitted (a later redirect or a test's
    capture), not the stream of the first set-up, which may be closed by then."""

    @property
    def stream(self) -> Any:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def setup_console(level: int = logging.INFO) -> None:
    if not log.handlers:
        h = CurrentStderr()
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        log.addHandler(h)
        log.propagate = False
    log.setLevel(level)


def _fmt(record: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())


class RunLogger:
    """Hands each event to the run's trackers (metrics.jsonl always; TensorBoard, W&B, MLflow as
    ``train.report_to`` says) and shows it on the console: a progress bar on a tty, plain lines otherwise.
    Only the main rank reports; other ranks get a no-op logger."""

    def __init__(self, run_dir: Path, enabled: bool, total_steps: int, start_step: int = 0,
                 trackers: Sequence[Tracker] = (), config: Optional[dict[str, Any]] = None) -> None:
        self.enabled, self.path = enabled, run_dir / "metrics.jsonl"
        self.trackers: list[Tracker] = []
        self.bar = None
        if not enabled:
            return
        setup_console()
        for tracker in trackers:
            try:
                start_tracker(tracker, run_dir, config or {}, start_step)
            except BaseException:
                self.close(None)  # the ones already started
                raise
            self.trackers.append(tracker)  # started: finished by close()
        self.tty = sys.stderr.isatty()
        if self.tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)
        self.t0, self.total = time.time(), total_steps

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def log(self, step: int, kind: str, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "kind": kind, "time": round(time.time(), 3), **values}
        for tracker in self.trackers:
            tracker.log(record)
        line = f"[{kind}] step {step}/{self.total} " + _fmt(values)
        if self.bar is not None:
            self.bar.set_postfix_str(_fmt({k: v for k, v in values.items() if "loss" in k})[:80])
            if kind != "train":
                self.bar.write(line)
        else:
            log.info(line)

    def close(self, results: Optional[dict[str, float]] = None) -> None:
        """Finish every tracker with the final metrics (None: the run failed). Idempotent."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            try:
                tracker.finish(results)
            except Exception as err:  # one tracker failing to close must not hide the others (or the run's error)
                log.warning("closing %s failed: %s", type(tracker).__name__, err)
