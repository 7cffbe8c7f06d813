"""One writer per run directory: a second ``train.resume=true`` of a live run exits non-zero naming the holder,
and the first run ends exactly as a run that had no second writer; kill -9 leaves no stale lock."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from mm_ptft.train import runlock

from mm_paths import ROOT, TEXT_TINY

TIMING = {"time", "samples_per_s", "steps_per_s", "data_s", "eval_s", "save_s", "step_s", "wait_s",
          "tokens_per_s", "data_wait_frac"}


def cmd(data, out, *extra):
    return [sys.executable, "-m", "mm_ptft.cli", "train", TEXT_TINY, f"output_dir={out}",
            f"data.train_file={data['train_file']}", f"data.eval_file={data['eval_file']}", "train.batch_size=64",
            "train.max_steps=28", "train.save_every=4", "train.eval_every=14", "train.keep_last=10",
            "train.log_every=1", "train.report=false", "train.device=cpu", *extra]


def env():
    return {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}


def records(run_dir):
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING and not k.endswith("_s")} for r in rows]


def checkpoints(run_dir):
    return {p.name: load_file(str(p / "model.safetensors")) for p in sorted((run_dir / "checkpoints").glob("step_*"))}


@pytest.mark.slow  # three training runs in subprocesses (~40 s on 2 busy cores)
def test_a_second_writer_is_refused_and_the_first_run_is_unchanged(topics_data, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "run"
    subprocess.run(cmd(topics_data, ref), env=env(), cwd=ROOT, check=True, capture_output=True)
    first = subprocess.Popen(cmd(topics_data, out), env=env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while not (out / "checkpoints" / "step_00000004").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    first.send_signal(signal.SIGSTOP)  # paused mid-run, holding the lock, while the second writer tries
    try:
        assert first.poll() is None, "the first run ended before the second writer started"
        second = subprocess.run(cmd(topics_data, out, "train.resume=true"), env=env(), cwd=ROOT, capture_output=True,
                                text=True, timeout=300)
        second_err = second.stderr
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    assert second.returncode == 2, second_err[-2000:]
    assert f"pid {first.pid} on host {socket.gethostname()}" in second_err, second_err[-2000:]
    assert records(out) == records(ref)
    a, b = checkpoints(out), checkpoints(ref)
    assert a.keys() == b.keys() and a
    assert all(torch.equal(a[n][k], b[n][k]) for n in a for k in a[n])


def test_kill9_leaves_no_stale_lock(tmp_path):
    code = f"from mm_ptft.train import runlock; runlock.acquire({str(tmp_path)!r}); print('held', flush=True); " \
           "import time; time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env(), cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(runlock.RunLocked, match=f"pid {proc.pid} on host"):
        runlock.acquire(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    runlock.acquire(tmp_path)  # the kernel dropped the dead holder's lock
    assert runlock.holder(tmp_path) == f"pid {os.getpid()} on host {socket.gethostname()}"
    runlock.release(tmp_path)
