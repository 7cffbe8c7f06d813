"""Multimodal classification: learns the tiny set, handles per-sample missing modalities, names bad rows."""
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mm_ptft.cli import main
from mm_ptft.config import ConfigError
from mm_ptft.run import load_config
from mm_ptft.data.generated import generate
from mm_ptft.data.tables import DataError
from mm_ptft.run import predict, train
from mm_ptft.tasks.multimodal_classification import MultimodalClassification

TINY = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "multimodal_classification", "tiny.yaml")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate({"name": "shapes_captions", "n_train": 96, "n_eval": 48, "image_size": 32, "sample_rate": 8000,
                     "seconds": 0.3, "seed": 3}, tmp_path_factory.mktemp("shapes"))


def cfg(tmp_path, data, *extra):
    return load_config(TINY, [f"output_dir={tmp_path / 'run'}", f"data.train_file={data['train_file']}",
                              f"data.eval_file={data['eval_file']}", "train.report=false", *extra])


def with_blanks(src: str, dst, blank: dict[int, str]) -> str:
    """Copy a manifest (and its media folder) with some cells emptied: {row: column}."""
    rows = [json.loads(ln) for ln in open(src)]
    for i, col in blank.items():
        rows[i][col] = ""
    shutil.copytree(os.path.dirname(src), dst, dirs_exist_ok=True)
    out = os.path.join(dst, os.path.basename(src))
    with open(out, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return out


def test_recipe_beats_chance_and_predicts(shapes, tmp_path):
    """Four shapes: chance 0.25; three modalities that each carry the label must reach 0.7."""
    results = train(cfg(tmp_path, shapes, "train.epochs=4"))
    assert results["accuracy"] >= 0.7, results
    # predict rebuilds the model from the run alone (no training data), media settings from the encoders
    rows = predict(tmp_path / "run", [shapes["eval_file"]])
    truth = [json.loads(ln)["label"] for ln in open(shapes["eval_file"])]
    assert len(rows) == len(truth)
    assert sum(r["label"] == t for r, t in zip(rows, truth)) / len(truth) >= 0.7


@pytest.mark.parametrize("fusion", ["gated", "concat", "cross_attention", "bottleneck"])
def test_missing_modality_is_masked_not_read(shapes, tmp_path, fusion):
    """A sample without an image gives the same logits whatever the placeholder image holds."""
    train_file = with_blanks(shapes["train_file"], tmp_path / "d", {0: "image", 1: "caption", 2: "audio"})
    p = MultimodalClassification.prepare(cfg(tmp_path, {**shapes, "train_file": train_file},
                                             f"model.fusion.name={fusion}"))
    assert p.counters["missing_image"] == 1 and p.counters["missing_text"] == 1 and p.counters["missing_audio"] == 1
    batch = p.collate([p.train_data[i] for i in range(4)])
    assert batch["image_present"].tolist() == [False, True, True, True]
    task = p.task.eval()
    with torch.no_grad():
        before = task(batch)["logits"]
        batch["image"][0] = torch.randn_like(batch["image"][0]) * 5
        after = task(batch)["logits"]
    torch.testing.assert_close(before, after)


def test_every_modality_empty_is_an_error(shapes, tmp_path):
    f = with_blanks(shapes["train_file"], tmp_path / "d", {})
    rows = [json.loads(ln) for ln in open(f)]
    rows[5].update(image="", audio="", caption="")
    with open(f, "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    with pytest.raises(DataError, match="row 5: every modality"):
        MultimodalClassification.prepare(cfg(tmp_path, {**shapes, "train_file": f}))


def test_missing_file_error_or_counted_skip(shapes, tmp_path):
    f = with_blanks(shapes["train_file"], tmp_path / "d", {})
    os.remove(os.path.join(tmp_path / "d", json.loads(open(f).readline())["audio"]))
    with pytest.raises(DataError, match=r"row 0: .*00000.wav: audio file not found"):
        MultimodalClassification.prepare(cfg(tmp_path, {**shapes, "train_file": f}))
    p = MultimodalClassification.prepare(cfg(tmp_path, {**shapes, "train_file": f}, "data.skip_bad_samples=true"))
    assert p.counters["skipped_bad_audio"] == 1 and len(p.train_data) == 95  # the speech recipe's counter


def test_subset_of_modalities_and_bad_modality(shapes, tmp_path):
    p = MultimodalClassification.prepare(cfg(tmp_path, shapes, "data.modalities=[image,text]"))
    assert sorted(p.task.towers) == ["image", "text"] and "audio" not in p.collate([p.train_data[0]])
    with pytest.raises(ConfigError, match="data.modalities"):
        MultimodalClassification.prepare(cfg(tmp_path, shapes, "data.modalities=[depth]"))


# ---- media get the unimodal recipes' checks (data/image.py, data/audio.py): errors or counted skips
def _media(manifest: str, row: int, column: str) -> str:
    """Absolute path of the media file in ``row`` of a JSONL manifest."""
    rel = [json.loads(ln) for ln in open(manifest)][row][column]
    return os.path.join(os.path.dirname(manifest), rel)


def _wav(path: str, samples: np.ndarray) -> None:
    sf.write(path, samples.astype(np.float32), 8000, subtype="FLOAT")


def test_nan_wav_in_the_eval_set_is_an_error_not_a_nan_loss(shapes, tmp_path, capsys):
    eval_file = with_blanks(shapes["eval_file"], tmp_path / "d", {})
    x = np.zeros(2400)
    x[7] = np.nan
    _wav(_media(eval_file, 2, "audio"), x)
    args = [TINY, f"output_dir={tmp_path / 'run'}", f"data.train_file={shapes['train_file']}",
            f"data.eval_file={eval_file}", "train.max_steps=1", "train.report=false"]
    assert main(["train", *args]) == 2
    assert re.search(r"eval\.jsonl: row 2: .*00002\.wav: audio contains NaN", capsys.readouterr().err)
    p = MultimodalClassification.prepare(cfg(tmp_path, {**shapes, "eval_file": eval_file}, "data.skip_bad_samples=true"))
    assert p.counters == {"skipped_bad_audio": 1} and len(p.eval_data) == 47


def test_corrupt_image_with_skip_bad_samples_is_a_counted_skip_not_a_crash(shapes, tmp_path):
    train_file = with_blanks(shapes["train_file"], tmp_path / "d", {})
    Path(_media(train_file, 3, "image")).write_bytes(b"not a png" * 20)
    with pytest.raises(DataError, match=r"train\.jsonl: row 3: corrupt image file .*00003\.png"):
        MultimodalClassification.prepare(cfg(tmp_path, {**shapes, "train_file": train_file}))
    train(cfg(tmp_path, {**shapes, "train_file": train_file}, "data.skip_bad_samples=true", "train.epochs=1"))
    events = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [e["skipped_corrupt_images"] for e in events if e["kind"] == "data"] == [1]
    assert (tmp_path / "run" / "final_metrics.json").exists()  # the epoch ran to its end


def test_empty_clip_is_bad_audio_and_a_10ms_clip_a_counted_drop(shapes, tmp_path):
    train_file = with_blanks(shapes["train_file"], tmp_path / "d", {})
    _wav(_media(train_file, 4, "audio"), np.zeros(0))
    _wav(_media(train_file, 9, "audio"), np.full(80, 0.1))  # 10 ms at 8 kHz
    with pytest.raises(DataError, match=r"train\.jsonl: row 4: .*00004\.wav: empty audio \(0 samples\)"):
        MultimodalClassification.prepare(cfg(tmp_path, {**shapes, "train_file": train_file}))
    p = MultimodalClassification.prepare(cfg(tmp_path, {**shapes, "train_file": train_file}, "data.skip_bad_samples=true"))
    assert p.counters == {"skipped_bad_audio": 1, "dropped_too_short": 1} and len(p.train_data) == 94
    assert [r["__row__"] for r in p.train_data.rows][3:5] == [3, 5] and 9 not in [r["__row__"] for r in p.train_data.rows]
    p = MultimodalClassification.prepare(cfg(tmp_path, {**shapes, "train_file": train_file}, "data.skip_bad_samples=true",
                                             "data.min_audio_seconds=0.0"))
    assert p.counters == {"skipped_bad_audio": 1} and len(p.train_data) == 95  # a 10 ms clip is kept when asked


def test_labels_per_class_picks_k_training_rows_per_class(shapes, tmp_path):
    """K=4 rows of each class from the training manifest (labels read back from the file by row), eval untouched."""
    import collections

    rows = [json.loads(ln) for ln in open(shapes["train_file"])]
    full = MultimodalClassification.prepare(cfg(tmp_path, shapes, "data.modalities=[text]"))
    c = cfg(tmp_path, shapes, "data.modalities=[text]", "data.labels_per_class=4")
    few = MultimodalClassification.prepare(c)
    assert collections.Counter(rows[r["__row__"]]["label"] for r in few.train_data.rows) == {n: 4 for n in c.data.labels}
    assert [r["__row__"] for r in few.eval_data.rows] == [r["__row__"] for r in full.eval_data.rows]
    assert few.counters["few_shot_rows"] == 16 and few.counters["few_shot_unused_rows"] == len(rows) - 16


def test_video_is_one_of_the_fused_modalities_and_may_be_missing(tmp_path):
    """Video beside text through the fusion path: a row with an empty video cell is a missing modality (counted,
    masked out of the fusion), not bad input; the run trains, evaluates and predicts."""
    pytest.importorskip("av")
    data = generate({"name": "moving_captions", "n_train": 24, "n_eval": 8, "frames": 8, "seed": 0},
                    tmp_path / "clips")
    lines = open(data["train_file"]).read().splitlines()
    lines[1] = re.sub(r",train/\d+\.mp4,", ",,", lines[1])  # row 0 loses its video
    open(data["train_file"], "w").write("\n".join(lines) + "\n")
    conf = cfg(tmp_path, data, "data.modalities=[video,text]", "data.sampling.num_frames=4", "train.epochs=1",
               "train.batch_size=8", "model.video={name: tiny_3d, widths: [8, 16], img_size: 32}")
    results = train(conf)
    assert 0 <= results["accuracy"] <= 1
    prepared = MultimodalClassification.prepare(load_config(tmp_path / "run" / "config.yaml"), train=True)
    assert prepared.counters["missing_video"] == 1
    absent = [prepared.train_data[i] for i, r in enumerate(prepared.train_data.rows) if r["video"] is None]
    assert len(absent) == 1 and not absent[0]["video_present"] and not absent[0]["video_mask"].any()
    assert absent[0]["video"].shape == (4, 3, 32, 32)
