"""Multi-task sampling: the three modes' probabilities against a hand computation, the frequencies the trainer's
own batch sampler then draws within binomial bounds, and round-robin's exact order (also split over 2 ranks)."""
import math

import pytest
from torch.utils.data import Dataset

from mm_ptft.data.multimodal import MixtureDataset
from mm_ptft.data.multitask import RoundRobinDataset, TaskDataset, sampling_probs
from mm_ptft.train.samplers import GroupedBatchSampler

SIZES = {"a": 900, "b": 100}


class _Items(Dataset):
    def __init__(self, n: int, tag: str) -> None:
        self.n, self.tag = n, tag

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[str, int]:
        return self.tag, i


@pytest.mark.parametrize("mode, temperature, expected", [
    ("proportional", 1.0, {"a": 0.9, "b": 0.1}),  # 900 : 100
    ("temperature", 2.0, {"a": 0.75, "b": 0.25}),  # sqrt: 30 : 10
    ("temperature", 1.0, {"a": 0.9, "b": 0.1}),  # T=1 is proportional
    ("round_robin", 1.0, {"a": 0.5, "b": 0.5}),
])
def test_sampling_probabilities_match_hand_computation(mode, temperature, expected):
    got = sampling_probs(SIZES, mode, temperature)
    assert got == pytest.approx(expected)


@pytest.mark.parametrize("mode, temperature", [("proportional", 1.0), ("temperature", 2.0), ("temperature", 4.0)])
def test_drawn_frequencies_within_binomial_bounds(mode, temperature):
    """The mixture's epoch holds round(N p_i) of each task; the trainer's shuffled batches then draw each
    task at frequency p_i: the first 320 samples lie within 4 binomial standard deviations."""
    p = sampling_probs(SIZES, mode, temperature)
    mix = MixtureDataset({n: _Items(k, n) for n, k in SIZES.items()}, p, size=2000, seed=3)
    assert mix.counts() == {n: round(2000 * p[n]) for n in SIZES}
    sampler = GroupedBatchSampler(len(mix), 32, seed=5)
    drawn = [mix[i][0] for b in list(sampler)[:10] for i in b]
    n = len(drawn)
    for name, q in p.items():
        freq = drawn.count(name) / n
        assert abs(freq - q) <= 4 * math.sqrt(q * (1 - q) / n), (name, freq, q)


def test_round_robin_batches_take_turns_in_exact_order():
    parts = {"b": _Items(25, "b"), "a": _Items(10, "a"), "c": _Items(7, "c")}
    data = RoundRobinDataset(parts)
    sampler = data.batch_sampler(GroupedBatchSampler(len(data), 4, seed=0))
    batches = list(sampler)
    assert len(batches) == len(sampler) == 12  # ceil(42 samples / (4 * 3 tasks)) = 4 turns of 3 tasks
    tasks = [{data[i][0] for i in b} for b in batches]
    assert tasks == [{"a"}, {"b"}, {"c"}] * 4  # one task per batch, sorted names in turn
    c_items = [data[i][1][1] for b, t in zip(batches, tasks) if t == {"c"} for i in b]
    assert sorted(c_items[:7]) == list(range(7))  # task c (7 samples) is gone through whole before repeating
    sampler.set_epoch(1)
    assert list(sampler) != batches  # a new shuffle each epoch ...
    sampler.set_epoch(0)
    assert list(sampler) == batches  # ... and the same one again for the same epoch (exact resume)


def test_round_robin_over_two_ranks_gives_each_rank_its_slice_of_the_same_task():
    data = RoundRobinDataset({"a": _Items(40, "a"), "b": _Items(12, "b")})
    ranks = [list(data.batch_sampler(GroupedBatchSampler(len(data), 4, seed=0, rank=r, world=2))) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1])  # DDP: the same number of steps on every rank
    for b0, b1 in zip(*ranks):
        assert {data[i][0] for i in b0} == {data[i][0] for i in b1} and len({data[i][0] for i in b0}) == 1
        assert not set(b0) & set(b1)  # disjoint halves of one global batch


def test_task_dataset_concatenates_in_sorted_order():
    data = TaskDataset({"y": _Items(2, "y"), "x": _Items(3, "x")})
    assert [data[i] for i in range(len(data))] == [("x", ("x", 0)), ("x", ("x", 1)), ("x", ("x", 2)),
                                                   ("y", ("y", 0)), ("y", ("y", 1))]


def test_bad_sampling_settings_name_the_key():
    with pytest.raises(ValueError, match="data.sampling='uniform'"):
        sampling_probs(SIZES, "uniform")
    with pytest.raises(ValueError, match="data.temperature"):
        sampling_probs(SIZES, "temperature", 0.0)
    with pytest.raises(ValueError, match=r"tasks \['b'\]: no training samples"):
        sampling_probs({"a": 3, "b": 0}, "proportional")
    with pytest.raises(ValueError, match="tasks.b: 1 training samples make no batch"):
        RoundRobinDataset({"a": _Items(8, "a"), "b": _Items(1, "b")}).batch_sampler(
            GroupedBatchSampler(9, 4, world=2, rank=0))
