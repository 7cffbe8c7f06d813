"""Step-boundary triggers agreed by every rank: preemption and time-based checkpoints.

Preemption: SLURM, Kubernetes and spot instances send SIGTERM (or the ``--signal`` of ``sbatch``) and SIGKILL
after a grace period. On one of ``train.preempt_signals`` the handler only sets a flag; after the optimizer step
in flight, the run writes a normal checkpoint (atomic, data position included), logs a ``preempted`` row,
optionally requeues the SLURM job (``train.requeue=auto``) and exits with ``PREEMPTED_EXIT``; ``train.resume=true``
continues it exactly. SIGINT does the same once; a second SIGINT raises KeyboardInterrupt at once.

Time-based checkpoints: ``train.save_every_minutes`` asks for a checkpoint once that long has passed since the last
one (any checkpoint resets the clock: ``on_save``), besides ``train.save_every`` steps.

Under torchrun the ranks must act at one step (a checkpoint is a collective): both flags — signal received, save
due by this rank's clock — are agreed by one ``all_reduce`` (max) every ``train.log_every`` steps, where the trainer
syncs with the host for its log anyway — not a host sync per step. A single process reads its flag (a Python bool)
and its clock after every step.
"""
from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import subprocess
import threading
from time import monotonic
from typing import Any, Callable, Optional

from mm_ptft.config import ConfigError
from mm_ptft.contracts import Callback
from mm_ptft.train import distributed as D

log = logging.getLogger("mm_ptft")
PREEMPTED_EXIT = 143  # 128 + SIGTERM, the status a shell reports for a job ended by SIGTERM


class Preempted(Exception):
    """The run stopped on a preemption signal after checkpointing; ``code`` is the process exit status."""

    code = PREEMPTED_EXIT


def parse_signals(names: list[str]) -> list[signal.Signals]:
    """``["SIGTERM", "USR1"]`` → signals; an unknown name is a ConfigError naming ``train.preempt_signals``."""
    out = []
    for i, name in enumerate(names):
        full = str(name).upper() if str(name).upper().startswith("SIG") else f"SIG{str(name).upper()}"
        if full in ("SIGKILL", "SIGSTOP") or not hasattr(signal.Signals, full):
            raise ConfigError(f"train.preempt_signals[{i}]={name!r}: not a signal a process can catch "
                              f"(e.g. SIGTERM, SIGUSR1, SIGUSR2, SIGHUP)")
        out.append(signal.Signals[full])
    return out


def _ignore_signals(signums: tuple[int, ...], worker_id: int) -> None:
    for signum in signums:
        signal.signal(signum, signal.SIG_IGN)


def worker_init(names: list[str]) -> Optional[Callable[[int], None]]:
    """A loader ``worker_init_fn`` that makes workers ignore the preemption signals and SIGINT (None when preemption
    is off). SLURM signals every process of a job step and Ctrl-C the terminal's whole process group: a worker killed
    by SIGTERM/SIGUSR1 (torch's worker handler re-raises it) would fail the step the checkpoint waits for. The main
    process stops the workers itself; they also exit when it dies (torch's parent watchdog)."""
    if not names:
        return None
    return functools.partial(_ignore_signals, tuple(sorted(int(s) for s in {*parse_signals(names), signal.SIGINT})))


def requeue() -> Optional[str]:
    """``scontrol requeue $SLURM_JOB_ID`` (None without SLURM_JOB_ID); a failure is logged, not raised."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        log.warning("train.requeue=auto, but SLURM_JOB_ID is not set: not requeued")
        return None
    exe = shutil.which("scontrol")
    if exe is None:
        log.warning("train.requeue=auto: scontrol is not on PATH; job %s not requeued", job)
        return None
    done = subprocess.run([exe, "requeue", job], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        log.warning("scontrol requeue %s failed (%d): %s", job, done.returncode, done.stderr.strip()[:300])
        return None
    log.info("requeued SLURM job %s", job)
    return job


class Preemption(Callback):
    """Installs the handlers for the fit (``on_train_start`` … ``on_train_end``) and stops at a step boundary; asks
    for a checkpoint (``trainer.should_save``) every ``save_every_minutes`` (0: never)."""

    every_step = True  # called after every optimizer step without making the trainer sync with the host

    def __init__(self, signals: list[str], requeue_mode: str = "off", check_every: int = 1,
                 save_every_minutes: float = 0.0) -> None:
        if requeue_mode not in ("off", "auto"):
            raise ConfigError(f"train.requeue={requeue_mode!r}; choose off or auto")
        if not save_every_minutes >= 0:
            raise ConfigError(f"train.save_every_minutes={save_every_minutes!r}; must be >= 0 (0: off)")
        self.signals, self.requeue_mode = parse_signals(signals), requeue_mode
        self.check_every, self.flag, self.received = max(1, check_every), False, None
        self.save_every_s, self.last_save = 60.0 * save_every_minutes, 0.0
        self.previous: dict[signal.Signals, Any] = {}
        self.active = self.running = False

    def _handle(self, signum: int, frame: Any) -> None:
        sig = signal.Signals(signum)
        if not self.active:  # left installed by a fit that failed: behave as before it
            signal.signal(sig, self.previous.get(sig, signal.SIG_DFL))
            os.kill(os.getpid(), sig)
            return
        if sig == signal.SIGINT and self.flag:
            raise KeyboardInterrupt  # the second Ctrl-C: abort now
        self.flag, self.received = True, self.received or sig.name
        log.warning("%s received: checkpointing after the current optimizer step, then exiting (%d)%s", sig.name,
                    PREEMPTED_EXIT, "; Ctrl-C again to abort at once" if sig == signal.SIGINT else "")

    def on_train_start(self, trainer: Any) -> None:
        self.running, self.flag, self.last_save = True, False, monotonic()
        if not self.signals:
            return
        if threading.current_thread() is not threading.main_thread():
            log.warning("train.preempt_signals: not the main thread, no signal handlers installed")
            return
        self.active = True
        for sig in {*self.signals, signal.SIGINT}:
            self.previous[sig] = signal.signal(sig, self._handle)

    def on_save(self, trainer: Any, path: Optional[Any]) -> None:
        self.last_save = monotonic()  # any checkpoint (eval, save_every, timed) restarts the clock

    def on_train_end(self, trainer: Any, results: dict[str, float]) -> None:
        self.active = self.running = False
        for sig, old in self.previous.items():
            signal.signal(sig, old)
        self.previous = {}

    def _agreed(self, step: int) -> tuple[bool, bool]:
        """(stop, save now): this process's flag and clock, or under torchrun every rank's, agreed every
        ``check_every`` steps in one collective (every rank calls it at the same steps)."""
        due = self.save_every_s > 0 and monotonic() - self.last_save >= self.save_every_s
        if not D.is_distributed():
            return self.flag, due
        if step % self.check_every:
            return False, False
        stop, save = D.all_reduce_any(self.flag, due)
        return stop, save

    def on_step_end(self, trainer: Any) -> None:
        if not self.running:
            return
        stop, save = self._agreed(trainer.step)
        if stop:
            self._preempt(trainer)
        if save:
            trainer.should_save = True  # written after this step, with the evaluation if one is due

    def _preempt(self, trainer: Any) -> None:
        step = trainer.step
        trainer.log_train()  # the steps since the last train row (the loop would log them later: it stops here)
        path = trainer.save_checkpoint(wait=True)  # on disk (train.async_save too) before any rank exits
        job = requeue() if self.requeue_mode == "auto" and D.is_main_process() else None
        trainer.logger.log(step, "preempted", {"signal": self.received or "peer rank",
                                               "checkpoint": path.name if path else None,
                                               "requeued_job": job, "exit_code": PREEMPTED_EXIT})
        self.on_train_end(trainer, {})
        raise Preempted(f"preempted by {self.received or 'a signal on another rank'} at step {step}: "
                        f"checkpoint {path or trainer.run_dir / 'checkpoints'} written; continue with "
                        f"train.resume=true")


def from_config(tc: Any) -> list[Callback]:
    """The callback ``train.preempt_signals`` / ``train.save_every_minutes`` ask for (none when both are off)."""
    if not tc.preempt_signals and not tc.save_every_minutes:
        return []
    return [Preemption(list(tc.preempt_signals), tc.requeue, tc.log_every, tc.save_every_minutes)]
