"""Run under ``torchrun --nproc_per_node=2``: 2 gloo ranks × 2 loader workers read a ``ShardStream``.
Writes, from rank 0, every rank's sample ids of one pass, and each rank's straight vs resumed id sequences."""
import json
import os
import sys

import torch.distributed as dist
from torchdata.stateful_dataloader import StatefulDataLoader

from mm_ptft.data.shards import expand_sources
from mm_ptft.data.stream import ShardStream


def sample_id(shard, row, record, counters):
    return f"{os.path.basename(shard.path)}:{row}"


def loader(shards, passes, state=None):
    ds = ShardStream(shards, sample_id, seed=5, shuffle=True, block=4, passes=passes)
    dl = StatefulDataLoader(ds, batch_size=3, num_workers=2, collate_fn=list)
    if state is not None:
        dl.load_state_dict(state)
    return dl


def take(dl, n):
    out, it = [], iter(dl)
    for _ in range(n):
        out += next(it)
    return out


def main(pattern, out):
    dist.init_process_group("gloo")
    shards = expand_sources(pattern)
    one_pass = [i for batch in loader(shards, passes=1) for i in batch]
    straight = take(loader(shards, passes=0), 12)
    first = loader(shards, passes=0)
    it, head = iter(first), []
    for _ in range(5):
        head += next(it)
    state = first.state_dict()
    del it, first
    resumed = head + take(loader(shards, passes=0, state=state), 7)
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, {"pass": one_pass, "straight": straight, "resumed": resumed})
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(gathered, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
