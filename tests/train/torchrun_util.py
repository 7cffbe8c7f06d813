"""Helpers for the 2-process tests: tiny-recipe overrides, a ``torchrun`` launcher for dist_worker.py, and
the one session fixture that launches it (2-process runs are slow to start: one launch serves all tests)."""
import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from mm_ptft.run import load_config
from mm_ptft.run import train

from mm_paths import ROOT, TEXT_TINY

NO_DROPOUT = ["model.dropout=0.0", "model.text.config.hidden_dropout_prob=0.0",
              "model.text.config.attention_probs_dropout_prob=0.0"]
STEPS = 4
#: the DDP and FSDP runs write their checkpoints in the background, one per step (keep_last=2 prunes behind them)
ASYNC = ("train.async_save=true", "train.save_every=1")
FAIL_AFTER = 3  # the elastic run's rank 1 dies after optimizer step 3; its last checkpoint is step 2


def overrides(data, out, *extra):
    return [f"output_dir={out}", f"data.train_file={data['train_file']}", f"data.eval_file={data['eval_file']}",
            f"train.max_steps={STEPS}", "train.log_every=1", "train.report=false", "train.device=cpu", *NO_DROPOUT,
            *extra]


def torchrun(*groups, env_extra=None, restarts=0, timeout=240):
    """``torchrun --standalone --nproc_per_node=2 dist_worker.py`` with argument groups; returns the process."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           f"--max-restarts={restarts}", os.path.join(ROOT, "tests", "train", "dist_worker.py")]
    for i, g in enumerate(groups):
        cmd += (["--"] if i else []) + [TEXT_TINY, *g]
    env = {**os.environ, "PYTHONPATH": ROOT, **(env_extra or {})}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def train_losses(run_dir):
    recs = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if r["kind"] == "train"}


def final_weights(run_dir):
    last = sorted((run_dir / "checkpoints").glob("step_*"))[-1]
    return load_file(str(last / "model.safetensors"))


_LAUNCHED: dict = {}  # test modules import the fixture separately: launch once per session all the same


@pytest.fixture(scope="session")
def two_rank_runs(topics_data, tmp_path_factory):
    """A single-process reference (batch 32) and ONE ``torchrun --max-restarts=1`` launch running, in turn:
    DDP 2×16; FSDP2 2×8 with 2 accumulation steps (both ``ASYNC``: background checkpoint writes); FSDP2 2×16
    whose rank 1 dies once after step 3.
    No length grouping: with accumulation a step is 2 consecutive global batches of 16, whose union is the
    single process's batch of 32 only without grouping (grouped global batches: see the sampler test).
    Returns (root dir, the torchrun process)."""
    if not _LAUNCHED:
        _LAUNCHED["runs"] = _launch(topics_data, tmp_path_factory.mktemp("two_ranks"))
    return _LAUNCHED["runs"]


def _launch(topics_data, root):
    common = ("train.group_by_length=false",)
    train(load_config(TEXT_TINY, overrides(topics_data, root / "single", "train.batch_size=32", *common)))
    common_async = (*common, *ASYNC)
    env = {"MM_PTFT_TEST_FAIL": f"{FAIL_AFTER}:{root / 'failed_once'}", "MM_PTFT_TEST_FAIL_RUN": str(root / "elastic")}
    proc = torchrun(overrides(topics_data, root / "ddp", "train.batch_size=16", "train.distributed=ddp",
                              *common_async),
                    overrides(topics_data, root / "fsdp", "train.batch_size=8", "train.grad_accum_steps=2",
                              "train.distributed=fsdp", *common_async),
                    overrides(topics_data, root / "elastic", "train.batch_size=16", "train.save_every=2",
                              "train.distributed=fsdp", *common),
                    env_extra=env, restarts=1)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root, proc
