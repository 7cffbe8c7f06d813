"""Preemption: SIGTERM at a random point mid-epoch → a checkpoint at the step reached, a ``preempted`` row and
exit PREEMPTED_EXIT within seconds; ``train.resume=true`` then ends bit-identical to a straight run. ``requeue=auto``
calls ``scontrol requeue $SLURM_JOB_ID`` (a fake scontrol on PATH records it)."""
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from mm_ptft.config import ConfigError
from mm_ptft.run import load_config, train
from mm_ptft.train import checkpoint as ckpt
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


def sigterm_mid_run(cmd, env, run_dir, sig=signal.SIGTERM, group=False):
    """Start ``cmd``; once it has logged a step, wait a random 0-40 ms and send ``sig`` (``group``: to its whole
    process group — loader workers, torchrun's workers — as SLURM signals every process of a job step). (exit code,
    seconds from the signal to the exit, stderr)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=group)
    log, deadline = run_dir / "metrics.jsonl", time.time() + 180
    while proc.poll() is None and time.time() < deadline and not (log.exists() and '"train"' in log.read_text()):
        time.sleep(0.002)
    time.sleep(random.Random(os.getpid()).uniform(0, 0.04))
    sent = time.time()
    os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
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
    cb = preempt.Preemption(["SIGUSR2"], "off")  # SIGINT is handled whenever a preemption signal is
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


@pytest.fixture(scope="module")
def shards(topics_data, tmp_path_factory):
    """The topics training rows as two streamed shards of two formats."""
    import pandas as pd

    root = tmp_path_factory.mktemp("shards")
    df = pd.read_csv(topics_data["train_file"])
    df.iloc[:250].to_csv(root / "a.csv", index=False)
    df.iloc[250:].to_json(root / "b.jsonl", orient="records", lines=True)
    return str(root / "*")


STREAM_STEPS = 14


def stream_overrides(topics_data, pattern, out, *extra):
    return [f"output_dir={out}", "train.report=false", "data.generate=null", f"data.train_file={pattern}",
            f"data.eval_file={topics_data['eval_file']}", "data.streaming=true", "data.shuffle_block=64",
            f"train.max_steps={STREAM_STEPS}", "train.save_every=0", "train.eval_every=100", "train.num_workers=2",
            "train.batch_size=16", "train.log_every=1", "train.device=cpu", "train.threads=1", *extra]


@pytest.mark.slow  # three tiny streamed runs with 2 loader workers, one in a subprocess (~25 s on 2 busy cores)
def test_sigterm_to_the_process_group_of_a_streamed_run_with_workers_resumes_identically(topics_data, shards,
                                                                                         tmp_path):
    """The signal reaches the loader workers too (SLURM signals every process of the step; a terminal's Ctrl-C the
    foreground group): they must keep serving the batches the checkpoint step needs, and the stream's position in
    each worker is part of the checkpoint."""
    train(load_config(TEXT_TINY, stream_overrides(topics_data, shards, tmp_path / "straight")))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "mm_ptft.cli", "train", TEXT_TINY, *stream_overrides(topics_data, shards, out)]
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    code, took, err = sigterm_mid_run(cmd, env, out, group=True)
    assert code == preempt.PREEMPTED_EXIT, err[-3000:]
    assert took < 60
    (row,) = rows(out, "preempted")
    assert 1 <= row["step"] < STREAM_STEPS and row["checkpoint"] == f"step_{row['step']:08d}"
    assert "Traceback" not in err, err[-3000:]  # no worker died of the signal

    train(load_config(TEXT_TINY, stream_overrides(topics_data, shards, out, "train.resume=true")))
    final = f"step_{STREAM_STEPS:08d}"
    assert_identical(weights(tmp_path / "straight" / "checkpoints" / final), weights(out / "checkpoints" / final))
    assert logged_steps(out) == list(range(1, STREAM_STEPS + 1))


@pytest.mark.slow  # two torchrun launches of 2 gloo ranks, each with a loader worker (~60 s at load 8 on 2 cores)
def test_sigterm_under_torchrun_with_streamed_data_and_workers_stops_both_ranks_at_one_step_and_resumes_identically(
        topics_data, shards, tmp_path):
    """SIGTERM to the whole process group (as SLURM signals every process of a step: torchrun, which passes it on, its
    2 ranks and their loader workers): both ranks agree on one step (``log_every=2``: at an all_reduce step, not the
    step each saw the signal), rank 0 writes that checkpoint with each rank's stream position (2 shards: one per
    reader), and a resumed 2-rank run ends bitwise where a straight 2-rank run does."""
    from torchrun_util import overrides as dist_overrides, torchrun

    steps = 8
    common = ("train.batch_size=16", "train.group_by_length=false", "train.save_every=0", "train.eval_every=100",
              f"train.max_steps={steps}", "train.log_every=2", "model.dropout=0.1", "data.generate=null",
              f"data.train_file={shards}", "data.streaming=true", "data.shuffle_block=64", "train.num_workers=1")
    out = tmp_path / "preempted"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "tests", "train", "dist_worker.py"), TEXT_TINY,
           *dist_overrides(topics_data, out, *common)]
    code, took, err = sigterm_mid_run(cmd, {**os.environ, "PYTHONPATH": ROOT}, out, group=True)
    assert code != 0 and took < 60, err[-3000:]
    (row,) = rows(out, "preempted")
    assert row["step"] % 2 == 0 and 2 <= row["step"] < steps, row  # an agreement step
    assert [p.name for p in step_dirs(out / "checkpoints")] == [row["checkpoint"]] == [f"step_{row['step']:08d}"]
    assert not (out / "final_metrics.json").exists()
    assert "DataLoader worker" not in err, err[-3000:]  # no worker died of the signal

    proc = torchrun(dist_overrides(topics_data, out, *common, "train.resume=true"),
                    dist_overrides(topics_data, tmp_path / "straight", *common))
    assert proc.returncode == 0, proc.stderr[-4000:]
    final = f"step_{steps:08d}"
    assert_identical(weights(tmp_path / "straight" / "checkpoints" / final), weights(out / "checkpoints" / final))
    assert logged_steps(out) == list(range(2, steps + 1, 2))


class _SignalsItself(torch.utils.data.Dataset):
    """Each item read sends SIGTERM and SIGUSR1 to the worker reading it."""

    def __len__(self):
        return 3

    def __getitem__(self, i):
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGUSR1)
        return i


def test_loader_workers_outlive_the_preemption_signals_only_while_preemption_is_on():
    loader = torch.utils.data.DataLoader(_SignalsItself(), num_workers=1,
                                         worker_init_fn=preempt.worker_init(["SIGTERM", "SIGUSR1"]))
    assert [int(b) for b in loader] == [0, 1, 2]
    assert preempt.worker_init([]) is None  # off: workers keep torch's handling (SIGTERM ends them)
    with pytest.raises(RuntimeError, match="DataLoader worker .* (killed by signal|exited unexpectedly)"):
        list(torch.utils.data.DataLoader(_SignalsItself(), num_workers=1))


class FakeClock:
    """``preempt.monotonic`` replaced: time advances ``per_step`` seconds at each optimizer step (this callback is
    handed to the trainer before the run's own, so the step's time has passed when the preemption callback looks)."""

    every_step = True

    def __init__(self, per_step):
        self.now, self.per_step = 1000.0, per_step

    def __call__(self):
        return self.now

    def on_step_end(self, trainer):
        self.now += self.per_step

    def on_train_start(self, trainer): ...

    def on_evaluate(self, trainer, results): ...

    def on_save(self, trainer, path): ...

    def on_train_end(self, trainer, results): ...


def test_save_every_minutes_checkpoints_by_the_clock_alongside_save_every(topics_data, tmp_path, monkeypatch):
    """20 s per step, a checkpoint every minute, every 7 steps and at step 8's evaluation: any checkpoint restarts the
    clock, so by hand: 3 (60 s), 6, 7 (save_every), 8 (eval; the clock since 7 is 20 s), 11 (60 s after 8), 14 (the
    last step's evaluation); no preemption signal handlers are installed with preempt_signals=[]."""
    clock = FakeClock(per_step=20.0)
    monkeypatch.setattr(preempt, "monotonic", clock)
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    seen = []

    class Handlers(FakeClock):
        def on_step_end(self, trainer):
            seen.append((signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)))

    out = tmp_path / "run"
    train(load_config(TEXT_TINY, [f"output_dir={out}", f"data.train_file={topics_data['train_file']}",
                                  f"data.eval_file={topics_data['eval_file']}", "train.batch_size=64",
                                  "train.max_steps=14", "train.eval_every=8", "train.save_every=7",
                                  "train.save_every_minutes=1", "train.keep_last=20", "train.report=false",
                                  "train.log_every=5", "train.preempt_signals=[]", "train.device=cpu"]),
          callbacks=[clock, Handlers(0)])
    assert [int(p.name[5:]) for p in step_dirs(out / "checkpoints")] == [3, 6, 7, 8, 11, 14]
    assert set(seen) == {handlers}


def _agree_worker(rank, port, out):
    from datetime import timedelta

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=120))
    calls = []
    real = dist.all_reduce
    dist.all_reduce = lambda *a, **k: (calls.append(1), real(*a, **k))[1]
    now = [0.0]
    preempt.monotonic = lambda: now[0]
    cb = preempt.Preemption([], check_every=2, save_every_minutes=1)
    cb.running, cb.last_save = True, 0.0
    answers = []
    for step in range(1, 7):
        now[0] = 30.0 * step if rank == 1 else 0.0  # only rank 1's clock runs: due from step 2 on
        cb.flag = rank == 0 and step >= 5  # only rank 0 is signalled, after step 4's agreement
        answers.append(cb._agreed(step))
        if answers[-1][1]:
            cb.on_save(None, None)
    torch.save({"answers": answers, "collectives": len(calls)}, f"{out}.{rank}")
    dist.destroy_process_group()


def test_two_ranks_agree_on_stop_and_timed_save_in_one_collective_every_check_step(tmp_path):
    """Rank 1's clock says a save is due, rank 0 got the signal: both ranks hear both, at the same check steps
    (every 2nd), in one all_reduce per check step, none between."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_agree_worker, args=(port, str(tmp_path / "r")), nprocs=2, join=True)
    got = [torch.load(f"{tmp_path / 'r'}.{r}", weights_only=True) for r in (0, 1)]
    # by hand: step 2 rank 1 at 60 s (due); saved → its clock restarts at 60; step 4: 120 - 60 = 60 (due);
    # step 6: due again and rank 0's flag (set from step 5) reaches both
    want = [(False, False), (False, True), (False, False), (False, True), (False, False), (True, True)]
    assert got[0]["answers"] == got[1]["answers"] == want
    assert got[0]["collectives"] == got[1]["collectives"] == 3


class SignalLater(FakeClock):
    """After optimizer step 2, SIGTERM to this process from another thread a random 0-40 ms later (mid-step 3 or
    later: the handler runs on the main thread wherever it is)."""

    timer, live = None, True

    def on_step_end(self, trainer):
        if trainer.step == 2:
            self.timer = threading.Timer(random.Random(os.getpid()).uniform(0, 0.04), self._fire)
            self.timer.start()

    def _fire(self):
        if self.live:  # never after the run (SIGTERM would end pytest)
            os.kill(os.getpid(), signal.SIGTERM)

    def on_train_end(self, trainer, results):
        self.live = False
        self.timer.cancel()


def test_sigterm_in_process_to_a_streamed_run_with_one_worker_and_async_save_resumes_identically(topics_data, shards,
                                                                                                 tmp_path):
    """The fast variant of the two above (in this process, one loader worker): streamed data, a worker and
    ``train.async_save`` (the preemption checkpoint is complete when Preempted is raised, whatever background write
    of an earlier checkpoint was in flight); the CLI turns Preempted into exit 143 (the slow tests)."""
    one = ("train.num_workers=1", "train.save_every=2", "train.async_save=true")
    train(load_config(TEXT_TINY, stream_overrides(topics_data, shards, tmp_path / "straight", *one[:2])))
    out, before = tmp_path / "run", signal.getsignal(signal.SIGTERM)
    with pytest.raises(preempt.Preempted, match="preempted by SIGTERM at step"):
        train(load_config(TEXT_TINY, stream_overrides(topics_data, shards, out, *one)), callbacks=[SignalLater(0)])
    (row,) = rows(out, "preempted")
    assert 3 <= row["step"] < STREAM_STEPS and step_dirs(out / "checkpoints")[-1].name == row["checkpoint"]
    assert ckpt.verify(out / "checkpoints" / row["checkpoint"]) is None  # complete, not a write still in flight
    assert signal.getsignal(signal.SIGTERM) is before  # the run's handler is gone with it

    train(load_config(TEXT_TINY, stream_overrides(topics_data, shards, out, *one, "train.resume=true")))
    final = f"step_{STREAM_STEPS:08d}"
    assert_identical(weights(tmp_path / "straight" / "checkpoints" / final), weights(out / "checkpoints" / final))
    assert logged_steps(out) == list(range(1, STREAM_STEPS + 1))
