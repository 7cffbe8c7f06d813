"""Wrapping a task for multi-process training: DDP or FSDP2 (``fully_shard``), and the few places
where the trainer must know which one it runs (gradient sync during accumulation, gradient norms,
full state dicts for checkpoints).

FSDP checkpoints are gathered into FULL state dicts on rank 0 (``StateDictOptions(full_state_dict=True,
cpu_offload=True)``), so a checkpoint has the same format whatever wrote it: an FSDP run can be
evaluated, fine-tuned or resumed in one process, and a one-process checkpoint can resume under FSDP.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable, ContextManager, Iterator, Mapping, Optional

import torch
import torch.distributed as dist
from torch import nn

from mm_ptft.config import ConfigError
from mm_ptft.registry import Registry

STRATEGIES: Registry[nn.Module] = Registry("distributed_strategy")


@STRATEGIES.register("ddp")
def ddp(task: nn.Module, device: torch.device) -> nn.Module:
    """Replicate the task on every rank; gradients are all-reduced (averaged) in backward."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    # Tasks may hold parameters a step does not use (an HF pooler under mean pooling, a missing
    # modality's branch): DDP must look for them, or it waits for their gradients forever.
    return DDP(task, device_ids=ids, find_unused_parameters=True)


@STRATEGIES.register("fsdp")
def fsdp(task: nn.Module, device: torch.device) -> nn.Module:
    """Shard parameters, gradients and optimizer state across ranks (FSDP2, ``fully_shard``)."""
    from torch.distributed.fsdp import fully_shard

    _broadcast_from_rank0(task)  # fully_shard keeps each rank's local values: make them rank 0's
    for module in _blocks(task):  # each block gathers its weights only while it runs
        fully_shard(module)
    fully_shard(task)
    return task


BLOCK_CONTAINERS = ("layer", "layers", "blocks", "block", "h", "stages", "resblocks")  # as encoders.base.layer_index


def _blocks(task: nn.Module) -> list[nn.Module]:
    """Numbered transformer/CNN blocks (``…layer.3``, ``…blocks.0``), innermost first: FSDP2 wants a
    nested unit sharded before the unit around it."""
    found = []
    for name, module in task.named_modules():
        parent, _, last = name.rpartition(".")
        if last.isdigit() and parent.rpartition(".")[2] in BLOCK_CONTAINERS:
            found.append(module)
    return found[::-1]


def _broadcast_from_rank0(module: nn.Module) -> None:
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)


def wrap_distributed(task: nn.Module, strategy: str, device: torch.device) -> nn.Module:
    """Wrap ``task`` with the strategy named by ``train.distributed`` (ddp | fsdp)."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"train.distributed={strategy!r}; choose one of {STRATEGIES.names()}")
    return STRATEGIES.build({"name": strategy}, "train.distributed", task=task, device=device)


def unwrap(model: nn.Module) -> nn.Module:
    """The task inside ``torch.compile`` and DDP/FSDP wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(getattr(model, "_orig_mod", model), FSDPModule)


def grad_sync(model: nn.Module, enabled: bool) -> ContextManager[None]:
    """Context for one micro-batch's backward: skip the gradient all-reduce while accumulating."""
    inner = getattr(model, "_orig_mod", model)
    if enabled:
        return contextlib.nullcontext()
    if is_fsdp(inner):
        return _fsdp_no_sync(inner)
    if hasattr(inner, "no_sync"):  # DDP
        return inner.no_sync()
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_no_sync(model: nn.Module) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def _full_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """FSDP: the full model state dict on rank 0, empty elsewhere (a collective: call on every rank)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full_options())


def full_optim_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """FSDP: the full optimizer state dict (keyed by parameter name) on rank 0 (a collective)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, opt, options=_full_options())


def load_full_state(model: nn.Module, opt: Optional[torch.optim.Optimizer], weights: Mapping[str, torch.Tensor],
                    opt_state: Optional[dict[str, Any]]) -> None:
    """FSDP: load full state dicts (every rank passes the whole dict; each keeps its shard)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True)
    if weights:
        set_model_state_dict(model, dict(weights), options=opts)
    if opt is not None and opt_state is not None:  # not strict: parameters that never got a gradient have no state
        set_optimizer_state_dict(model, opt, opt_state, options=StateDictOptions(full_state_dict=True, strict=False))


def export_template(task: nn.Module) -> Callable[[Mapping[str, torch.Tensor]], nn.Module]:
    """Before sharding: a function that rebuilds an unsharded CPU copy of ``task`` from a full state dict
    (FSDP modules cannot be deep-copied, and encoder directories need a plain module)."""
    template = copy.deepcopy(task).to("meta")

    def rebuild(weights: Mapping[str, torch.Tensor]) -> nn.Module:
        plain = template.to_empty(device="cpu")
        plain.load_state_dict(dict(weights))
        return plain

    return rebuild
