"""Checkpoint weights of a model whose parts share a module (a multitask model's shared encoder, with
BatchNorm buffers) load back strictly, and a checkpoint of another model is still refused."""
import pytest
import torch
from torch import nn

from mm_ptft.train import checkpoint as ckpt


def _two_heads_one_trunk(seed: int) -> nn.ModuleDict:
    torch.manual_seed(seed)
    trunk = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    return nn.ModuleDict({"x": nn.Sequential(trunk, nn.Linear(4, 2)), "y": nn.Sequential(trunk, nn.Linear(4, 1))})


def test_a_module_shared_under_two_names_round_trips(tmp_path):
    saved = _two_heads_one_trunk(0).train()
    saved["x"](torch.randn(8, 3))  # running stats and num_batches_tracked move off their initial values
    path = ckpt.save(tmp_path, 1, saved, {"step": 1}, "task: x\n")
    loaded = _two_heads_one_trunk(1)
    ckpt.load(path, loaded)
    want, got = saved.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want), [k for k in want if not torch.equal(want[k], got[k])]
    assert int(got["y.0.1.num_batches_tracked"]) == 1 and loaded["x"][0] is loaded["y"][0]
    with pytest.raises(ckpt.CheckpointError, match="from another model"):
        ckpt.load(path, nn.ModuleDict({"x": nn.Linear(3, 2)}))
