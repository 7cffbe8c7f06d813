"""``train.compile``: the model through ``torch.compile`` in the mode the config names, and what CUDA graphs need.

Shapes (``train.compile_dynamic``): by default torch's "automatic dynamic" (None): the first batch shape compiles a
static graph and the first change of a dimension recompiles it as dynamic, so length-grouped text batches cost two
compiles, not one per length (``false`` recompiles per shape until ``torch._dynamo.config.recompile_limit`` and then
runs eagerly). The static graph is specialised to the first batch's length, so inductor's on-disk cache misses when a
run starts with another length; ``true`` compiles one dynamic graph from the start. Evaluation (``eval()`` under
``no_grad``) adds its own graphs.

CUDA graphs (``reduce-overhead`` / ``max-autotune`` on a CUDA device, through inductor's cudagraph trees) replay a
recorded kernel sequence, so they need: one recording per distinct input shape (bound the shapes with padding, e.g.
``data.pad_to_multiple_of``, or every new length records again), no host syncs or CPU tensors inside the model's
forward (inductor then skips the graph, logged as "skipping cudagraphs"), and outputs that are not kept past the next
replay (the trainer marks each step's start and clones evaluation outputs, which metrics may keep).
"""
from __future__ import annotations

import warnings
from typing import Any, Optional, Union

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


def compile_model(model: nn.Module, value: Union[bool, str], device: torch.device, dynamic: Optional[bool] = None,
                  **kwargs: Any) -> tuple[nn.Module, bool]:
    """``model`` compiled as ``train.compile=value`` and ``train.compile_dynamic=dynamic`` ask (unchanged when off)
    and whether CUDA graphs replay it. ``kwargs`` go to ``torch.compile`` (e.g. ``backend``)."""
    mode, cudagraphs = effective_mode(value, device)
    if mode is None:
        return model, False
    return torch.compile(model, mode=None if mode == "default" else mode, dynamic=dynamic, **kwargs), cudagraphs


def graph_counts() -> dict[str, int]:
    """Running totals in this process: frames dynamo compiled (first compiles plus recompiles), unique graphs, and
    graphs that CUDA graphs skipped (inductor logs why: a CPU tensor, a mutated input, a host sync...)."""
    from torch._dynamo.utils import counters

    return {"frames": int(counters["frames"]["ok"]), "unique_graphs": int(counters["stats"]["unique_graphs"]),
            "cudagraph_skips": int(counters["inductor"]["cudagraph_skips"])}


def clone_outputs(out: Any) -> Any:
    """Tensors in ``out`` (dicts, lists, tuples) copied out of CUDA-graph memory, which the next replay overwrites."""
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, dict):
        return {k: clone_outputs(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(clone_outputs(v) for v in out)
    return out
