"""``data.shards``: what a config's data value expands to, and records read in each format with the file's
own row numbers (a CSV header and a byte-order mark excluded, quoted newlines kept)."""
import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from mm_ptft.data.shards import column_values, expand_sources, read_records
from mm_ptft.data.tables import DataError


def rows(shard, start=0):
    return [(r, rec) for r, rec in read_records(shard, start)]


def test_formats_rows_and_start(tmp_path):
    (tmp_path / "a.csv").write_text('\ufefftext,label\n"two\nlines",1\nplain,2\n', encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"text": "x", "label": 3}\n\n{"text": "y", "label": 4}\n')
    pq.write_table(pa.table({"text": ["p", "q", "r"], "label": [5, 6, 7]}), tmp_path / "c.parquet")
    with wds.TarWriter(str(tmp_path / "d.tar")) as sink:
        for i in range(3):
            sink.write({"__key__": f"k{i}", "txt": f"t{i}", "cls": str(i)})
    a, b, c, d = expand_sources(str(tmp_path / "*"))
    assert rows(a) == [(0, {"text": "two\nlines", "label": "1"}), (1, {"text": "plain", "label": "2"})]
    assert rows(b) == [(0, {"text": "x", "label": 3}), (1, {"text": "y", "label": 4})]  # blank lines are not rows
    assert rows(c, start=1) == [(1, {"text": "q", "label": 6}), (2, {"text": "r", "label": 7})]
    assert [(r, x["__key__"], x["txt"]) for r, x in rows(d, start=2)] == [(2, "k2", b"t2")]
    assert column_values([a, b, c], "label") == {"1", "2", 3, 4, 5, 6, 7}


def test_globs_brace_ranges_lists_and_directories(tmp_path):
    for i in range(4):
        (tmp_path / f"s-{i:03d}.jsonl").write_text('{"a": 1}\n')
    (tmp_path / "notes.txt").write_text("not a shard")
    names = lambda spec: [s.path.rsplit("/", 1)[-1] for s in expand_sources(spec)]  # noqa: E731
    assert names(str(tmp_path / "s-{001..002}.jsonl")) == ["s-001.jsonl", "s-002.jsonl"]
    assert names([str(tmp_path / "s-000.jsonl"), str(tmp_path / "s-00[23].jsonl")]) == [
        "s-000.jsonl", "s-002.jsonl", "s-003.jsonl"]
    assert names(str(tmp_path)) == [f"s-{i:03d}.jsonl" for i in range(4)]  # shard files only


@pytest.mark.parametrize("spec, message", [("missing/*.csv", "no shard matches"), ("missing.csv", "file not found"),
                                           ("", "give a file"), ("x.txt", "file not found")])
def test_bad_values_name_the_key(tmp_path, spec, message):
    with pytest.raises(DataError, match=f"data.eval_file.*{message}"):
        expand_sources(str(tmp_path / spec) if spec else spec, "data.eval_file")


def test_bad_jsonl_line_and_duplicate_csv_columns_are_named(tmp_path):
    (tmp_path / "b.jsonl").write_text('{"a": 1}\nnot json\n')
    (tmp_path / "a.csv").write_text("x,x\n1,2\n")
    with pytest.raises(DataError, match="line 2 is not JSON"):
        rows(expand_sources(str(tmp_path / "b.jsonl"))[0])
    with pytest.raises(DataError, match=r"duplicate column name\(s\) \['x'\]"):
        rows(expand_sources(str(tmp_path / "a.csv"))[0])


def test_hf_save_to_disk_directories(tmp_path):
    ds = datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(10)], "label": [i % 2 for i in range(10)]})
    ds.save_to_disk(str(tmp_path / "ds"))
    datasets.DatasetDict({"train": ds, "test": ds.select(range(3))}).save_to_disk(str(tmp_path / "dd"))
    shards = expand_sources(str(tmp_path / "ds"))
    assert sorted(rec["text"] for s in shards for _, rec in read_records(s)) == sorted(f"t{i}" for i in range(10))
    test = expand_sources(f"hf:{tmp_path / 'dd'}:test")
    assert sorted(rec["text"] for s in test for _, rec in read_records(s)) == ["t0", "t1", "t2"]


def test_a_csv_shard_that_is_not_utf8_is_named(tmp_path):
    (tmp_path / "latin.csv").write_bytes("text,label\ncaf\xe9,1\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.csv: not readable as UTF-8 text"):
        rows(expand_sources(str(tmp_path / "latin.csv"))[0])
