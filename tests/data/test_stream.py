"""``data.stream.ShardStream``: every record exactly once per pass for any number of shards and readers
(ranks × loader workers, checked with 2 gloo ranks × 2 workers by sample ids), exact resume from a
``StatefulDataLoader`` state, length bucketing, counted skips."""
import json
import os
import subprocess
import sys

import pytest
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from mm_ptft.data.shards import Shard
from mm_ptft.data.stream import CountingCollate, ShardStream, assign, hash_split
from mm_ptft.types import COUNTS

from mm_paths import ROOT


def write_shards(root, sizes):
    """CSV shards ``s{i}.csv`` with ``sizes[i]`` rows: id, text of id-dependent length."""
    paths = []
    for i, n in enumerate(sizes):
        p = root / f"s{i}.csv"
        p.write_text("id,text\n" + "".join(f"{i}-{r},{'w ' * (1 + (7 * r + i) % 13)}\n" for r in range(n)))
        paths.append(Shard(str(p), "csv"))
    return paths


def ids(shard, row, record, counters):
    assert record["id"] == f"{os.path.basename(shard.path)[1:-4]}-{row}"  # the row number is the file's own
    return record["id"]


def read_as(stream, reader, readers):
    stream._reader = lambda: (reader, readers)
    return list(stream)


@pytest.mark.parametrize("n_shards", [1, 2, 3, 4, 5, 8, 9])
@pytest.mark.parametrize("readers", [1, 2, 3, 4])
def test_assign_gives_every_row_to_exactly_one_reader(n_shards, readers):
    rows = 7
    seen = []
    for reader in range(readers):
        for piece in assign(n_shards, reader, readers, list(reversed(range(n_shards)))):
            seen += [(piece.shard, r) for r in range(rows) if r % piece.stride == piece.offset]
    assert sorted(seen) == [(s, r) for s in range(n_shards) for r in range(rows)]


@pytest.mark.parametrize("readers", [1, 3, 4, 7])
def test_one_pass_reads_every_record_once_with_uneven_shards(tmp_path, readers):
    shards = write_shards(tmp_path, [10, 3, 7, 1, 12])
    expected = {f"{i}-{r}" for i, n in enumerate([10, 3, 7, 1, 12]) for r in range(n)}
    got = [x for k in range(readers) for x in read_as(ShardStream(shards, ids, seed=1, block=4, passes=1), k, readers)]
    assert len(got) == len(expected) and set(got) == expected


def test_passes_reshuffle_and_each_pass_is_complete(tmp_path):
    shards = write_shards(tmp_path, [9, 9, 9])
    stream = ShardStream(shards, ids, seed=3, block=5, passes=2)
    got = list(stream)
    assert sorted(got[:27]) == sorted(got[27:]) and len(set(got[:27])) == 27
    assert got[:27] != got[27:]  # a new order every pass


def test_state_resumes_with_the_very_next_sample(tmp_path):
    shards = write_shards(tmp_path, [11, 4, 9])
    straight = ShardStream(shards, ids, seed=2, block=5)
    it = iter(straight)
    reference = [next(it) for _ in range(60)]  # more than two passes
    for cut in (1, 5, 13, 24, 25, 47):
        first = ShardStream(shards, ids, seed=2, block=5)
        it = iter(first)
        head = [next(it) for _ in range(cut)]
        second = ShardStream(shards, ids, seed=2, block=5)
        second.load_state_dict(first.state_dict())
        it = iter(second)
        assert head + [next(it) for _ in range(60 - cut)] == reference, cut


def loader_batches(dataset, n, batch_size, state=None):
    """The first ``n`` batches of a 2-worker ``StatefulDataLoader`` over ``dataset`` (resumed from ``state``), and
    the loader's state after them."""
    dl = StatefulDataLoader(dataset, batch_size=batch_size, num_workers=2, collate_fn=list)
    if state:
        dl.load_state_dict(state)
    it = iter(dl)
    batches = [next(it) for _ in range(n)]
    return batches, dl.state_dict()


def assert_resumes_exactly(make, batch_size, total, cut):
    """Batches 0..total of a fresh loader over ``make()`` equal ``cut`` batches + a new loader resumed from there."""
    reference, _ = loader_batches(make(), total, batch_size)
    head, state = loader_batches(make(), cut, batch_size)
    tail, _ = loader_batches(make(), total - cut, batch_size, state)
    assert head + tail == reference
    return reference


def test_stateful_dataloader_with_two_workers_resumes_exactly(tmp_path):
    shards = write_shards(tmp_path, [13, 6, 8])
    assert_resumes_exactly(lambda: ShardStream(shards, ids, seed=4, block=4), 3, 20, 7)


def test_two_gloo_ranks_times_two_workers_see_each_sample_once_and_resume_exactly(tmp_path):
    sizes = [10, 3, 7, 1, 12, 5]  # 6 shards over 4 readers: 4 whole, 2 split by rows
    write_shards(tmp_path, sizes)
    out = tmp_path / "ids.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "tests", "data", "stream_worker.py"), str(tmp_path / "s*.csv"), str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = json.loads(out.read_text())
    one_pass = ranks[0]["pass"] + ranks[1]["pass"]
    expected = {f"s{i}.csv:{r}" for i, n in enumerate(sizes) for r in range(n)}
    assert len(one_pass) == len(expected) and set(one_pass) == expected
    assert set(ranks[0]["pass"]).isdisjoint(ranks[1]["pass"]) and ranks[0]["pass"] and ranks[1]["pass"]
    for r in ranks:
        assert r["resumed"] == r["straight"]


def test_bucketing_groups_lengths_and_keeps_every_sample(tmp_path):
    shards = write_shards(tmp_path, [40, 40])

    def words(shard, row, record, counters):
        return {"id": record["id"], "n": len(record["text"].split())}

    def padding(stream):
        items = list(stream)
        batches = [items[i: i + 8] for i in range(0, len(items), 8)]
        return items, sum(max(x["n"] for x in b) * len(b) - sum(x["n"] for x in b) for b in batches)

    plain, pad_plain = padding(ShardStream(shards, words, seed=0, block=40, passes=1))
    bucketed, pad_bucketed = padding(ShardStream(shards, words, seed=0, block=40, passes=1, batch_size=8,
                                                 length=lambda x: x["n"]))
    assert sorted(x["id"] for x in bucketed) == sorted(x["id"] for x in plain)
    assert pad_bucketed < pad_plain / 3


def test_skips_are_counted_once_and_reach_the_batch(tmp_path):
    shards = write_shards(tmp_path, [10])

    def odd_only(shard, row, record, counters):
        if row % 2 == 0:
            counters["skipped_even"] = counters.get("skipped_even", 0) + 1
            return None
        return {"x": torch.tensor(row)}

    dl = StatefulDataLoader(ShardStream(shards, odd_only, shuffle=False, block=3, passes=1), batch_size=2,
                            collate_fn=CountingCollate(lambda items: {"x": torch.stack([i["x"] for i in items])}))
    batches = list(dl)
    assert [b["x"].tolist() for b in batches] == [[1, 3], [5, 7], [9]]
    assert sum(b.get(COUNTS, {}).get("skipped_even", 0) for b in batches) == 5


def test_a_reader_without_data_is_an_error_not_a_hang(tmp_path):
    shards = write_shards(tmp_path, [2])
    with pytest.raises(ValueError, match="reader 3 of 4"):
        read_as(ShardStream(shards, ids, block=4), 3, 4)


def test_hash_split_is_seeded_and_near_the_fraction():
    shard = Shard("/x/a.csv", "csv")
    in_eval = hash_split(0, 0.1)
    share = sum(in_eval(shard, r) for r in range(20000)) / 20000
    assert 0.09 < share < 0.11
    moved = Shard("/elsewhere/a.csv", "csv")  # the split follows the file name, not where it lies
    assert [in_eval(moved, r) for r in range(500)] == [in_eval(shard, r) for r in range(500)]
    assert [hash_split(1, 0.1)(shard, r) for r in range(500)] != [in_eval(shard, r) for r in range(500)]


def test_mixture_draws_by_weight_and_resumes_exactly(tmp_path):
    from mm_ptft.data.stream import MixtureStream

    a, b = write_shards(tmp_path, [30, 20])

    def mixture():
        return MixtureStream({"a": ShardStream([a], ids, seed=1, block=4), "b": ShardStream([b], ids, seed=2, block=4)},
                             {"a": 3.0, "b": 1.0}, seed=7)

    reference = assert_resumes_exactly(mixture, 4, 100, 37)
    names = [n for batch in reference for n, _ in batch]
    share = names.count("a") / len(names)  # 400 draws of p=0.75: sd 0.022
    assert 0.75 - 0.09 < share < 0.75 + 0.09
    assert all(x.startswith("0-") if n == "a" else x.startswith("1-") for batch in reference for n, x in batch)
