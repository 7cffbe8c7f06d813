"""Hostile tables and label sets, through the functions the recipes use (``load_table``, ``learn_labels``,
``LabelMap``): each ends in a DataError naming the file, column or row in the user's file, or in the right
decoded values."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from mm_ptft.data.tables import ROW, DataError, LabelMap, load_table, require_columns
from mm_ptft.tasks.common import learn_labels


def table(tmp_path, text: str, name: str = "train.csv", encoding: str = "utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return str(path)


def labels_of(tmp_path, text: str, name: str = "train.csv") -> LabelMap:
    path = table(tmp_path, text, name)
    return learn_labels(SimpleNamespace(labels=[], label_column="label", train_file=path), load_table(path))


# ---- label sets ------------------------------------------------------------------------------------------
def test_single_class_training_data_is_an_error(tmp_path):
    with pytest.raises(DataError, match=r"train\.csv: column 'label' holds 1 distinct label\(s\) \['a'\]"):
        labels_of(tmp_path, "text,label\nx,a\ny,a\nz, a \n")


def test_single_class_is_fine_when_the_classes_are_listed(tmp_path):
    path = table(tmp_path, "text,label\nx,a\n")
    d = SimpleNamespace(labels=["a", "b"], label_column="label", train_file=path)
    assert learn_labels(d, load_table(path)).names == ["a", "b"]


def test_duplicate_listed_labels_name_the_key(tmp_path):
    path = table(tmp_path, "text,label\nx,a\n")
    with pytest.raises(DataError, match=r"data\.labels: duplicate labels"):
        learn_labels(SimpleNamespace(labels=["a", " a"], label_column="label", train_file=path), load_table(path))


def test_labels_differing_by_whitespace_are_one_class(tmp_path):
    m = labels_of(tmp_path, "text,label\nx,cat\ny, cat\nz,dog \nw,dog\n")
    assert m.names == ["cat", "dog"] and m.encode(["cat ", " dog"], "f") == [0, 1]


def test_labels_differing_only_by_case_are_an_error(tmp_path):
    with pytest.raises(DataError, match=r"train\.csv: column 'label': labels 'Cat' and 'cat' differ only in case"):
        labels_of(tmp_path, "text,label\nx,cat\ny,Cat\nz,dog\n")


def test_label_only_in_eval_names_its_row(tmp_path):
    m = labels_of(tmp_path, "text,label\nx,a\ny,b\n")
    ev = load_table(table(tmp_path, "text,label\nx,a\ny,b\nz,c\n", "eval.csv"))
    with pytest.raises(DataError, match=r"eval\.csv: row 2: label 'c' is not in the label set \['a', 'b'\]"):
        m.encode(ev["label"], "eval.csv", ev[ROW])


def test_numeric_and_string_labels_are_the_same_class(tmp_path):
    m = labels_of(tmp_path, '{"text": "x", "label": 1}\n{"text": "y", "label": 2}\n{"text": "z", "label": 10}\n',
                  "train.jsonl")
    assert m.names == ["1", "2", "10"]  # numeric order
    assert m.encode(["1", 2, 10.0, " 2", "2.0"], "eval.jsonl") == [0, 1, 2, 1, 1]
    assert LabelMap(["1.0", "2.0"]).encode([1, 2.0, "2"], "eval.csv") == [0, 1, 1]  # labels saved from a float column
    assert LabelMap(["007", "7"]).encode(["007", 7], "eval.csv") == [0, 1]  # codes with leading zeros stay apart


def test_empty_label_cells_are_named_by_row(tmp_path):
    """An empty cell makes pandas read the column as floats (1.0, NaN): the classes stay 1 and 2, and the
    empty cell is an error naming its row (never a class 'nan')."""
    path = table(tmp_path, "text,label\nx,1\ny,2\nz,\nw,1\n")
    ds = load_table(path)
    m = learn_labels(SimpleNamespace(labels=[], label_column="label", train_file=path), ds)
    assert m.names == ["1", "2"]
    with pytest.raises(DataError, match=r"train\.csv: row 2: empty label"):
        m.encode(ds["label"], "train.csv", ds[ROW])


def test_blank_string_label_is_named_by_row(tmp_path):
    ds = load_table(table(tmp_path, 'text\tlabel\nx\ta\ny\t" "\nz\tb\n', "train.tsv"))
    with pytest.raises(DataError, match=r"train\.tsv: row 1: empty label"):
        LabelMap(["a", "b"]).encode(ds["label"], "train.tsv", ds[ROW])


# ---- file structure --------------------------------------------------------------------------------------
def test_missing_label_column_names_the_columns(tmp_path):
    ds = load_table(table(tmp_path, "text,category\nx,a\n"))
    with pytest.raises(DataError, match=r"train\.csv: missing column\(s\) \['label'\]; the file has \['text', 'category'"):
        require_columns(ds, ["text", "label"], "train.csv")


@pytest.mark.parametrize("text,message", [
    ("text,label,label\nx,a,b\n", r"duplicate column name\(s\) \['label'\]"),
    ("", r"the file has no rows"),
    ("text,label\n", r"the file has no rows"),
], ids=["duplicate-columns", "empty-file", "header-only"])
def test_unusable_csv_is_an_error_naming_the_file(tmp_path, text, message):
    with pytest.raises(DataError, match=rf"data\.train_file=.*train\.csv: .*{message}"):
        load_table(table(tmp_path, text), "data.train_file")  # (zero-byte: "could not be read: ..." as before)


def test_bom_prefixed_csv_keeps_its_first_column_name(tmp_path):
    ds = load_table(table(tmp_path, "text,label\nx,a\n", encoding="utf-8-sig"))
    assert ds.column_names[:2] == ["text", "label"] and ds["text"] == ["x"]


def test_tsv_with_embedded_quotes_and_newlines(tmp_path):
    """A quoted cell with a tab, a newline and doubled quotes is one record: row numbers count records."""
    ds = load_table(table(tmp_path, 'text\tlabel\n"he said ""hi""\tthen\nleft"\ta\nplain\tb\n', "train.tsv"))
    assert ds["text"] == ['he said "hi"\tthen\nleft', "plain"] and ds["label"] == ["a", "b"] and ds[ROW] == [0, 1]


def test_jsonl_with_one_bad_line_names_row_and_line(tmp_path):
    lines = [json.dumps({"text": "x", "label": "a"}), json.dumps({"text": "y", "label": "b"}), "", "{not json",
             json.dumps({"text": "z", "label": "a"})]
    with pytest.raises(DataError, match=r"train\.jsonl: could not be read at row 2 \(line 4\)"):
        load_table(table(tmp_path, "\n".join(lines) + "\n", "train.jsonl"))
