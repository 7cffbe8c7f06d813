"""One writer per run directory: an exclusive ``flock`` on ``RUN/.lock``, held by the process that trains,
resumes, prunes into or overwrites the run. The kernel drops it when the process dies (kill -9 included), so
no stale lock is ever left; the file keeps the last holder's pid and host for the message a second writer
gets. Readers (eval, predict, export) take no lock.

Under torchrun only the main process (rank 0) takes it: the run directory is one per run, on the filesystem
rank 0 writes it to. On NFS (v4, or v3 with lockd) ``flock`` is emulated with a POSIX byte-range lock and
works across hosts; on Lustre it works across hosts only when mounted with ``-o flock`` (``localflock``
makes it per-node, ``noflock`` makes it fail: then this reports an error saying so rather than run unlocked).
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
from pathlib import Path
from typing import Optional

from mm_ptft.config import ConfigError

log = logging.getLogger("mm_ptft")
LOCK = ".lock"
_held: dict[str, int] = {}  # resolved run dir -> fd (one lock per directory per process)


class RunLocked(ConfigError):
    """Another live process is writing this run directory."""


def holder(run_dir: Path) -> str:
    """``pid N on host H`` as the lock file says (the last holder; it may have exited)."""
    try:
        text = (Path(run_dir) / LOCK).read_text().split()
    except OSError:
        return "an unknown process"
    return f"pid {text[0]} on host {text[1]}" if len(text) >= 2 else "an unknown process"


def acquire(run_dir: Path, what: str = "train") -> Path:
    """Take the run's write lock (creating ``run_dir``), or raise ``RunLocked`` naming the holder. Idempotent
    within a process; released by ``release`` or when the process exits."""
    run_dir = Path(run_dir)
    key = os.path.abspath(run_dir)
    if key in _held:
        return run_dir / LOCK
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise RunLocked(f"{run_dir} is being written by {holder(run_dir)} (it holds {run_dir / LOCK}); "
                            f"wait for it to finish or stop it before you {what} this run") from None
        raise ConfigError(f"cannot lock {run_dir / LOCK} ({os.strerror(err.errno)}): the filesystem does not "
                          f"support flock (Lustre without -o flock?); see docs/distributed.md") from err
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {socket.gethostname()} {what}\n".encode())
    os.fsync(fd)
    _held[key] = fd
    return run_dir / LOCK


def release(run_dir: Path) -> None:
    """Drop the lock (the file stays: removing it would let two processes lock two different inodes)."""
    fd: Optional[int] = _held.pop(os.path.abspath(run_dir), None)
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def is_held(run_dir: Path) -> bool:
    return os.path.abspath(run_dir) in _held
