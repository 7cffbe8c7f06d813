"""Where a run's wall time goes: start-up (process start → the first training step), training, evaluation and
the finish (final checkpoint, metrics, report, encoder directories), logged once at the end as a ``timing`` event
in ``metrics.jsonl`` and a ``timing`` entry of ``final_metrics.json``. The four phases sum to the wall time from
the process start to the moment the event is written."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Optional


def process_start() -> float:
    """When this process started, in ``time.time()`` seconds: its age from ``/proc/self/stat`` (clock ticks since
    boot, read against ``CLOCK_BOOTTIME``: 10 ms resolution), else psutil's create time, else now."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after "pid (comm)": field 3 onward
        ticks = int(fields[19])  # field 22: starttime
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        return time.time() - max(age, 0.0)
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:  # psutil missing or the platform refuses: start-up then reads 0
        return time.time()


@dataclass
class PhaseClock:
    """Time stamps of one fit (``time.time()`` seconds): the training loop's start, the evaluations' total and
    the end of the last one (the final evaluation)."""

    origin: float = field(default_factory=process_start)
    train_start: Optional[float] = None
    eval_s: float = 0.0
    last_eval_end: Optional[float] = None

    def start_training(self) -> None:
        self.train_start = time.time()

    def add_eval(self, seconds: float) -> None:
        self.eval_s += seconds
        self.last_eval_end = time.time()

    def phases(self, end: Optional[float] = None) -> dict[str, float]:
        """``startup_s``, ``train_s``, ``eval_s``, ``finish_s`` and their sum ``wall_s`` (process start → ``end``,
        default now). Training holds the checkpoints saved between evaluations; the finish starts when the last
        evaluation ends."""
        end = time.time() if end is None else end
        train_start = self.train_start if self.train_start is not None else end
        last_eval = self.last_eval_end if self.last_eval_end is not None else end
        startup = max(train_start - self.origin, 0.0)
        finish = max(end - last_eval, 0.0)
        train = max(end - train_start - finish - self.eval_s, 0.0)
        return {"startup_s": round(startup, 3), "train_s": round(train, 3), "eval_s": round(self.eval_s, 3),
                "finish_s": round(finish, 3), "wall_s": round(startup + train + self.eval_s + finish, 3)}
