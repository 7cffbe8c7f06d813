"""``mm_ptft.train.loaders``: a loader pointed at an epoch gives that epoch's batches whatever it drew before (a
resumed run's order), ``train.num_workers`` is capped at the CPUs with a warning naming the key, and the run's
length comes from the loader or the config key a stream needs."""
import os

import numpy as np  # noqa: F401  (its BLAS is one of the pools a worker inherits)
import pytest
import torch
from torch.utils.data import IterableDataset

from mm_ptft.config import ConfigError, TrainConfig
from mm_ptft.train import loaders as L
from mm_ptft.train.distributed import DistInfo

from test_callbacks import collate, data


def loader(tc=TrainConfig(batch_size=8, device="cpu")):
    return L.build_loader(data(32), None, True, tc=tc, seed=1, dist=DistInfo(), device=torch.device("cpu"),
                          collate=collate, workers=0)


def epoch(ld, e):
    L.set_epoch(ld, e, seed=1, rank=0)
    return torch.cat([b["x"] for b in ld])  # (32, 4): the epoch's samples in their order


def test_an_epoch_gives_the_same_order_whatever_came_before():
    a, b = loader(), loader()
    epoch(a, 0)
    assert torch.equal(epoch(a, 1), epoch(b, 1))  # a drew epoch 0 first, b did not
    assert not torch.equal(epoch(a, 0), epoch(a, 1))  # epochs are shuffled apart
    every = sorted(tuple(it["x"].tolist()) for it in data(32).items)
    assert sorted(map(tuple, epoch(a, 1).tolist())) == every  # each sample once per epoch


def test_workers_beyond_the_cpus_warn_and_are_capped():
    with pytest.warns(UserWarning, match=r"train.num_workers=6 > the 2 CPUs.*using 2"):
        assert L.num_workers(TrainConfig(num_workers=6), None, cpus=2) == 2
    assert L.num_workers(TrainConfig(num_workers="auto"), None, cpus=2) == 0  # not measured yet
    assert L.num_workers(TrainConfig(num_workers="auto"), 3, cpus=2) == 3


class Stream(IterableDataset):
    def __iter__(self):
        return iter([])


def test_the_run_length_from_the_loader_or_the_key_a_stream_needs():
    tc = TrainConfig(batch_size=8, epochs=3, grad_accum_steps=3, device="cpu")
    assert L.schedule_length(loader(tc), tc) == (3 * 2, 2)  # 4 batches / 3 accumulated: 2 steps per epoch
    stream = L.build_loader(Stream(), None, True, tc=tc, seed=1, dist=DistInfo(), device=torch.device("cpu"),
                            collate=collate, workers=0)
    with pytest.raises(ConfigError, match="train.max_steps is not set"):
        L.schedule_length(stream, tc)
    with pytest.raises(ConfigError, match="set data.train_file"):
        L.schedule_length(None, tc)


class PoolReport(torch.utils.data.Dataset):
    """Each item: the thread pools of the process that reads it, as torch and threadpoolctl (which asks each loaded
    BLAS/OpenMP library itself) report them, and the variables libraries loaded later read."""

    def __len__(self):
        return 2

    def __getitem__(self, i):
        from threadpoolctl import threadpool_info

        return {"torch": torch.get_num_threads(), "pools": {p["internal_api"]: p["num_threads"] for p in threadpool_info()},
                "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TOKENIZERS_PARALLELISM")}}


def test_loader_workers_run_every_pool_at_one_thread():
    """The parent runs its pools at 2 threads (so a forked worker that kept them would show 2); the worker reports 1
    for torch, for every BLAS/OpenMP library loaded (numpy's OpenBLAS, torch's OpenMP) and in the variables."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with threadpoolctl.threadpool_limits(2):
            parent = PoolReport()[0]
            ld = L.build_loader(PoolReport(), None, False, tc=TrainConfig(batch_size=1, device="cpu"), seed=1,
                                dist=DistInfo(), device=torch.device("cpu"), collate=lambda items: items[0], workers=1)
            reports = list(ld)
    finally:
        torch.set_num_threads(threads)
    assert parent["torch"] == 2 and max(parent["pools"].values()) == 2, parent  # the check can fail
    for rep in reports:
        assert rep["torch"] == 1 and set(rep["pools"].values()) == {1}, rep
        assert rep["env"] == {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
