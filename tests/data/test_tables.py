"""Tables: the stratified few-shot selection shared by every classification recipe and the quickstart."""
from collections import Counter

import pytest

from mm_ptft.data.tables import ROW, DataError, LabelMap, column, per_class_sample, rows_by_label, rows_of

VALUES = [lab for i in range(10) for lab in ("a", "b", " c")] + ["zzz", None]  # 10 rows per class, 2 outside


def test_k_rows_of_every_class_seeded():
    labels = LabelMap(["a", "b", "c"])
    picked = per_class_sample(VALUES, 3, seed=0, labels=labels, where="t")
    assert Counter(VALUES[i].strip() for i in picked) == {"a": 3, "b": 3, "c": 3}  # " c" is the class c
    assert picked == sorted(set(picked))
    assert per_class_sample(VALUES, 3, seed=0, labels=labels, where="t") == picked
    draws = {tuple(per_class_sample(VALUES, 3, seed=s, labels=labels, where="t")) for s in range(5)}
    assert len(draws) > 1  # the seed picks the rows


def test_each_class_is_drawn_uniformly():
    """Over many seeds every row of a class is drawn about K/n of the time (n=10, K=3: 0.3)."""
    labels, hits = LabelMap(["a", "b", "c"]), Counter()
    for s in range(2000):
        hits.update(per_class_sample(VALUES, 3, seed=s, labels=labels, where="t"))
    freq = [hits[i] / 2000 for i in range(30)]
    assert min(freq) > 0.3 - 0.045 and max(freq) < 0.3 + 0.045  # ~4.4 binomial sd of 0.0102
    assert hits[30] == hits[31] == 0  # labels outside the label set are never drawn


def test_a_short_class_is_an_error_naming_it_and_its_count():
    with pytest.raises(DataError, match=r"11 rows per class requested, but class 'a' has 10, 'b' has 10, 'c' has 10"):
        per_class_sample(VALUES, 11, seed=0, labels=LabelMap(["a", "b", "c"]), where="t")
    with pytest.raises(DataError, match=r"class 'd' has 0"):
        per_class_sample(VALUES, 2, seed=0, labels=LabelMap(["a", "b", "c", "d"]), where="t")


def test_rows_by_label_keys_as_the_label_map_compares():
    assert rows_by_label([1.0, "1", " 2", 2]) == {"1": [0, 1], "2": [2, 3]}


def test_column_reads_a_split_table_as_a_list_in_its_row_order():
    """A split (an indices mapping over the Arrow table) read in one go: the same values, in order, as row by row."""
    import datasets

    ds = datasets.Dataset.from_dict({"t": [f"s{i}" for i in range(50)], ROW: list(range(50))})
    part = ds.train_test_split(test_size=0.2, seed=3)["train"]
    texts, rows = column(part, "t"), rows_of(part)
    assert type(texts) is list and texts == [part[i]["t"] for i in range(len(part))]
    assert texts == [f"s{r}" for r in rows] and sorted(rows) != rows  # shuffled rows, each with its own text
    assert rows_of(ds.remove_columns(ROW)) is None


def test_hf_source_without_streaming_loads_through_datasets(tmp_path, monkeypatch):
    """``hf:NAME[:split]`` as a plain data.train_file: read whole by datasets.load_dataset (here a local dataset
    directory, as a hub id resolves to one) or load_from_disk; an unknown one is an error pointing at
    data.streaming, never "file not found"."""
    import datasets

    from mm_ptft.data.tables import load_table

    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "train.csv").write_text("text,label\na,x\nb,y\nc,x\n")
    (tmp_path / "ds" / "test.csv").write_text("text,label\nd,y\n")
    train = load_table(f"hf:{tmp_path / 'ds'}")
    assert train["text"] == ["a", "b", "c"] and train[ROW] == [0, 1, 2]
    assert load_table(f"hf:{tmp_path / 'ds'}:test")["label"] == ["y"]
    datasets.Dataset.from_dict({"text": ["p", "q"]}).save_to_disk(str(tmp_path / "saved"))
    assert load_table(f"hf:{tmp_path / 'saved'}", "data.eval_file")["text"] == ["p", "q"]
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match=r"data.train_file=hf:nobody/no_such_set: could not load split 'train' "
                                        r"through datasets.load_dataset.*set data.streaming: true") as err:
        load_table("hf:nobody/no_such_set")
    assert "file not found" not in str(err.value)


def test_a_recipe_trains_on_an_hf_source_without_streaming(tmp_path):
    from mm_paths import TEXT_TINY
    from mm_ptft.run import load_config, train

    (tmp_path / "ds").mkdir()
    rows = "".join(f"{w} {w},{t}\n" for t, w in [("a", "ball"), ("b", "soup")] * 8)
    (tmp_path / "ds" / "train.csv").write_text("text,label\n" + rows)
    res = train(load_config(TEXT_TINY, [f"output_dir={tmp_path / 'run'}", f"data.train_file=hf:{tmp_path / 'ds'}",
                                        "data.eval_fraction=0.25", "data.generate=null", "train.max_steps=1",
                                        "train.report=false"]))
    assert 0 <= res["accuracy"] <= 1
