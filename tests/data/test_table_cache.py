"""The preprocessing cache: keys from file identity + settings, sealed entries, broken entries rebuilt, one builder
among several processes."""
import json
import multiprocessing as mp
import os
import time

import datasets
import pytest

from mm_ptft.data.table_cache import ArrowRecords, TableCache, cache_key, cached, features, tokenizer_identity, \
    unique_values


def _build(log=None, rows=10):
    def build(cache):
        if log:
            with open(log, "a") as f:
                f.write("built\n")
            time.sleep(0.5)  # long enough for a second process to arrive while the first builds
        ds = datasets.Dataset.from_dict({"x": list(range(rows))})
        out = ds.map(lambda b: {"y": [[v, v + 1] for v in b["x"]]}, batched=True, remove_columns=["x"],
                     features=features({"y": "int32[]"}), cache_file_name=cache.file_for("train"),
                     keep_in_memory=cache.file_for("train") is None, new_fingerprint=cache.key or "mem")
        return {"train": out}, {"rows": rows}
    return build


def test_key_follows_file_identity_and_settings(tmp_path):
    f = tmp_path / "a.csv"
    f.write_text("text,label\nx,1\n")
    k = cache_key([str(f)], {"max_length": 8})
    assert cache_key([str(f)], {"max_length": 8}) == k
    assert cache_key([str(f)], {"max_length": 9}) != k
    f.write_text("text,label\nx,2\n")  # same size, new content: a new mtime
    os.utime(f, ns=(1, 1))
    assert cache_key([str(f)], {"max_length": 8}) != k


def test_miss_then_hit_reads_the_same_rows_memory_mapped(tmp_path):
    cache = TableCache(str(tmp_path / "c"), "k1")
    tables, info, status = cached(cache, _build())
    assert status.state == "miss" and info == {"rows": 10} and status.size_bytes > 0
    again, info2, status2 = cached(TableCache(str(tmp_path / "c"), "k1"), _build(rows=3))  # build not called
    assert status2.state == "hit" and info2 == {"rows": 10}
    assert again["train"][:] == tables["train"][:] == {"y": [[v, v + 1] for v in range(10)]}
    assert again["train"].cache_files and again["train"].cache_files[0]["filename"].endswith("train.arrow")
    recs = ArrowRecords(again["train"], status2)
    assert recs.__getitems__([3, 1]) == [{"y": [3, 4]}, {"y": [1, 2]}] and recs[0] == {"y": [0, 1]}
    assert recs.list_lengths("y").tolist() == [2] * 10


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_meta", "meta_rows"])
def test_broken_entry_is_detected_and_rebuilt(tmp_path, damage):
    cached(TableCache(str(tmp_path), "k"), _build())
    arrow, meta = tmp_path / "k" / "train.arrow", tmp_path / "k" / "meta.json"
    data = arrow.read_bytes()
    if damage == "truncate":
        arrow.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        arrow.write_bytes(data[:-40] + bytes(b ^ 0xFF for b in data[-40:-39]) + data[-39:])
    elif damage == "no_meta":  # a build that died before sealing
        meta.unlink()
    else:
        m = json.loads(meta.read_text())
        m["files"]["train"]["rows"] = 11
        meta.write_text(json.dumps(m))
    tables, _, status = cached(TableCache(str(tmp_path), "k"), _build(rows=4))
    assert status.state == "rebuilt" and len(tables["train"]) == 4  # built again, never the damaged rows


def test_off_writes_nothing(tmp_path):
    tables, _, status = cached(TableCache(str(tmp_path / "c"), "k", enabled=False), _build())
    assert status.state == "off" and len(tables["train"]) == 10 and not (tmp_path / "c").exists()


def _worker(root, log, out):
    _, _, status = cached(TableCache(root, "shared"), _build(log))
    with open(out, "a") as f:
        f.write(status.state + "\n")


def test_one_process_builds_the_others_wait_and_read(tmp_path):
    log, out = tmp_path / "log", tmp_path / "out"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(str(tmp_path / "c"), str(log), str(out))) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert log.read_text().count("built") == 1
    assert sorted(out.read_text().split()) == ["hit", "hit", "miss"]


def test_tokenizer_identity_changes_with_the_vocabulary():
    from mm_ptft.encoders.text import train_wordpiece

    a = train_wordpiece(["the cat sat on the mat"] * 3, 100)
    b = train_wordpiece(["the cat sat on the mat"] * 3, 100)
    c = train_wordpiece(["a dog ran in the park"] * 3, 100)
    assert tokenizer_identity(a) == tokenizer_identity(b) != tokenizer_identity(c)


def test_unique_values_skips_empty_cells():
    ds = datasets.Dataset.from_dict({"label": ["a", None, "b", "a", "c"] * 3000})
    assert sorted(unique_values(ds, "label", batch_size=7)) == ["a", "b", "c"]
