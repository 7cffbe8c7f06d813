"""Exact resume: a run killed with SIGKILL at a random step, then resumed with ``train.resume=true``,
ends with the same weights (torch.equal) as an uninterrupted run; likewise when resuming at an epoch end.
Dropout stays on: the RNG state, the data position and the optimizer/scheduler state are all restored."""
import json
import os
import random
import shutil
import signal
import sys

import pytest
import torch
from safetensors.torch import load_file

from mm_ptft.contracts import Callback
from mm_ptft.run import load_config
from mm_ptft.run import train
from mm_ptft.train.rundir import final_results

from mm_fixtures import kill_after_checkpoint
from mm_paths import ROOT, TEXT_TINY

STEPS, SAVE_EVERY, PER_EPOCH = 9, 2, 7  # 400 training rows / batch 64 → 7 batches per epoch


def overrides(data, out, *extra):
    return [f"output_dir={out}", f"data.train_file={data['train_file']}", f"data.eval_file={data['eval_file']}",
            "train.batch_size=64", f"train.max_steps={STEPS}", f"train.save_every={SAVE_EVERY}",
            f"train.eval_every={PER_EPOCH}", "train.keep_last=10", "train.log_every=1", "train.report=false",
            "train.device=cpu", *extra]


def weights(ckpt_dir):
    return load_file(str(ckpt_dir / "model.safetensors"))


def assert_identical(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


def logged_steps(run_dir, kind="train"):
    recs = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in recs if r["kind"] == kind]


@pytest.fixture(scope="module")
def straight(topics_data, tmp_path_factory):
    """The uninterrupted reference run."""
    out = tmp_path_factory.mktemp("straight")
    train(load_config(TEXT_TINY, overrides(topics_data, out)))
    return out


def test_sigkill_at_a_random_step_then_resume_gives_identical_weights(topics_data, straight, tmp_path):
    step = random.Random(os.getpid()).choice(range(SAVE_EVERY, PER_EPOCH, SAVE_EVERY))  # mid-epoch: 2, 4 or 6
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "mm_ptft.cli", "train", TEXT_TINY, *overrides(topics_data, out)]
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    assert kill_after_checkpoint(cmd, env, out / "checkpoints", step, cwd=ROOT) == -signal.SIGKILL
    assert not (out / "final_metrics.json").exists(), "the run finished before it could be killed"

    train(load_config(TEXT_TINY, overrides(topics_data, out, "train.resume=true")))

    final = f"step_{STEPS:08d}"
    assert_identical(weights(straight / "checkpoints" / final), weights(out / "checkpoints" / final))
    assert logged_steps(out) == list(range(1, STEPS + 1))  # no step logged twice, none missing
    ref = final_results(straight)
    assert final_results(out) == ref


def test_resume_at_an_epoch_boundary_gives_identical_weights(topics_data, straight, tmp_path):
    """Start from the reference's end-of-epoch checkpoint alone and finish the run."""
    out = tmp_path / "boundary"
    boundary = f"step_{PER_EPOCH:08d}"
    shutil.copytree(straight / "checkpoints" / boundary, out / "checkpoints" / boundary)
    state = torch.load(out / "checkpoints" / boundary / "trainer_state.pt", weights_only=True)
    assert (state["epoch"], state["batches_done"], state["loader"]) == (1, 0, None)  # really at the boundary

    train(load_config(TEXT_TINY, overrides(topics_data, out, "train.resume=true")))

    final = f"step_{STEPS:08d}"
    assert_identical(weights(straight / "checkpoints" / final), weights(out / "checkpoints" / final))
    assert logged_steps(out) == list(range(PER_EPOCH + 1, STEPS + 1))


class ThreadSpy(Callback):
    """The intra-op thread count each optimizer step ran with."""

    every_step = True

    def __init__(self):
        self.seen = set()

    def on_step_end(self, trainer):
        self.seen.add(torch.get_num_threads())


def test_a_resume_computes_with_the_thread_count_its_checkpoint_records_whatever_the_load(topics_data, straight,
                                                                                          tmp_path, monkeypatch):
    """The straight run sized its threads at its start (``train.threads=0``) and its checkpoints record the count; its
    mid-epoch checkpoint resumed while the load says otherwise (the sizing alone would now pick the other count of
    1 or 2) computes with the recorded count and ends bitwise where the straight run does. The control, the same
    resume with that other count forced (``train.threads``), ends elsewhere: the count does change the bits."""
    from mm_ptft import env as E

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    mid = f"step_{2 * SAVE_EVERY:08d}"
    first = torch.load(straight / "checkpoints" / mid / "trainer_state.pt", weights_only=True)["threads"]
    assert first in (1, 2)
    other = 3 - first
    monkeypatch.setattr(E, "usable_cpus", lambda: 2)
    monkeypatch.setattr(E, "busy_at_start", lambda: 2 - other)  # the load now: 2 - busy = the other count
    assert E.thread_plan(0, 1).threads == other

    final, runs = f"step_{STEPS:08d}", {}
    for name, extra in (("kept", ()), ("forced", (f"train.threads={other}",))):
        out, spy = tmp_path / name, ThreadSpy()
        shutil.copytree(straight / "checkpoints" / mid, out / "checkpoints" / mid)
        train(load_config(TEXT_TINY, overrides(topics_data, out, "train.resume=true", *extra)), callbacks=[spy])
        runs[name] = (spy.seen, weights(out / "checkpoints" / final))
    assert runs["kept"][0] == {first} and runs["forced"][0] == {other}
    assert_identical(weights(straight / "checkpoints" / final), runs["kept"][1])
    ref = weights(straight / "checkpoints" / final)
    assert any(not torch.equal(ref[k], runs["forced"][1][k]) for k in ref)


def _threads_worker(rank, port, out):
    """Rank r sized r + 1 threads at its start; ``Trainer._size_threads`` on a first start, then on a resume of a
    checkpoint that recorded 2."""
    from datetime import timedelta
    from types import SimpleNamespace

    import torch.distributed as dist

    from mm_ptft.config import TrainConfig
    from mm_ptft.train.distributed import DistInfo
    from mm_ptft.train.trainer import Trainer

    os.environ.pop("OMP_NUM_THREADS", None)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=120))
    fake = SimpleNamespace(tc=TrainConfig(device="cpu"), dist=DistInfo(rank=rank, world=2, local_rank=rank,
                                                                       local_world=2))
    torch.set_num_threads(rank + 1)
    Trainer._size_threads(fake, None)
    first = torch.get_num_threads()
    Trainer._size_threads(fake, {"threads": 2})
    torch.save({"first": first, "resumed": torch.get_num_threads()}, f"{out}.{rank}")
    dist.destroy_process_group()


def test_torchrun_ranks_start_with_the_fewest_threads_any_rank_sized_and_resume_with_the_recorded_count(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_threads_worker, args=(port, str(tmp_path / "r")), nprocs=2, join=True)
    got = [torch.load(f"{tmp_path / 'r'}.{r}", weights_only=True) for r in (0, 1)]
    assert got == [{"first": 1, "resumed": 2}] * 2
