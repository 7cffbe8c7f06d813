"""Elastic restart: under ``torchrun --max-restarts=1`` a worker that dies mid-run is restarted with the
whole group, and the trainer resumes from the last checkpoint (TORCHELASTIC_RESTART_COUNT > 0) instead
of starting over. Run with FSDP2, so the restart also loads a full checkpoint into a sharded model."""
import json

import pytest
import torch

from torchrun_util import final_weights, train_losses, two_rank_runs  # noqa: F401 (fixture, shared launch)


def test_worker_failure_restarts_and_resumes_from_the_last_checkpoint(two_rank_runs):
    root, proc = two_rank_runs
    run = root / "elastic"
    assert (root / "failed_once").exists()  # the failure really happened
    assert "torchrun restart 1: resuming" in proc.stderr
    assert "resumed from" in proc.stderr and "step_00000002 (step 2," in proc.stderr
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in recs if r["kind"] == "train"]
    assert steps == [1, 2, 3, 4]  # step 3 was redone once after the restart, and logged once
    # the finished DDP/FSDP runs were not redone after the restart (the worker skips finished runs)
    assert proc.stderr.count("resumed from") == 1
    # and the interrupted run still trains exactly like one uninterrupted process with the global batch
    ref = train_losses(root / "single")
    assert train_losses(run) == pytest.approx(ref, rel=1e-4)
    a, b = final_weights(root / "single"), final_weights(run)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4, msg=k)
