"""``mm-ptft check-data``: every sample read once, bad ones counted (not fatal), exit 1 when any."""
import csv
import os
import subprocess
import sys

import webdataset as wds

from mm_ptft.run.check_data import check_data

from mm_fixtures import jpegs_good_and_bad
from mm_paths import ROOT, TEXT_TINY


def write(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return str(path)


def test_counts_bad_rows_of_a_stream_and_of_the_in_memory_path(tmp_path):
    rows = [("good text here", "a"), ("", "b"), ("more good text", "b"), ("  ", "a"), ("fine", "a")]
    train = write(tmp_path / "t.csv", rows * 4)
    ev = write(tmp_path / "e.csv", rows[:3])
    for streaming in ("true", "false"):
        report = check_data(TEXT_TINY, [f"output_dir={tmp_path / 'run'}", "data.generate=null",
                                        f"data.train_file={train}", f"data.eval_file={ev}",
                                        f"data.streaming={streaming}"])
        cache = report.pop("cache", None)
        assert report == {"samples": {"train": 12, "eval": 2}, "counts": {"skipped_empty_text": 9}}, streaming
        assert (cache is None) == (streaming == "true")  # map-style tables say which cache entry they came from


def test_cli_exit_code_says_whether_data_is_clean(tmp_path):
    clean = write(tmp_path / "t.csv", [("good text", "a"), ("other text", "b")] * 5)
    dirty = write(tmp_path / "d.csv", [("good text", "a"), ("", "b"), ("other", "b")] * 5)
    base = [sys.executable, "-m", "mm_ptft.cli", "check-data", TEXT_TINY, f"output_dir={tmp_path / 'r'}",
            "data.generate=null", "data.eval_fraction=0.2"]
    ok = subprocess.run([*base, f"data.train_file={clean}"], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0 and "no problems" in ok.stdout, ok.stderr[-2000:]
    bad = subprocess.run([*base, f"data.train_file={dirty}"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 1 and "skipped_empty_text=" in bad.stdout and "5 bad sample(s)" in bad.stdout


def test_images_are_decoded_in_full_also_when_training_decodes_them_on_the_device(tmp_path):
    """A JPEG whose header reads but whose Huffman table is bogus: the device path's worker-side check lets it
    through, so the check decodes every image in full and counts it."""
    good, bad = jpegs_good_and_bad()
    with wds.TarWriter(str(tmp_path / "s.tar")) as sink:
        for i in range(6):
            sink.write({"__key__": f"k{i}", "jpg": bad if i == 3 else good, "cls": "a" if i % 2 else "b"})
    report = check_data(os.path.join(ROOT, "recipes", "image_classification", "tiny.yaml"),
                        [f"output_dir={tmp_path / 'run'}", "data.generate=null", "data.streaming=true",
                         f"data.train_file={tmp_path / 's.tar'}", f"data.eval_file={tmp_path / 's.tar'}",
                         "data.labels=[a,b]", "data.decode_on=device"])
    assert report["counts"] == {"skipped_bad_image": 2}  # the bad sample, in the train pass and the eval pass
