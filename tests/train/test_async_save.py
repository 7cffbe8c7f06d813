"""``train.async_save``: checkpoints written by a background thread are byte-identical to the synchronous ones; a
crash (SIGKILL) while the writer is mid-write leaves no half checkpoint, and the resume from the previous complete one
ends bit-identical to a straight run; a failed write stops the run with an error naming the checkpoint; one write is in
flight at a time and the snapshot shares nothing with the tensors training goes on changing."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from safetensors.torch import load_file, save_model
from torch import nn

from mm_ptft.run import load_config, train
from mm_ptft.train import async_save
from mm_ptft.train import checkpoint as ckpt
from mm_ptft.train.checkpoint import step_dirs

from mm_paths import ROOT, TEXT_TINY
from test_resume_kill import STEPS, assert_identical, logged_steps, overrides, straight, weights  # noqa: F401 (fixture)

SLOW_STEP = 4  # the checkpoint the crash test's writer is stopped in the middle of (save_every=2)

# the crash test's driver: `mm-ptft train`, with the writer of checkpoint SLOW_STEP stuck after half a weights file
SLOW_WRITER = f"""
import sys, time
from mm_ptft.train import checkpoint as ckpt
real = ckpt._write
def slow(tmp, step, *args):
    if step == {SLOW_STEP}:
        tmp.mkdir()
        (tmp / ckpt.WEIGHTS).write_bytes(b"half a file")
        open(sys.argv[1], "w").write(str(tmp))
        time.sleep(300)
    return real(tmp, step, *args)
ckpt._write = slow
from mm_ptft.cli import main
sys.exit(main(["train", *sys.argv[2:]]))
"""


def test_async_checkpoints_are_byte_identical_to_sync_ones(topics_data, straight, tmp_path):
    out = tmp_path / "async"
    train(load_config(TEXT_TINY, overrides(topics_data, out, "train.async_save=true")))
    want, got = step_dirs(straight / "checkpoints"), step_dirs(out / "checkpoints")
    assert [p.name for p in got] == [p.name for p in want] and len(got) >= 4
    for a, b in zip(want, got):
        for name in (ckpt.WEIGHTS, ckpt.STATE):  # config.yaml differs: it records train.async_save
            assert (a / name).read_bytes() == (b / name).read_bytes(), (b / name)
        assert ckpt.verify(b) is None
    assert (out / "checkpoints" / "best.json").read_text() == (straight / "checkpoints" / "best.json").read_text()
    def results(run):  # the wall-clock phase split ("timing") differs between any two runs
        return {k: v for k, v in json.loads((run / "final_metrics.json").read_text()).items() if k != "timing"}
    assert results(out) == results(straight)


def test_sigkill_mid_background_write_leaves_no_half_checkpoint_and_resumes_identically(topics_data, straight,
                                                                                       tmp_path):
    out, marker = tmp_path / "crashed", tmp_path / "writer_mid_write"
    args = overrides(topics_data, out, "train.async_save=true")
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(marker), TEXT_TINY, *args], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": str(torch.get_num_threads())},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL and marker.exists(), err[-3000:]
    half = marker.read_text()
    assert os.path.isdir(half) and os.path.basename(half).startswith(f".tmp_step_{SLOW_STEP:08d}")
    assert [p.name for p in step_dirs(out / "checkpoints")] == ["step_00000002"]  # the half one is not a checkpoint
    assert ckpt.latest_good(out / "checkpoints").name == "step_00000002"

    train(load_config(TEXT_TINY, overrides(topics_data, out, "train.async_save=true", "train.resume=true")))
    final = f"step_{STEPS:08d}"
    assert_identical(weights(straight / "checkpoints" / final), weights(out / "checkpoints" / final))
    assert logged_steps(out) == list(range(1, STEPS + 1))
    assert not os.path.exists(half)  # the next run cleared it


def test_a_failed_background_write_stops_the_run_naming_the_checkpoint(topics_data, tmp_path, monkeypatch):
    real = ckpt._write

    def disk_full(tmp, step, *args):
        if step == SLOW_STEP:
            raise OSError(28, "No space left on device")
        return real(tmp, step, *args)

    monkeypatch.setattr(ckpt, "_write", disk_full)
    out = tmp_path / "full"
    with pytest.raises(ckpt.CheckpointError, match=f"checkpoint .*step_{SLOW_STEP:08d}.*No space left") as info:
        train(load_config(TEXT_TINY, overrides(topics_data, out, "train.async_save=true")))
    assert str(out / "checkpoints" / f"step_{SLOW_STEP:08d}") in str(info.value)
    assert [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp")] == []
    assert not (out / "final_metrics.json").exists()


def test_one_write_in_flight_and_the_snapshot_shares_nothing_with_training(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {"rng": torch.get_rng_state(), "opt": {"exp_avg": torch.ones(3)}}
    state["twice"] = state["opt"]
    weights, snap, _ = async_save.snapshot(ckpt.weights_of(model), state)
    release, events = threading.Event(), []

    def first():
        events.append("first starts")
        release.wait(30)
        ckpt.save(tmp_path, 1, weights, snap, "x: 1\n")
        events.append("first ends")

    writer = async_save.BackgroundWriter()
    writer.submit(tmp_path / "step_00000001", first)
    with torch.no_grad():  # training goes on changing the live tensors while the write waits
        for p in model.parameters():
            p.add_(1.0)
        state["opt"]["exp_avg"].mul_(5)
    threading.Timer(0.05, release.set).start()
    writer.submit(tmp_path / "step_00000002", lambda: events.append("second runs"))  # waits for the first
    writer.wait()
    assert events == ["first starts", "first ends", "second runs"]
    saved = load_file(str(tmp_path / "step_00000001" / ckpt.WEIGHTS))
    assert all(torch.equal(saved[k], before[k]) for k in before)
    st = ckpt.read_state(tmp_path / "step_00000001")
    assert torch.equal(st["opt"]["exp_avg"], torch.ones(3)) and st["twice"] is st["opt"]


def test_weights_are_written_as_safetensors_save_model_writes_them(tmp_path):
    """A module with a parameter under two names: our file (sync or snapshot) equals safetensors' own save_model."""
    model = nn.ModuleDict({"a": nn.Linear(3, 4), "b": nn.Linear(3, 4)})
    model["b"].weight = model["a"].weight  # tied
    save_model(model, str(tmp_path / "reference.safetensors"))
    ckpt.save(tmp_path, 1, model, {}, "")
    snap, _, _ = async_save.snapshot(ckpt.weights_of(model), {})
    ckpt.save(tmp_path, 2, snap, {}, "")
    ref = (tmp_path / "reference.safetensors").read_bytes()
    assert (tmp_path / "step_00000001" / ckpt.WEIGHTS).read_bytes() == ref
    assert (tmp_path / "step_00000002" / ckpt.WEIGHTS).read_bytes() == ref


def test_a_snapshot_reuses_the_previous_ones_buffers_once_its_write_is_on_disk(tmp_path):
    """The second checkpoint's snapshot waits for the first write (a slow one here), then copies into the very buffers
    of the first (same storage), holding the new values; both files hold their own step's values."""
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(8, 3)).sum().backward()
    opt.step()
    writer, release = async_save.BackgroundWriter(), threading.Event()
    values = []
    for step in (1, 2):
        values.append({k: v.clone() for k, v in model.state_dict().items()})
        weights, snap = writer.snapshot(ckpt.weights_of(model), {"optimizer": opt.state_dict()})
        if step == 1:
            first = {k: v.data_ptr() for k, v in weights.tensors.items()}

            def slow(w=weights, s=snap):
                release.wait(30)
                ckpt.save(tmp_path, 1, w, s, "")

            writer.submit(tmp_path / "step_00000001", slow)
            model(torch.randn(8, 3) + 3).sum().backward()  # training goes on: new weights and statistics
            opt.step()
            threading.Timer(0.2, release.set).start()
        else:
            assert {k: v.data_ptr() for k, v in weights.tensors.items()} == first  # the same buffers
            writer.submit(tmp_path / "step_00000002", lambda w=weights, s=snap: ckpt.save(tmp_path, 2, w, s, ""))
    writer.wait()
    for step in (1, 2):
        saved = load_file(str(tmp_path / f"step_{step:08d}" / ckpt.WEIGHTS))
        assert all(torch.equal(saved[k], values[step - 1][k]) for k in saved), step
    assert not torch.equal(values[0]["0.weight"], values[1]["0.weight"])
