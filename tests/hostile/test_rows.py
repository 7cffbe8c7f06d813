"""Errors name the row in the user's file (0-based, header excluded: the ``ROW`` column) also when the
eval set is a seeded split of the training file: a bad row that lands in the split is reported with its
file row, not its position in the split (issue 14: "(eval split): row 2" for file row 16). One case per
recipe path: text, text regression, image, speech manifests, multimodal rows, paired (pretraining) manifests."""
from __future__ import annotations

import csv
import json
import os

import pytest

from mm_ptft.data.generated import generate
from mm_ptft.data.tables import DataError, ROW, load_table, seeded_split, split_off
from mm_ptft.run import load_config
from mm_ptft.tasks import get_recipe

from mm_paths import ROOT

FRACTION, SEED = 0.25, 0


def last_eval_row(path: str, hf: bool = True) -> int:
    """The highest file row the seeded split puts in the eval set; it must sit past the split's length, so
    a message that used positions in the split could not name it by accident."""
    if hf:
        rows = split_off(load_table(path), FRACTION, SEED)[1][ROW]
    else:
        n = len(load_table(path))
        rows = seeded_split(list(range(n)), FRACTION, SEED)[1]
    r = max(rows)
    assert r >= len(rows)
    return r


def prepare(recipe: str, train_file: str, *extra: str):
    cfg = load_config(os.path.join(ROOT, "recipes", recipe, "tiny.yaml"),
                      [f"data.train_file={train_file}", "data.eval_file=''", f"data.eval_fraction={FRACTION}",
                       f"seed={SEED}", f"output_dir={os.path.dirname(train_file)}/run", *extra])
    return get_recipe(recipe).prepare(cfg)


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return str(path)


def set_first_cell(path: str, row: int, value: str) -> None:
    """Rewrite the first cell of file row ``row`` (header excluded) of a CSV."""
    with open(path) as f:
        rows = list(csv.reader(f))
    rows[1 + row][0] = value
    write_csv(path, rows[0], rows[1:])


TINY_TEXT = "model.text={name: tiny, dim: 16, depth: 1, heads: 2, max_length: 32, vocab_size: 100}"


def test_text_classification(tmp_path):
    rows = [(f"news {i} about {t}", t) for i, t in enumerate(["a", "b"] * 12)]
    path = write_csv(tmp_path / "train.csv", ("text", "label"), rows)
    r = last_eval_row(path)
    rows[r] = ("  ", rows[r][1])
    write_csv(path, ("text", "label"), rows)
    with pytest.raises(DataError, match=rf"train\.csv \(eval split\): row {r}: empty text"):
        prepare("text_classification", path, TINY_TEXT)


def test_text_classification_label_outside_the_set(tmp_path):
    rows = [(f"news {i} about {t}", t) for i, t in enumerate(["a", "b"] * 12)]
    path = write_csv(tmp_path / "train.csv", ("text", "label"), rows)
    r = last_eval_row(path)
    with pytest.raises(DataError, match=rf"train\.csv \(eval split\): row {r}: label 'zzz' is not in"):
        prepare("text_classification", write_csv(path, ("text", "label"),
                                                 [(t, "zzz" if i == r else y) for i, (t, y) in enumerate(rows)]),
                TINY_TEXT, "data.labels=[a,b]")


def test_text_regression_empty_text_and_nan_target(tmp_path):
    rows = [(f"score text {i}", i / 10) for i in range(24)]
    path = write_csv(tmp_path / "train.csv", ("text", "score"), rows)
    r = last_eval_row(path)
    write_csv(path, ("text", "score"), [(t, "nan" if i == r else y) for i, (t, y) in enumerate(rows)])
    with pytest.raises(DataError, match=rf"train\.csv \(eval split\): row {r}: column 'score' must hold a finite"):
        prepare("text_regression", path, "data.target_mean=0.0", "data.target_std=1.0")
    write_csv(path, ("text", "score"), [("" if i == r else t, y) for i, (t, y) in enumerate(rows)])
    with pytest.raises(DataError, match=rf"train\.csv \(eval split\): row {r}: empty text"):
        prepare("text_regression", path)


def test_image_classification(tmp_path):
    paths = generate({"name": "image_shapes", "n_train": 24, "n_eval": 1, "size": 16, "seed": 0}, str(tmp_path))
    path = paths["train_file"]
    r = last_eval_row(path, hf=False)
    set_first_cell(path, r, "train/gone.png")
    with pytest.raises(DataError, match=rf"train\.csv \(eval split\): row {r}: missing image file .*gone\.png"):
        prepare("image_classification", path)


def test_speech_manifest(tmp_path):
    paths = generate({"name": "tone_speech", "n_train": 16, "n_eval": 1, "sample_rate": 8000, "max_words": 1,
                      "seed": 0}, str(tmp_path))
    path = paths["train_file"]
    r = last_eval_row(path)
    with open(os.path.join(os.path.dirname(path), "bad.wav"), "w") as f:
        f.write("not audio")
    set_first_cell(path, r, "bad.wav")
    with pytest.raises(DataError, match=rf"train\.csv: row {r}: .*bad\.wav"):
        prepare("speech_recognition", path)


def corrupt_jsonl(tmp_path, key: str, value: str, r: int, path: str) -> None:
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    rows[r][key] = value
    with open(path, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


@pytest.fixture
def captions(tmp_path):
    return generate({"name": "shapes_captions", "n_train": 16, "n_eval": 1, "image_size": 16, "sample_rate": 8000,
                     "seconds": 0.1, "seed": 0}, str(tmp_path))["train_file"]


def test_multimodal_rows(tmp_path, captions):
    r = last_eval_row(captions)
    (tmp_path / "bad.png").write_text("not an image")
    corrupt_jsonl(tmp_path, "image", str(tmp_path / "bad.png"), r, captions)
    with pytest.raises(DataError, match=rf"\(eval split\): row {r}: corrupt image file .*bad\.png"):
        prepare("multimodal_classification", captions, "data.modalities=[image,text]", "model.audio=null")


def test_paired_manifest(tmp_path, captions):
    r = last_eval_row(captions)
    corrupt_jsonl(tmp_path, "image", str(tmp_path / "gone.png"), r, captions)
    with pytest.raises(DataError, match=rf"\(eval split\): row {r}: missing image file .*gone\.png"):
        prepare("pretrain_contrastive", captions)
