"""Image classification with ``data.streaming: true`` from WebDataset tar shards (``{key}.png`` + ``{key}.cls``)
and from a path table: trains past chance, augmentation is seeded per sample so a resumed run matches a
straight one, a corrupt image is an error naming the sample or a counted skip."""
import json
import os

import pytest

from mm_ptft.data.generated import generate
from mm_ptft.data.tables import DataError
from mm_ptft.run import load_config, train

from mm_fixtures import csv_to_tars, fake_rates, resume_from_copy, same_weights
from mm_paths import ROOT

TINY = os.path.join(ROOT, "recipes", "image_classification", "tiny.yaml")
LABELS = "data.labels=[circle,square,triangle,cross]"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """image_shapes as 3 uneven tar shards (+ one corrupt sample in the last) and its eval CSV."""
    root = tmp_path_factory.mktemp("img")
    import mm_ptft.data.generated.images  # noqa: F401  (registers image_shapes)

    files = generate({"name": "image_shapes", "n_train": 240, "n_eval": 60, "size": 32, "seed": 0}, str(root))
    csv_to_tars(files["train_file"], root, [slice(0, 100), slice(100, 130), slice(130, None)],
                lambda read, r: {"png": read(r["path"]), "cls": r["label"]},
                [{"__key__": "corrupt", "png": b"\x89PNG broken", "cls": "circle"}])
    return {"tars": str(root / "train-{0..2}.tar"), "eval_file": files["eval_file"], "table": files["train_file"]}


def cfg(tmp_path, *extra, name="run"):
    return load_config(TINY, [f"output_dir={tmp_path / name}", "train.report=false", "data.generate=null",
                              "data.streaming=true", "data.shuffle_block=50", *extra])


def test_trains_from_tar_shards_and_counts_a_corrupt_image(tmp_path, shapes):
    results = train(cfg(tmp_path, f"data.train_file={shapes['tars']}", f"data.eval_file={shapes['eval_file']}",
                        LABELS, "data.skip_bad_samples=true", "train.max_steps=60", "train.num_workers=2",
                        "train.log_every=5"))
    assert results["accuracy"] > 0.4, results  # 4 shapes: chance 0.25
    logged = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("skipped_bad_image") == 1 for r in logged if r["kind"] == "data")


def test_corrupt_image_without_skip_names_the_sample(tmp_path, shapes):
    with pytest.raises(DataError, match=r"train-2.tar: sample 'corrupt'"):
        train(cfg(tmp_path, f"data.train_file={shapes['tars']}", f"data.eval_file={shapes['eval_file']}", LABELS,
                  "train.max_steps=40", "train.batch_size=64"))


def test_tar_shards_need_the_label_list(tmp_path, shapes):
    with pytest.raises(DataError, match="data.labels is empty"):
        train(cfg(tmp_path, f"data.train_file={shapes['tars']}", "train.max_steps=2"))


def test_resume_with_random_augmentation_matches_a_straight_run(tmp_path, shapes):
    common = [f"data.train_file={shapes['table']}", f"data.eval_file={shapes['eval_file']}", "train.max_steps=8",
              "train.save_every=4", "train.eval_every=100", "train.num_workers=2", "train.keep_last=5",
              "model.ema_decay=0.0"]  # labels learned from the table's label column
    train(cfg(tmp_path, *common, name="straight"))
    # the resumed run starts from the straight run's mid-pass step-4 checkpoint alone (workers restart there)
    resume_from_copy(tmp_path / "straight", tmp_path / "resumed", 4)
    train(cfg(tmp_path, *common, "train.resume=true", name="resumed"))
    assert same_weights(tmp_path / "straight", tmp_path / "resumed", 8)


def test_auto_workers_on_a_stream_read_a_copy(tmp_path, shapes, monkeypatch):
    """train.num_workers=auto reads its probe batches from a copy of the stream: the run (here sized to 0 workers,
    the main process iterating the very stream object the probe read) is bitwise the run with num_workers=0."""
    common = [f"data.train_file={shapes['tars']}", f"data.eval_file={shapes['eval_file']}", LABELS,
              "data.skip_bad_samples=true", "train.max_steps=6", "train.eval_every=100", "train.batch_size=16"]
    fake_rates(monkeypatch, worker_rate=1000.0, step_rate=10.0)  # 1% of a worker: 0 workers
    train(cfg(tmp_path, *common, "train.num_workers=auto", name="auto"))
    assert [r["num_workers"] for r in logged(tmp_path / "auto", "loader")] == [0]
    train(cfg(tmp_path, *common, "train.num_workers=0", name="fixed"))
    assert same_weights(tmp_path / "auto", tmp_path / "fixed", 6)


def logged(run_dir, kind):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]
