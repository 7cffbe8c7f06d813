"""``train.num_workers: auto``: the sizing formula by hand, a probe that leaves no trace (weights, BatchNorm
statistics, gradients, modes, random streams), a run with ``auto`` bitwise equal to one with the count it chose,
the count kept on resume, and the ``mm-ptft loader-rate`` command."""
import json
import math
import os
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from mm_ptft import cli
from mm_ptft.env import cpu_count
from mm_ptft.run import evaluate, load_config, train
from mm_ptft.train import loader_rate as LR
from mm_ptft.train.trainer import Trainer
from mm_ptft.train.rundir import final_results

from mm_fixtures import crash_at_step, fake_rates, one_thread  # noqa: F401
from mm_paths import ROOT

TINY = os.path.join(ROOT, "recipes", "image_classification", "tiny.yaml")
SMALL = ["train.report=false", "data.generate.n_train=96", "data.generate.n_eval=16", "train.batch_size=16",
         "train.max_steps=5", "train.eval_every=100", "sched.warmup_steps=0",
         "train.threads=1"]  # the faked CPU counts below assume a 1-thread step (thread sizing reads the real ones)


def cfg(out, *extra):
    return load_config(TINY, [f"output_dir={out}", *SMALL, *extra])


def records(run_dir, kind):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def final_weights(run_dir):
    return load_file(str(sorted((run_dir / "checkpoints").glob("step_*"))[-1] / "model.safetensors"))


def same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_workers_needed_by_hand():
    # the step takes 1000 samples/s, a worker makes 300: 1000/300 = 3.33 workers busy, x1.25 margin = 4.17 -> 5
    assert LR.workers_needed(1000, 300, cap=8) == 5
    assert LR.workers_needed(1000, 300, cap=3) == 3  # capped
    assert LR.workers_needed(100, 1000, cap=8) == 1  # 0.1 x 1.25 = 0.125 of a worker -> 1
    assert LR.workers_needed(40, 1000, cap=8) == 0  # 4% of a worker's time: the main process loads it
    assert LR.workers_needed(1000, 300, cap=0) == 0
    assert LR.workers_needed(600, 200, cap=8, margin=1.0) == 3  # exactly 3, no margin: no rounding up
    # a 16-CPU node: one process keeps 15 for workers; 4 processes share it: 16/4 - 1 = 3 each
    assert (LR.max_workers(16), LR.max_workers(16, 4), LR.max_workers(1), LR.max_workers(3, 4)) == (15, 3, 0, 0)
    # training on the CPU with 2 intra-op threads: those 2 cores are the step's; on 2 CPUs, no worker
    assert (LR.max_workers(16, 1, 2), LR.max_workers(2, 1, 2), LR.max_workers(2, 1, 1)) == (14, 0, 1)


def test_probe_leaves_no_trace():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 1))
    model[3].weight.grad = torch.ones_like(model[3].weight)  # a gradient that was there before stays
    model.eval()
    model[1].train()  # a mixed mode that must come back as it was
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    with LR.no_trace(model, torch.device("cpu")):
        model.train()
        model(torch.randn(16, 4)).sum().backward()
        random.random(), np.random.rand()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # running mean/var, count
    assert model[0].weight.grad is None and torch.equal(model[3].weight.grad, torch.ones_like(model[3].weight))
    assert [m.training for m in model] == [False, True, False, False] and not model.training
    assert torch.equal(torch.get_rng_state(), rng[0]) and random.getstate() == rng[1]
    assert np.array_equal(np.random.get_state()[1], rng[2])


def test_probe_reads_a_stream_from_a_fresh_copy(tmp_path):
    """The probe's records are the stream's first ones (a fresh iterator), and the stream itself keeps no trace:
    no position (resume state) and no skip counts waiting to be attached to its next sample."""
    from itertools import islice

    from mm_ptft.data.shards import Shard
    from mm_ptft.data.stream import ShardStream

    (tmp_path / "s.csv").write_text("id\n" + "".join(f"{r}\n" for r in range(40)))
    stream = ShardStream([Shard(str(tmp_path / "s.csv"), "csv")], lambda shard, row, rec, counts:
                         (counts.update(skipped=counts.get("skipped", 0) + 1) if row % 3 == 0 else rec["id"]),
                         seed=3, block=8)
    batches = list(LR.sample_batches(stream, None, 4, 2))
    assert stream.state_dict() == {} and stream._pending == {}
    fresh = list(islice(iter(stream), 8))
    assert [x for b in batches for x in b] == fresh and len(fresh) == 8


def test_injected_rates_size_the_loader_and_are_logged(tmp_path, monkeypatch):
    fake_rates(monkeypatch, worker_rate=1000.0, step_rate=500.0)  # 0.5 x 1.25 = 0.625 -> 1 worker
    out = tmp_path / "run"
    config = cfg(out, "train.num_workers=auto")
    seen = {}
    real = Trainer._run_epoch
    monkeypatch.setattr(Trainer, "_run_epoch", lambda self, total: (seen.setdefault("n", self.train_loader.num_workers),
                                                                    real(self, total))[1])
    train(config)
    assert seen["n"] == 1
    (rec,) = records(out, "loader")
    assert (rec["worker_samples_per_s"], rec["step_samples_per_s"], rec["num_workers"], rec["max_workers"]) == \
        (1000.0, 500.0, 1, 7)
    # evaluating the run alone (its config says auto): sized from the eval forward, the same metrics
    assert evaluate(str(out))["accuracy"] == final_results(out)["accuracy"]


def test_auto_run_equals_the_run_with_the_count_it_chose(tmp_path):
    """The real probe on this machine: a count in [0, CPUs - the step's threads], and the run is bitwise the run with that count
    (the probe's forward/backward left the BatchNorm statistics and everything else as they were)."""
    train(cfg(tmp_path / "auto", "train.num_workers=auto"))
    (rec,) = records(tmp_path / "auto", "loader")
    n = rec["num_workers"]
    cap = max(cpu_count() - torch.get_num_threads(), 0)  # CPU training: the step keeps its threads' cores
    assert isinstance(n, int) and 0 <= n <= cap <= max(cpu_count() - 1, 0) and rec["max_workers"] == cap
    assert rec["worker_samples_per_s"] > 0 and rec["step_samples_per_s"] > 0
    train(cfg(tmp_path / "fixed", f"train.num_workers={n}"))
    assert same(final_weights(tmp_path / "auto"), final_weights(tmp_path / "fixed"))


@pytest.mark.slow
def test_forced_counts_match_and_differ(tmp_path, monkeypatch):
    """auto choosing 0 (main-process augmentation: any RNG or BatchNorm trace of the probe would show) equals
    num_workers=0, and choosing 1 equals num_workers=1; 0 and 1 workers draw different augmentations, so the
    comparison can fail."""
    for n, (worker, step) in ((0, (1000.0, 10.0)), (1, (1000.0, 500.0))):
        fake_rates(monkeypatch, worker, step, cpus=2)
        train(cfg(tmp_path / f"auto{n}", "train.num_workers=auto"))
        monkeypatch.undo()
        train(cfg(tmp_path / f"fixed{n}", f"train.num_workers={n}"))
        assert records(tmp_path / f"auto{n}", "loader")[0]["num_workers"] == n
        assert same(final_weights(tmp_path / f"auto{n}"), final_weights(tmp_path / f"fixed{n}")), n
    assert not same(final_weights(tmp_path / "fixed0"), final_weights(tmp_path / "fixed1"))


@pytest.mark.slow
def test_resumed_auto_run_keeps_the_checkpoint_count(tmp_path, monkeypatch):
    """Measured 0 workers, crashed after step 3's checkpoint; on resume the probe would say 1, but the run keeps 0
    (the augmentation stream depends on it) and ends bitwise where a straight run with 0 workers does."""
    steps = ["train.num_workers=auto", "train.save_every=3"]
    train(cfg(tmp_path / "straight", "train.num_workers=0", "train.save_every=3"))
    fake_rates(monkeypatch, 1000.0, 10.0, cpus=2)
    crash_at_step(monkeypatch, 4, lambda: train(cfg(tmp_path / "resumed", *steps)))
    fake_rates(monkeypatch, 1000.0, 500.0, cpus=2)  # would measure 1
    train(cfg(tmp_path / "resumed", *steps, "train.resume=true"))
    assert [r["num_workers"] for r in records(tmp_path / "resumed", "loader")] == [0, 0]
    assert same(final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed"))


def test_loader_rate_command(tmp_path, monkeypatch, capsys):
    fake_rates(monkeypatch, worker_rate=250.0, step_rate=1000.0, cpus=4)  # 4 x 1.25 = 5, capped at 3
    assert cli.main(["loader-rate", TINY, f"output_dir={tmp_path / 'r'}", *SMALL]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "loader: 1 worker makes 250 samples/s, the step takes 1000 samples/s -> 3 workers (at most 3)"
    assert lines[1].startswith("recommended: train.num_workers=3")
    assert math.ceil(1000 / 250 * LR.MARGIN) == 5  # the uncapped need, by hand
