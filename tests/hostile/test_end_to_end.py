"""Two tiny end-to-end runs through ``mm-ptft train`` (in process): unusual-but-valid images (16-bit,
alpha, palette transparency, CMYK JPEG, EXIF-rotated, animated, 1-pixel-wide) train a step alongside
broken ones that ``data.skip_bad_samples=true`` counts into ``metrics.jsonl``; without it the run exits 2
naming the file and its row in the user's file, with no traceback."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
from PIL import Image

from mm_ptft.cli import main

from mm_paths import ROOT

TINY = os.path.join(ROOT, "recipes", "image_classification", "tiny.yaml")


def images(folder) -> list[tuple[str, str]]:
    """(file, label) rows: each unusual image twice over two labels, then a corrupt and a missing file."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 24, 3), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    makers = {
        "i16.png": lambda p: Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(p),
        "rgba.png": lambda p: Image.fromarray(np.dstack([rgb, rgb[..., 0]]), "RGBA").save(p),
        "pal.gif": lambda p: Image.fromarray(rgb).convert("P").save(p, transparency=0),
        "cmyk.jpg": lambda p: Image.fromarray(np.dstack([rgb, rgb[..., :1]]), "CMYK").save(p),
        "exif6.jpg": lambda p: Image.fromarray(rgb).save(p, exif=exif),
        "anim.gif": lambda p: Image.fromarray(rgb).save(p, save_all=True, append_images=[Image.new("RGB", (24, 20))]),
        "thin.png": lambda p: Image.new("RGB", (1, 40), (200, 10, 10)).save(p),
        "f.tif": lambda p: Image.fromarray(rgb[..., 1].astype(np.float32) / 255).save(p),
    }
    rows = []
    for i, (name, make) in enumerate(makers.items()):
        make(str(folder / name))
        rows += [(f"img/{name}", "a" if i % 2 else "b")]
    (folder / "text.png").write_text("not an image")
    return rows + [("img/text.png", "a"), ("img/gone.png", "b")]


def write(path, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *rows])
    return str(path)


def test_unusual_images_train_and_broken_ones_are_counted_or_named(tmp_path, capsys):
    rows = images(tmp_path / "img")
    train_file = write(tmp_path / "train.csv", rows)
    eval_file = write(tmp_path / "eval.csv", rows[:4] + rows[-2:-1])
    common = [f"data.train_file={train_file}", f"data.eval_file={eval_file}", "train.max_steps=1",
              "train.batch_size=4", "train.report=false", "train.device=cpu", "data.generate=null"]
    assert main(["train", TINY, f"output_dir={tmp_path / 'run'}", "data.skip_bad_samples=true", *common]) == 0
    recs = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    data = [r for r in recs if r["kind"] == "data"][0]
    assert data["skipped_corrupt_images"] == 2 and data["skipped_missing_images"] == 1  # train: 1 + 1, eval: 1
    assert all(np.isfinite(r["loss"]) for r in recs if "loss" in r)
    capsys.readouterr()
    assert main(["train", TINY, f"output_dir={tmp_path / 'run2'}", *common]) == 2
    err = capsys.readouterr().err
    assert f"train.csv: row {len(rows) - 2}: corrupt image file" in err and "text.png" in err
    assert "Traceback" not in err
