"""``mm_ptft.train.loaders``: a loader pointed at an epoch gives that epoch's batches whatever it drew before (a
resumed run's order), ``train.num_workers`` is capped at the CPUs with a warning naming the key, and the run's
length comes from the loader or the config key a stream needs."""
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
