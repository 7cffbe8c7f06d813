"""``train.compile``: the model through ``torch.compile`` in the mode the config names, and what CUDA graphs need.

Shapes: ``dynamic`` is left to torch (None, "automatic dynamic"): the first batch shape compiles a static graph and
the first change of a dimension recompiles it as dynamic, so length-grouped text batches cost two compiles, not one
per length (a fixed ``dynamic=False`` recompiles per length until ``torch._dynamo.config.recompile_limit`` and then
runs eagerly). Evaluation (``eval()`` under ``no_grad``) is one more graph.

CUDA graphs (``reduce-overhead`` / ``max-autotune`` on a CUDA device, through inductor's cudagraph trees) replay a
recorded kernel sequence, so they need: one recording per distinct input shape (bound the shapes with padding, e.g.
``data.pad_to_multiple_of``, or every new length records again), no host syncs or CPU tensors inside the model's
forward (inductor then skips the graph, logged as "skipping cudagraphs"), and outputs that are not kept past the next
replay (the trainer marks each step's start and clones evaluation outputs, which metrics may keep).
"""
from __future__ import annotations

import warnings
from typing import Any, Union

import torch
from torch import nn

from mm_ptft.config import compile_mode

#: modes that record CUDA graphs on a CUDA device
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")


def effective_mode(value: Union[bool, str], device: torch.device) -> tuple[str | None, bool]:
    """The ``torch.compile`` mode for ``train.compile=value`` on ``device`` (None: off) and whether it records CUDA
    graphs. Off CUDA, a CUDA-graph mode compiles without them (reduce-overhead has nothing else to give: warned)."""
    mode = compile_mode(value)
    if mode not in CUDAGRAPH_MODES:
        return mode, False
    if device.type == "cuda":
        return mode, True
    if mode == "reduce-overhead":
        warnings.warn(f"train.compile=reduce-overhead: CUDA graphs need a CUDA device; on {device.type} the model "
                      "is compiled like train.compile=default", stacklevel=3)
        return "default", False
    return "max-autotune-no-cudagraphs", False


def compile_model(model: nn.Module, value: Union[bool, str], device: torch.device, **kwargs: Any) -> tuple[nn.Module, bool]:
    """``model`` compiled as ``train.compile=value`` asks (unchanged when off) and whether CUDA graphs replay it.
    ``kwargs`` go to ``torch.compile`` (tests pass ``backend``)."""
    mode, cudagraphs = effective_mode(value, device)
    if mode is None:
        return model, False
    return torch.compile(model, mode=None if mode == "default" else mode, **kwargs), cudagraphs


def graph_counts() -> dict[str, int]:
    """Dynamo's running totals in this process: frames compiled (first compiles plus recompiles) and unique graphs."""
    from torch._dynamo.utils import counters

    return {"frames": int(counters["frames"]["ok"]), "unique_graphs": int(counters["stats"]["unique_graphs"])}


def clone_outputs(out: Any) -> Any:
    """Tensors in ``out`` (dicts, lists, tuples) copied out of CUDA-graph memory, which the next replay overwrites."""
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, dict):
        return {k: clone_outputs(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(clone_outputs(v) for v in out)
    return out
