"""2-process CPU (gloo) runs through ``torchrun``: DDP with 2 × B and FSDP2 with 2 × B/2 × 2 accumulation
steps both train like ONE process with batch 2B, step for step (no dropout, same global batches)."""
import json

import pytest
import torch

from mm_ptft.train.checkpoint import verify
from mm_ptft.train.samplers import GroupedBatchSampler
from mm_ptft.train.rundir import final_results

from torchrun_util import STEPS, final_weights, train_losses, two_rank_runs  # noqa: F401 (a fixture)


@pytest.mark.parametrize("n", [64, 70, 73])
def test_rank_batches_are_slices_of_the_single_process_batch(n):
    """Length-grouped sampling under 2 ranks × B draws exactly one process's batches of 2B, split in two."""
    lengths = [(i * 37) % 23 + 1 for i in range(n)]
    single = list(GroupedBatchSampler(n, 8, lengths, seed=5, mega=2))
    ranks = [list(GroupedBatchSampler(n, 4, lengths, seed=5, mega=2, rank=r, world=2)) for r in range(2)]
    if n % 8 == 1:  # a last global batch of 1 sample cannot feed 2 ranks: training drops it
        single = [b for b in single if len(b) > 1]
    assert len(ranks[0]) == len(ranks[1]) == len(single)
    for whole, a, b in zip(single, *ranks):
        assert a + b == whole and abs(len(a) - len(b)) <= 1
    evals = [list(GroupedBatchSampler(n, 4, lengths, shuffle=False, rank=r, world=2, even=False)) for r in range(2)]
    assert sorted(i for part in evals for batch in part for i in batch) == list(range(n))  # each once


@pytest.fixture
def runs(two_rank_runs):
    return two_rank_runs[0]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_match_one_process_with_the_global_batch(runs, strategy):
    ref = runs / "single"
    single, multi = train_losses(ref), train_losses(runs / strategy)
    assert sorted(multi) == list(range(1, STEPS + 1))
    for step in single:  # losses are averaged over ranks before logging
        assert multi[step] == pytest.approx(single[step], rel=1e-4), step
    assert len(set(single.values())) == STEPS  # the weights did change between steps
    a, b = final_weights(ref), final_weights(runs / strategy)
    assert a.keys() == b.keys()  # FSDP checkpoints are gathered full state dicts, same format as 1 process
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4, msg=k)


def test_distributed_run_writes_once_and_evaluates_all_ranks(runs):
    for strategy in ("ddp", "fsdp"):
        final = final_results(runs / strategy)
        ref = final_results(runs / "single")
        # the metrics gather both ranks' halves of the eval set (all_gather_object); loss via all_reduce
        assert final["accuracy"] == pytest.approx(ref["accuracy"], abs=1e-6)
        assert final["loss"] == pytest.approx(ref["loss"], rel=1e-4)
        assert (runs / strategy / "encoders" / "text" / "mm_ptft_encoder.json").exists()
        steps = [json.loads(ln)["step"] for ln in (runs / strategy / "metrics.jsonl").read_text().splitlines()
                 if json.loads(ln)["kind"] == "train"]
        assert steps == list(range(1, STEPS + 1))  # rank 0 alone writes the log: no duplicates
        # train.async_save with a checkpoint per step: all complete, pruned to keep_last=2 (the best is the last)
        kept = sorted((runs / strategy / "checkpoints").iterdir())
        assert [p.name for p in kept] == ["best.json", f"step_{STEPS - 1:08d}", f"step_{STEPS:08d}"]
        assert all(verify(p) is None for p in kept[1:])
