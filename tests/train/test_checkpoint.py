"""Checkpoint weights of a model whose parts share a module (a multitask model's shared encoder, with
BatchNorm buffers) load back strictly, and a checkpoint of another model is still refused."""
from pathlib import Path

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


def test_meta_records_each_file_as_hashlib_reads_it_and_every_file_is_fsynced(tmp_path, monkeypatch):
    """Files are checksummed and fsynced on a helper thread while the next is written: the recorded sizes and
    SHA-256 are those of the files on disk, and each file (meta.json too) is fsynced before the rename."""
    import hashlib
    import json
    import os

    real_fsync, synced = os.fsync, []

    def fsync(fd):
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        return real_fsync(fd)

    monkeypatch.setattr(ckpt.os, "fsync", fsync)
    model = nn.Linear(64, 32)
    path = ckpt.save(tmp_path, 3, model, {"step": 3, "optimizer": {"m": torch.randn(1000)}}, "task: x\n")
    meta = json.loads((path / ckpt.META).read_text())
    assert meta["step"] == 3 and set(meta["files"]) == {ckpt.WEIGHTS, ckpt.STATE, "config.yaml"}
    for name, want in meta["files"].items():
        data = (path / name).read_bytes()
        assert want == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert {ckpt.WEIGHTS, ckpt.STATE, "config.yaml", ckpt.META} <= set(synced)
    assert ckpt.verify(path) is None


def test_a_failed_fsync_on_the_helper_thread_fails_the_save_and_leaves_no_directory(tmp_path, monkeypatch):
    import os

    real_fsync = os.fsync

    def failing(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(ckpt.STATE):
            raise OSError(5, "Input/output error")
        return real_fsync(fd)

    monkeypatch.setattr(ckpt.os, "fsync", failing)
    with pytest.raises(ckpt.CheckpointError, match=r"could not write checkpoint step_00000002 .*Input/output error"):
        ckpt.save(tmp_path, 2, nn.Linear(4, 2), {"step": 2}, "task: x\n")
    assert list(tmp_path.iterdir()) == []
