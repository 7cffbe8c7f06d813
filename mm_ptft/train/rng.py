"""The random streams a run draws from (Python's ``random``, NumPy's global state, torch's CPU and CUDA
generators): seeding them, saving and restoring them (checkpoints: one state per rank), and running a block that
leaves them as they were (the loader probe)."""
from __future__ import annotations

import contextlib
import random
from typing import Any, Callable, Iterator

import numpy as np
import torch

from mm_ptft.train import distributed as D


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(cuda: bool = True) -> dict[str, Any]:
    """Every stream's state (NumPy's keys as a tensor); ``cuda``: every CUDA device's too, where there is one."""
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]]}
    if cuda and torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Put back what ``rng_state`` gave (also read back from a checkpoint, which may hold lists for tuples)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved(device: torch.device) -> Iterator[None]:
    """Whatever runs inside leaves Python's, NumPy's, torch's CPU and ``device``'s random streams as they were."""
    saved = rng_state(cuda=False)
    on_device = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    try:
        yield
    finally:
        set_rng_state(saved)
        if on_device is not None:
            torch.cuda.set_rng_state(on_device, device)


def gather_rng_states() -> list[Any]:
    """Every rank's RNG state, in rank order (as numpy while in transit: ``all_gather_object`` of
    CPU tensors fails to unpickle under gloo)."""
    mine = rng_state()
    if not D.is_distributed():
        return [mine]
    gathered = D.all_gather_object(_map_tensors(mine, lambda t: t.numpy()))
    return [_map_tensors(r, torch.from_numpy) for r in gathered]


def restore_rank(states: list[Any], rank: int, fallback_seed: int) -> None:
    """Continue this rank's own streams (dropout, augmentation) from a checkpoint's per-rank ``states``; a rank the
    run that wrote them did not have is seeded with ``fallback_seed``."""
    if rank < len(states):
        set_rng_state(states[rank])
    else:
        seed_everything(fallback_seed)


def _map_tensors(obj: Any, fn: Callable[[Any], Any]) -> Any:
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_map_tensors(v, fn) for v in obj]
    return obj
