"""Every command that takes image data runs end to end on a folder of class sub-folders (train, cv, fewshot,
check-data), and speech recognition on an audio folder, each layout read as its table would be."""
import json
import os

import pytest
import yaml

from mm_ptft.cli import main as cli_main
from mm_ptft.data.generated import generate

from mm_paths import ROOT

IMAGE_TINY = os.path.join(ROOT, "recipes", "image_classification", "tiny.yaml")
SPEECH_TINY = os.path.join(ROOT, "recipes", "speech_recognition", "tiny.yaml")
QUICK = ["train.max_steps=1", "train.batch_size=4", "train.report=false", "train.report_to=[]", "train.device=cpu",
         "train.num_workers=0", "data.generate=null"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A generated image folder: ``train/<class>/`` and ``val/<class>/`` of 16-pixel shapes, plus a stray file."""
    spec = {"name": "image_shapes", "n_train": 16, "n_eval": 8, "size": 16, "seed": 3, "classes": ["circle", "square"],
            "layout": "folders"}
    root = generate(spec, tmp_path_factory.mktemp("data"))["train_file"]
    with open(os.path.join(root, "train", "circle", "notes.txt"), "w") as f:
        f.write("not an image")
    return root


def test_train_then_fewshot_on_the_folder(folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli_main(["train", IMAGE_TINY, f"output_dir={run}", f"data.train_file={folder}", "model.image.img_size=16",
                     *QUICK]) == 0
    data = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if '"kind": "data"' in ln][0]
    assert data["ignored_non_image_files"] == 1
    saved = yaml.safe_load((run / "config.yaml").read_text())["data"]  # the split sub-folders it read
    assert (saved["train_file"], saved["eval_file"]) == (os.path.join(folder, "train"), os.path.join(folder, "val"))
    capsys.readouterr()
    assert cli_main(["fewshot", str(run), "--data", folder, "--shots", "2", "--episodes", "2", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["rows"] == 24 and result["classes"] == 2  # both splits, classes from the sub-folders


def test_cv_on_the_folder(folder, tmp_path):
    out = tmp_path / "cv"
    assert cli_main(["cv", IMAGE_TINY, "--folds", "2", "--out", str(out), f"data.train_file={folder}",
                     "model.image.img_size=16", *QUICK]) == 0
    summary = json.loads((out / "cv_summary.json").read_text())
    assert sum(summary["fold_sizes"]) == 24 and "accuracy" in summary["metrics"]
    rows = [json.loads(ln) for i in range(2)
            for ln in (out / "splits" / f"fold_{i}_eval.jsonl").read_text().splitlines()]
    assert {r["label"] for r in rows} == {"circle", "square"} and all(os.path.isfile(r["path"]) for r in rows)


def test_check_data_on_the_folder(folder, tmp_path, capsys):
    assert cli_main(["check-data", IMAGE_TINY, f"output_dir={tmp_path / 'r'}", f"data.train_file={folder}",
                     "data.generate=null", "model.image.img_size=16"]) == 0  # a stray file is counted, not a bad sample
    out = capsys.readouterr().out
    assert "usable samples: train 16, eval 8" in out and "ignored_non_image_files=1" in out
