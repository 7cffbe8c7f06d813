"""GroupedBatchSampler's length grouping, checked against transformers' LengthGroupedSampler (HF Trainer's
``group_by_length``) and against random batches."""
import random

import torch
from transformers.trainer_pt_utils import LengthGroupedSampler

from mm_ptft.train.samplers import GroupedBatchSampler

_rng = random.Random(0)
LENGTHS = [_rng.randint(4, 40) for _ in range(2000)]  # text of varied length, as the benchmarks use
BATCH = 32


def padded_tokens(batches: list[list[int]]) -> int:
    """Pad tokens when each batch is padded to its longest sample (dynamic padding)."""
    return sum(max(LENGTHS[i] for i in b) * len(b) - sum(LENGTHS[i] for i in b) for b in batches)


def hf_batches(seed: int) -> list[list[int]]:
    order = list(LengthGroupedSampler(BATCH, lengths=LENGTHS, generator=torch.Generator().manual_seed(seed)))
    return [order[s:s + BATCH] for s in range(0, len(order), BATCH)]


def test_grouped_batches_pad_no_more_than_hf_and_far_less_than_random():
    ours = [padded_tokens(list(GroupedBatchSampler(len(LENGTHS), BATCH, LENGTHS, seed=s))) for s in range(5)]
    hf = [padded_tokens(hf_batches(s)) for s in range(5)]
    rand = [padded_tokens(list(GroupedBatchSampler(len(LENGTHS), BATCH, None, seed=s))) for s in range(5)]
    assert 0 < sum(ours) <= sum(hf)  # mega-batches of 50 batches; HF's are 15 here (min(n // 4B, 50))
    assert sum(ours) < 0.2 * sum(rand)


def test_the_longest_sample_comes_in_the_first_batch_and_every_sample_once():
    for seed in range(5):
        sampler = GroupedBatchSampler(len(LENGTHS), BATCH, LENGTHS, seed=seed)
        sampler.set_epoch(seed)
        batches = list(sampler)
        assert max(LENGTHS[i] for i in batches[0]) == max(LENGTHS)
        assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))
        assert batches == list(sampler)  # deterministic given (seed, epoch): a resume draws the same


def test_batch_order_stays_random_beyond_the_first():
    """Swapping the longest batch to the front leaves the others in their shuffled order: across epochs the second
    batch's length varies, unlike a sort."""
    sampler = GroupedBatchSampler(len(LENGTHS), BATCH, LENGTHS, seed=0)
    seconds = set()
    for epoch in range(6):
        sampler.set_epoch(epoch)
        seconds.add(max(LENGTHS[i] for i in list(sampler)[1]))
    assert len(seconds) > 2
