"""Preemption: SLURM, Kubernetes and spot instances send SIGTERM (or the ``--signal`` of ``sbatch``) and SIGKILL
after a grace period. On one of ``train.preempt_signals`` the handler only sets a flag; after the optimizer step
in flight, the run writes a normal checkpoint (atomic, data position included), logs a ``preempted`` row,
optionally requeues the SLURM job (``train.requeue=auto``) and exits with ``PREEMPTED_EXIT``; ``train.resume=true``
continues it exactly. SIGINT does the same once; a second SIGINT raises KeyboardInterrupt at once.

Under torchrun the ranks must stop at one step (a checkpoint is a collective): the flag is agreed by an
``all_reduce`` (max) every ``train.log_every`` steps, where the trainer syncs with the host for its log anyway —
not a host sync per step. A single process reads its flag (a Python bool) after every step.
"""
from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import subprocess
import threading
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
    """Installs the handlers for the fit (``on_train_start`` … ``on_train_end``) and stops at a step boundary."""

    every_step = True  # called after every optimizer step without making the trainer sync with the host

    def __init__(self, signals: list[str], requeue_mode: str = "off", check_every: int = 1) -> None:
        if requeue_mode not in ("off", "auto"):
            raise ConfigError(f"train.requeue={requeue_mode!r}; choose off or auto")
        self.signals, self.requeue_mode = parse_signals(signals), requeue_mode
        self.check_every, self.flag, self.received = max(1, check_every), False, None
        self.previous: dict[signal.Signals, Any] = {}
        self.active = False

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
        if threading.current_thread() is not threading.main_thread():
            log.warning("train.preempt_signals: not the main thread, no signal handlers installed")
            return
        self.active, self.flag = True, False
        for sig in {*self.signals, signal.SIGINT}:
            self.previous[sig] = signal.signal(sig, self._handle)

    def on_train_end(self, trainer: Any, results: dict[str, float]) -> None:
        self.active = False
        for sig, old in self.previous.items():
            signal.signal(sig, old)
        self.previous = {}

    def _agreed(self, step: int) -> bool:
        if not D.is_distributed():
            return self.flag
        if step % self.check_every:
            return False
        return bool(D.all_reduce_max(int(self.flag)))  # every rank calls it at the same steps

    def on_step_end(self, trainer: Any) -> None:
        step = trainer.step
        if not self.active or not self._agreed(step):
            return
        trainer.log_train()  # the steps since the last train row (the loop would log them later: it stops here)
        path = trainer.save_checkpoint()
        job = requeue() if self.requeue_mode == "auto" and D.is_main_process() else None
        trainer.logger.log(step, "preempted", {"signal": self.received or "peer rank",
                                               "checkpoint": path.name if path else None,
                                               "requeued_job": job, "exit_code": PREEMPTED_EXIT})
        self.on_train_end(trainer, {})
        raise Preempted(f"preempted by {self.received or 'a signal on another rank'} at step {step}: "
                        f"checkpoint {path or trainer.run_dir / 'checkpoints'} written; continue with "
                        f"train.resume=true")


def from_config(tc: Any) -> list[Callback]:
    """The preemption callback ``train.preempt_signals`` asks for (none when it is empty)."""
    if not tc.preempt_signals:
        return []
    return [Preemption(list(tc.preempt_signals), tc.requeue, tc.log_every)]
