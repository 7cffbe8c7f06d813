"""``data.decode_on=device`` end to end on CPU (the same code path as CUDA): image classification from a JPEG table
trains past chance and, in-process, exactly as the worker path does; a resumed run matches a straight one; a
WebDataset stream with a corrupt JPEG skips and counts it or names it; contrastive pretraining from JPEG tar shards
gives the worker path's run, and so does MAE pretraining from a JPEG manifest."""
import json
import os

import pytest

from mm_ptft.config import ConfigError
from mm_ptft.data.generated import generate
from mm_ptft.data.tables import DataError
from mm_ptft.run import load_config, train

from mm_fixtures import csv_to_tars, one_thread, resume_from_copy, same_weights  # noqa: F401  (one_thread: autouse)
from mm_paths import ROOT

IMAGE_TINY = os.path.join(ROOT, "recipes", "image_classification", "tiny.yaml")
CLIP_TINY = os.path.join(ROOT, "recipes", "pretrain_contrastive", "tiny.yaml")
LABELS = "data.labels=[circle,square,triangle,cross]"


@pytest.fixture(scope="module")
def jpeg_shapes(tmp_path_factory):
    """image_shapes as JPEG files + CSV tables, and the training images as 2 tar shards (+ a corrupt JPEG)."""
    import mm_ptft.data.generated.images  # noqa: F401  (registers image_shapes)

    root = tmp_path_factory.mktemp("jpg")
    files = generate({"name": "image_shapes", "n_train": 320, "n_eval": 80, "size": 32, "seed": 0,
                      "image_format": "jpg"}, str(root))
    csv_to_tars(files["train_file"], root, [slice(0, 200), slice(200, None)],
                lambda read, r: {"jpg": read(r["path"]), "cls": r["label"]},
                [{"__key__": "corrupt", "jpg": b"\xff\xd8\xff broken", "cls": "circle"}])
    return {**files, "tars": str(root / "train-{0..1}.tar")}


def image_cfg(tmp_path, files, *extra, name="run"):
    return load_config(IMAGE_TINY, [f"output_dir={tmp_path / name}", "train.report=false", "data.generate=null",
                                    f"data.train_file={files['train_file']}", f"data.eval_file={files['eval_file']}",
                                    "train.report_to=[jsonl]", *extra])


def test_image_classification_on_the_device_trains_as_the_worker_path_does(tmp_path, jpeg_shapes):
    """In-process (no loader workers) both paths decode with libjpeg-turbo and draw the same augmentations in the
    same order, so the runs agree to float rounding; and the run beats chance."""
    steps = ["train.max_steps=40", "train.eval_every=40", "model.ema_decay=0.0"]
    device = train(image_cfg(tmp_path, jpeg_shapes, "data.decode_on=device", *steps, name="device"))
    worker = train(image_cfg(tmp_path, jpeg_shapes, *steps, name="worker"))
    assert device["accuracy"] > 0.4, device  # 4 shapes: chance 0.25
    assert device["accuracy"] == worker["accuracy"] and abs(device["loss"] - worker["loss"]) < 1e-5


def test_resume_on_the_device_path_matches_a_straight_run(tmp_path, jpeg_shapes):
    common = ["data.decode_on=device", "train.max_steps=8", "train.save_every=4", "train.eval_every=100",
              "train.num_workers=2", "train.keep_last=5", "model.ema_decay=0.0"]
    train(image_cfg(tmp_path, jpeg_shapes, *common, name="straight"))
    resume_from_copy(tmp_path / "straight", tmp_path / "resumed", 4)
    train(image_cfg(tmp_path, jpeg_shapes, *common, "train.resume=true", name="resumed"))
    assert same_weights(tmp_path / "straight", tmp_path / "resumed", 8)


def test_a_jpeg_tar_stream_with_a_corrupt_sample_is_skipped_and_counted_or_named(tmp_path, jpeg_shapes):
    stream = ["data.streaming=true", "data.shuffle_block=64", f"data.train_file={jpeg_shapes['tars']}", LABELS,
              "data.decode_on=device", "train.log_every=5"]
    train(image_cfg(tmp_path, jpeg_shapes, *stream, "data.skip_bad_samples=true", "train.max_steps=12",
                    "train.num_workers=2"))
    logged = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("skipped_bad_image") == 1 for r in logged if r["kind"] == "data")
    with pytest.raises(DataError, match=r"train-1.tar: sample 'corrupt'"):
        train(image_cfg(tmp_path, jpeg_shapes, *stream, "train.max_steps=12", "train.batch_size=64", name="strict"))


def test_an_unknown_decode_on_is_a_config_error_naming_the_key(tmp_path, jpeg_shapes):
    with pytest.raises(ConfigError, match="data.decode_on='gpu'"):
        train(image_cfg(tmp_path, jpeg_shapes, "data.decode_on=gpu", "train.max_steps=1"))


def test_contrastive_pretraining_from_jpeg_tar_shards_on_the_device(tmp_path):
    """A WebDataset stream (``shapes_captions_shards`` with JPEG members) through CLIP pretraining: the device path's
    run equals the worker path's (the paired pipeline has no random augmentation), and the loss falls."""
    gen = ("data.generate={name: shapes_captions_shards, shards: 2, n_train: 128, n_eval: 32, image_size: 32, "
           "image_format: jpg, seed: 0}")
    common = ["train.report=false", "train.report_to=[jsonl]", gen, "data.streaming=true", "data.shuffle_block=64",
              "train.max_steps=12", "train.batch_size=32", "train.log_every=4", LABELS]
    runs = {}
    for decode_on in ("device", "worker"):
        runs[decode_on] = train(load_config(CLIP_TINY, [f"output_dir={tmp_path / decode_on}", *common,
                                                        f"data.decode_on={decode_on}"]))
    assert runs["device"].keys() == runs["worker"].keys() and "loss" in runs["device"]
    assert all(abs(runs["device"][k] - runs["worker"][k]) < 1e-5 for k in runs["device"])
    logged = [json.loads(ln) for ln in (tmp_path / "device" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logged if r["kind"] == "train"]
    assert losses[-1] < losses[0]
    assert not any("host_decoded_images" in r for r in logged)  # every JPEG member was decoded by the device stage


def test_pretrain_joint_refuses_device_decoding(tmp_path):
    with pytest.raises(ConfigError, match="data.decode_on='device' is not supported by pretrain_joint"):
        train(load_config(os.path.join(ROOT, "recipes", "pretrain_joint", "tiny.yaml"),
                          [f"output_dir={tmp_path / 'j'}", "data.decode_on=device", "train.max_steps=1"]))


def test_masked_image_pretraining_on_the_device_equals_the_worker_path(tmp_path):
    """MAE over a paired manifest of JPEGs (map-style, no loader workers): the same run either way."""
    tiny = os.path.join(ROOT, "recipes", "pretrain_masked", "tiny.yaml")
    common = ["train.report=false", "train.report_to=[jsonl]", "train.max_steps=6", "train.batch_size=16",
              "data.generate={name: shapes_captions, n_train: 64, n_eval: 16, image_size: 32, image_format: jpg}",
              "data.modalities=[image]", "model.text=null",
              "model.image={name: tiny_vit, img_size: 32, patch_size: 8, dim: 32, depth: 1, heads: 2}",
              "model.objective={name: mae, patch_size: 8, decoder_dim: 16}"]
    runs = {d: train(load_config(tiny, [f"output_dir={tmp_path / d}", *common, f"data.decode_on={d}"]))
            for d in ("device", "worker")}
    assert "loss" in runs["device"] and abs(runs["device"]["loss"] - runs["worker"]["loss"]) < 1e-5, runs


def test_sized_workers_probe_the_device_stage_without_a_trace(tmp_path, jpeg_shapes):
    """``train.num_workers=auto`` times the device stage (decode + augmentation in the training process) with the
    step; its random draws there are put back, so the run equals the run with the count it chose."""
    common = ["data.decode_on=device", "train.max_steps=6", "train.eval_every=100", "model.ema_decay=0.0"]
    train(image_cfg(tmp_path, jpeg_shapes, *common, "train.num_workers=auto", name="auto"))
    events = [json.loads(line) for line in (tmp_path / "auto" / "metrics.jsonl").read_text().splitlines()]
    (chosen,) = [e for e in events if e["kind"] == "loader"]
    train(image_cfg(tmp_path, jpeg_shapes, *common, f"train.num_workers={chosen['num_workers']}", name="fixed"))
    assert same_weights(tmp_path / "auto", tmp_path / "fixed", 6)
