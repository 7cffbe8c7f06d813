"""torch.distributed setup for runs launched by ``torchrun`` (env vars RANK / WORLD_SIZE / LOCAL_RANK)."""
from __future__ import annotations

import atexit
import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1  # processes on this node (they share its CPUs)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup(device_pref: str = "auto") -> tuple[DistInfo, torch.device]:
    """Initialise the process group when launched by torchrun; pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")),
                    int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if device_pref == "auto":
        device = torch.device(f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu")
    elif device_pref == "cuda":  # a bare "cuda" has no index; each process takes its local rank's GPU
        device = torch.device(f"cuda:{info.local_rank}")
    else:
        device = torch.device(device_pref)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        _init_process_group("nccl" if device.type == "cuda" else "gloo", info)
        atexit.register(cleanup)
    return info, device


def _init_process_group(backend: str, info: DistInfo) -> None:
    """``init_process_group`` from torchrun's env vars; after an elastic restart, under a fresh store prefix:
    torchrun keeps one TCPStore across restarts, and the peer addresses the failed attempt left there
    would make the new group connect to dead processes."""
    timeout = timedelta(minutes=30)
    restarts = restart_count()
    if restarts == 0:
        dist.init_process_group(backend, timeout=timeout)
        return
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), info.world,
                          is_master=not agent_store and info.is_main, timeout=timeout)
    dist.init_process_group(backend, store=dist.PrefixStore(f"mm_ptft/attempt_{restarts}", store),
                            rank=info.rank, world_size=info.world, timeout=timeout)


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a plain process."""
    return int(os.environ.get("RANK", "0")) == 0


def restart_count() -> int:
    """How often ``torchrun --max-restarts`` has restarted this worker group (0 on the first attempt)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


@contextlib.contextmanager
def main_process_first(device_pref: str = "auto") -> Iterator[None]:
    """Let rank 0 run the block (e.g. generating data or downloading) before the other ranks reuse its output."""
    info, _ = setup(device_pref)
    if not info.is_main:
        barrier()
    try:
        yield
    finally:
        if info.is_main:
            barrier()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_gather_object(obj: Any) -> list[Any]:
    """``obj`` from every rank, in rank order (a one-element list when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return x


def all_reduce_max(value: int) -> int:
    """The largest ``value`` over all ranks."""
    if not is_distributed():
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    t = torch.tensor([value], dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def all_reduce_any(*flags: bool) -> tuple[bool, ...]:
    """Each flag true on any rank (one ``all_reduce`` for all of them)."""
    if not is_distributed():
        return tuple(bool(f) for f in flags)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())


def broadcast_object(obj):
    if dist.is_available() and dist.is_initialized():
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return obj


_finished_cleanly = False


def set_finished_cleanly(value: bool) -> None:
    """Whether this process's work ended without an error (then it waits for its peers at exit)."""
    global _finished_cleanly
    _finished_cleanly = value


def cleanup() -> None:
    """Leave the process group before the interpreter exits (registered at ``atexit`` when a group is
    made): a gloo group left alive, or torn down while a peer still sends, can abort a rank ("terminate
    called without an active exception") after the work is done. After clean work every rank waits for
    the others first; after an error it leaves at once (a barrier could wait on a dead peer)."""
    if dist.is_available() and dist.is_initialized():
        if _finished_cleanly:
            dist.barrier()
        dist.destroy_process_group()
