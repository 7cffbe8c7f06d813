"""The bad-input matrix: every case ends in a clear error naming the file / row / key, or in a counted
skip (``data.skip_bad_samples=true``) or counted repair, through the public functions the recipes use.
The last test shows the counts reaching ``metrics.jsonl`` in a real run."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from torch import nn

from mm_ptft.config import ConfigError
from mm_ptft.run import load_config
from mm_ptft.data.audio import load_waveform, scan_clips
from mm_ptft.data.coco import coco_records, read_coco
from mm_ptft.data.image import scan_images
from mm_ptft.data.tables import DataError, load_table
from mm_ptft.run import train
from mm_ptft.tasks import get_recipe
from mm_ptft.train import checkpoint as ckpt

from mm_paths import TEXT_TINY

TOPICS = ["sports", "cooking", "space", "finance"]


# ------------------------------------------------------------------------------------------ text
def write_csv(path: Path, rows: list[tuple[str, str]], header=("text", "label")) -> str:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def good_rows(n=40):
    return [(f"the {t} news number {i} about {t}", t) for i in range(n) for t in TOPICS[i % 4:i % 4 + 1]]


def text_cfg(tmp_path, train_rows, eval_rows=None, *extra, header=("text", "label")):
    tr = write_csv(tmp_path / "train.csv", train_rows, header)
    ev = write_csv(tmp_path / "eval.csv", eval_rows if eval_rows is not None else good_rows(8), header)
    return load_config(TEXT_TINY, [f"output_dir={tmp_path / 'run'}", f"data.train_file={tr}", f"data.eval_file={ev}",
                                   *extra])


def prepare(cfg):
    return get_recipe(cfg.task).prepare(cfg)


def test_empty_text_is_an_error_naming_the_row(tmp_path):
    rows = good_rows()
    rows[5] = ("   ", "sports")
    with pytest.raises(DataError, match=r"train\.csv: row 5: empty text .*skip_bad_samples"):
        prepare(text_cfg(tmp_path, rows))


def test_empty_text_is_a_counted_skip_when_asked(tmp_path):
    rows = good_rows()
    rows[5], rows[9] = ("", "sports"), (" ", "space")
    prepared = prepare(text_cfg(tmp_path, rows, None, "data.skip_bad_samples=true"))
    assert prepared.counters["skipped_empty_text"] == 2
    assert len(prepared.train_data) == len(rows) - 2


def test_text_longer_than_the_model_limit_is_truncated_and_counted(tmp_path):
    rows = good_rows()
    rows[0] = (" ".join(["sports"] * 500), "sports")
    prepared = prepare(text_cfg(tmp_path, rows, None, "data.max_length=32"))
    assert prepared.counters["truncated_texts"] == 1
    longest = max(len(r["text"]) for r in prepared.train_data.items)
    assert longest == 32


def test_label_outside_the_label_set_names_row_and_label(tmp_path):
    ev = good_rows(8)
    ev[3] = ("a sunny day with some rain", "weather")
    with pytest.raises(DataError, match=r"eval\.csv: row 3: label 'weather' is not in the label set"):
        prepare(text_cfg(tmp_path, good_rows(), ev))


def test_missing_column_names_the_column_and_file(tmp_path):
    with pytest.raises(DataError, match=r"train\.csv: missing column\(s\) \['label'\].*data\.\*_column"):
        prepare(text_cfg(tmp_path, good_rows(), good_rows(8), header=("text", "topic")))


def test_missing_file_names_the_key_and_path(tmp_path):
    with pytest.raises(DataError, match=r"data\.train_file=.*nowhere\.csv: file not found"):
        load_table(str(tmp_path / "nowhere.csv"), "data.train_file")


def test_zero_byte_table_names_the_file(tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(DataError, match=r"data\.train_file=.*empty\.csv: could not be read"):
        load_table(str(tmp_path / "empty.csv"), "data.train_file")


# ---------------------------------------------------------------------------------- config, checkpoint
def test_unknown_config_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.bath_size'"):
        load_config(TEXT_TINY, ["train.bath_size=8"])


def test_unknown_component_kwarg_is_named(tmp_path):
    cfg = text_cfg(tmp_path, good_rows(), None, "model.text.hidden=3")
    with pytest.raises(KeyError, match=r"model\.text: unknown key\(s\) model\.text\.hidden"):
        prepare(cfg)


def test_checkpoint_from_another_model_is_refused(tmp_path):
    ckpt.save(tmp_path, 1, nn.Sequential(nn.Linear(3, 2)), {"step": 1}, "")
    path = tmp_path / "step_00000001"
    with pytest.raises(ckpt.CheckpointError,
                       match=r"from another model: missing \['bias', 'weight'\], unexpected \['0\.bias'"):
        ckpt.load(path, nn.Linear(3, 2))
    with pytest.raises(ckpt.CheckpointError, match=r"weights do not fit this model"):
        ckpt.load(path, nn.Sequential(nn.Linear(5, 2)))


# ----------------------------------------------------------------------------------------- images
@pytest.fixture
def images(tmp_path):
    """One good PNG and the four kinds of bad image file."""
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(good)
    data = good.read_bytes()
    (tmp_path / "corrupt.png").write_bytes(b"not an image at all" * 10)
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "zero.png").write_bytes(b"")
    return {k: str(tmp_path / f"{k}.png") for k in ("good", "corrupt", "truncated", "zero", "missing")}


@pytest.mark.parametrize("case, problem", [("corrupt", "corrupt"), ("truncated", "corrupt"), ("zero", "empty"),
                                           ("missing", "missing")])
def test_bad_image_is_an_error_naming_row_and_file_or_a_counted_skip(images, case, problem):
    paths = [images["good"], images[case], images["good"]]
    with pytest.raises(DataError, match=rf"train\.csv: row 1: {problem} image file .*{case}\.png"):
        scan_images(paths, "train.csv", skip_bad=False, counters={})
    counters: dict[str, int] = {}
    assert scan_images(paths, "train.csv", skip_bad=True, counters=counters) == [0, 2]
    assert counters == {f"skipped_{problem}_images": 1}


# ------------------------------------------------------------------------------------------ audio
def sine(path: Path, rate: int, channels: int = 1, seconds: float = 0.5) -> str:
    t = np.arange(int(rate * seconds)) / rate
    x = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)  # (T,)
    sf.write(str(path), np.stack([x] * channels, 1) if channels > 1 else x, rate, subtype="FLOAT")
    return str(path)


def test_truncated_wav_is_an_error_naming_row_and_file_or_a_counted_skip(tmp_path):
    good = sine(tmp_path / "good.wav", 16000)
    data = Path(good).read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    manifest = str(tmp_path / "manifest.csv")
    with pytest.raises(DataError, match=r"manifest\.csv: row 1: .*cut\.wav: truncated WAV"):
        scan_clips(["good.wav", "cut.wav"], manifest, 16000, 0.0, 0.0, False, True, {})
    counters: dict[str, int] = {}
    kept = scan_clips(["good.wav", "cut.wav"], manifest, 16000, 0.0, 0.0, True, True, counters)
    assert [row for row, _, _ in kept] == [0] and counters == {"skipped_bad_audio": 1}


def test_nan_audio_is_an_error_naming_the_file(tmp_path):
    x = np.zeros(8000, np.float32)
    x[100] = np.nan
    sf.write(str(tmp_path / "nan.wav"), x, 16000, subtype="FLOAT")
    with pytest.raises(DataError, match=r"manifest\.csv: row 0: .*nan\.wav: audio contains NaN"):
        scan_clips(["nan.wav"], str(tmp_path / "manifest.csv"), 16000, 0.0, 0.0, False, True, {})


def test_wrong_sample_rate_and_stereo_are_converted_and_counted(tmp_path):
    sine(tmp_path / "r8k_stereo.wav", 8000, channels=2)
    counters: dict[str, int] = {}
    (row, path, samples), = scan_clips(["r8k_stereo.wav"], str(tmp_path / "m.csv"), 16000, 0.0, 0.0, False, True,
                                       counters)
    assert counters == {"resampled": 1, "downmixed_to_mono": 1}
    wav = load_waveform(path, 16000)
    assert wav.shape == (samples,) == (8000,)  # 0.5 s at 16 kHz, one channel


# ------------------------------------------------------------------------------------------- COCO
def test_coco_box_with_negative_size_is_dropped_and_counted(tmp_path):
    Image.new("RGB", (40, 30)).save(tmp_path / "img.png")
    ann = {"images": [{"id": 1, "file_name": "img.png", "width": 40, "height": 30}],
           "categories": [{"id": 7, "name": "thing"}],
           "annotations": [{"id": i, "image_id": 1, "category_id": 7, "bbox": box, "area": 1, "iscrowd": 0}
                           for i, box in enumerate([[5, 5, 10, 10], [20, 5, -8, 10], [2, 2, 4, -3]], 1)]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    counters: dict[str, int] = {}
    coco = read_coco(str(tmp_path / "ann.json"), "data.train_file")
    (rec,) = coco_records(coco, str(tmp_path / "ann.json"), "", {7: 0}, counters, skip_bad=False, verify=True)
    assert rec.boxes == [[5.0, 5.0, 15.0, 15.0]]  # xyxy of the one valid box
    assert counters == {"dropped_degenerate_boxes": 2}


# --------------------------------------------------------------------------- counts reach metrics.jsonl
def test_skip_counts_are_logged_to_metrics_jsonl(tmp_path):
    rows = good_rows()
    rows[3], rows[7], rows[11] = ("", "space"), ("  ", "sports"), ("", "finance")
    rows[0] = (" ".join(["cooking"] * 300), "cooking")
    cfg = text_cfg(tmp_path, rows, None, "data.skip_bad_samples=true", "train.max_steps=1", "train.report=false",
                   "train.device=cpu", "data.max_length=64")
    train(cfg)
    recs = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    data_events = [r for r in recs if r["kind"] == "data"]
    assert data_events and data_events[0]["skipped_empty_text"] == 3 and data_events[0]["truncated_texts"] == 1
