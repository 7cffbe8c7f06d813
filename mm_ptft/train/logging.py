"""Run logging: metrics.jsonl, TensorBoard events, and a progress bar (plain lines when not a tty)."""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger("mm_ptft")


def setup_console(level: int = logging.INFO) -> None:
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        log.addHandler(h)
        log.propagate = False
    log.setLevel(level)


def _step_of(line: str) -> Optional[int]:
    """The step of one metrics.jsonl line; None for a blank or half-written one (a run killed mid-write)."""
    try:
        return int(json.loads(line).get("step", 0))
    except ValueError:
        return None


def _fmt(record: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())


class RunLogger:
    """Writes one JSON object per event to ``metrics.jsonl`` and mirrors scalars to TensorBoard.
    Only the main rank writes; other ranks get a no-op logger."""

    def __init__(self, run_dir: Path, enabled: bool, total_steps: int, start_step: int = 0) -> None:
        self.enabled, self.path = enabled, run_dir / "metrics.jsonl"
        self.tb = self.bar = None
        if not enabled:
            return
        setup_console()
        self._drop_after(start_step)
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step or None)
        self.tty = sys.stderr.isatty()
        if self.tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)
        self.t0, self.total = time.time(), total_steps

    def _drop_after(self, step: int) -> None:
        """On resume, forget events logged after the checkpoint we restart from."""
        if not self.path.exists():
            return
        keep = [ln for ln in self.path.read_text().splitlines() if _step_of(ln) is not None and _step_of(ln) <= step]
        self.path.write_text("".join(ln + "\n" for ln in keep))

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def log(self, step: int, kind: str, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "kind": kind, "time": round(time.time(), 3), **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self.tb.add_scalar(f"{kind}/{k}", v, step)
        line = f"[{kind}] step {step}/{self.total} " + _fmt(values)
        if self.bar is not None:
            self.bar.set_postfix_str(_fmt({k: v for k, v in values.items() if "loss" in k})[:80])
            if kind != "train":
                self.bar.write(line)
        else:
            log.info(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
