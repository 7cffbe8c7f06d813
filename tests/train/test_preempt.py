"""Preemption: SIGTERM at a random point mid-epoch → a checkpoint at the step reached, a ``preempted`` row and
exit PREEMPTED_EXIT within seconds; ``train.resume=true`` then ends bit-identical to a straight run. ``requeue=auto``
calls ``scontrol requeue $SLURM_JOB_ID`` (a fake scontrol on PATH records it)."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from mm_ptft.config import ConfigError
from mm_ptft.run import load_config, train
from mm_ptft.train import preempt
from mm_ptft.train.checkpoint import step_dirs

from mm_paths import ROOT, TEXT_TINY
from test_resume_kill import STEPS, assert_identical, logged_steps, overrides, weights


@pytest.fixture(scope="module")
def straight(topics_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    train(load_config(TEXT_TINY, overrides(topics_data, out, "train.save_every=0")))
    return out


def rows(run_dir, kind):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def sigterm_mid_run(cmd, env, run_dir, sig=signal.SIGTERM):
    """Start ``cmd``; once it has logged a step, wait a random 0-40 ms and send ``sig``. (exit code, seconds from the
    signal to the exit)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log, deadline = run_dir / "metrics.jsonl", time.time() + 180
    while proc.poll() is None and time.time() < deadline and not (log.exists() and '"train"' in log.read_text()):
        time.sleep(0.002)
    time.sleep(random.Random(os.getpid()).uniform(0, 0.04))
    sent = time.time()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, time.time() - sent, err


@pytest.mark.slow  # three tiny runs, one in a subprocess (~30 s on 2 busy cores)
def test_sigterm_mid_epoch_checkpoints_the_step_reached_and_resumes_identically(topics_data, straight, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "mm_ptft.cli", "train", TEXT_TINY, *overrides(topics_data, out, "train.save_every=0")]
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    code, took, err = sigterm_mid_run(cmd, env, out)
    assert code == preempt.PREEMPTED_EXIT, err[-2000:]
    assert took < 60
    (row,) = rows(out, "preempted")
    assert row["signal"] == "SIGTERM" and 1 <= row["step"] < STEPS  # mid-run; PER_EPOCH=7: mostly mid-epoch
    assert step_dirs(out / "checkpoints")[-1].name == f"step_{row['step']:08d}" == row["checkpoint"]
    assert not (out / "final_metrics.json").exists()

    train(load_config(TEXT_TINY, overrides(topics_data, out, "train.save_every=0", "train.resume=true")))
    final = f"step_{STEPS:08d}"
    assert_identical(weights(straight / "checkpoints" / final), weights(out / "checkpoints" / final))
    assert logged_steps(out) == list(range(1, STEPS + 1))


@pytest.mark.slow  # a run in a subprocess (~15 s)
def test_requeue_auto_calls_scontrol_with_the_job_id(topics_data, tmp_path):
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    (bin_dir / "scontrol").chmod(0o755)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "mm_ptft.cli", "train", TEXT_TINY,
           *overrides(topics_data, out, "train.save_every=0", "train.requeue=auto", "train.preempt_signals=[USR1]")]
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "SLURM_JOB_ID": "4242",
           "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    code, _, err = sigterm_mid_run(cmd, env, out, signal.SIGUSR1)
    assert code == preempt.PREEMPTED_EXIT, err[-2000:]
    assert calls.read_text().split() == ["requeue", "4242"]
    assert rows(out, "preempted")[0]["requeued_job"] == "4242"


def test_signal_names_are_checked_and_a_second_sigint_aborts():
    assert preempt.parse_signals(["SIGTERM", "usr1"]) == [signal.SIGTERM, signal.SIGUSR1]
    with pytest.raises(ConfigError, match=r"train.preempt_signals\[1\]='SIGKILL'"):
        preempt.parse_signals(["SIGTERM", "SIGKILL"])
    with pytest.raises(ConfigError, match="train.requeue='yes'"):
        preempt.Preemption(["SIGTERM"], "yes")
    cb = preempt.Preemption([], "off")
    cb.on_train_start(None)
    try:
        os.kill(os.getpid(), signal.SIGINT)  # the first: a flag, checked at the next step
        assert cb.flag and cb.received == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
    finally:
        cb.on_train_end(None, {})
    assert signal.getsignal(signal.SIGINT) is not cb._handle
