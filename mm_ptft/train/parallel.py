"""Wrapping a task for multi-process training: DDP or FSDP2 (``fully_shard``)."""
from __future__ import annotations

import torch
from torch import nn

from mm_ptft.config import ConfigError


def wrap_distributed(task: nn.Module, strategy: str, device: torch.device) -> nn.Module:
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        return DDP(task, device_ids=ids, find_unused_parameters=False)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        from mm_ptft.encoders.base import layer_index

        # Shard each transformer/CNN block, then the root: blocks gather their weights one at a time.
        for name, module in task.named_modules():
            if name and layer_index(name + ".x") is not None and layer_index(name + ".x") >= 0 \
                    and name.rsplit(".", 1)[-1].isdigit():
                fully_shard(module)
        fully_shard(task)
        return task
    raise ConfigError(f"train.distributed={strategy!r}; choose ddp or fsdp")
