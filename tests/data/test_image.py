"""Image files: generated data, decoding and mode conversion, bad-file handling, tables and folders,
transforms (checked against hand-computed normalisation) and MixUp/CutMix soft labels."""
import csv
import os

import pytest
import torch
from PIL import Image

import mm_ptft.data.generated.images  # noqa: F401  (registers image_shapes)
from mm_ptft.data.generated import generate
from mm_ptft.data.image import (ImageAugment, ImageCollator, ImageDataset, batch_mix, classification_transforms,
                                image_table, load_image, scan_images)
from mm_ptft.data.tables import DataError
from mm_ptft.encoders.image import Preprocess


def test_image_shapes_generator_writes_decodable_pngs_with_relative_paths(tmp_path):
    paths = generate({"name": "image_shapes", "n_train": 12, "n_eval": 4, "size": 24, "seed": 3}, tmp_path)
    rows = list(csv.DictReader(open(paths["train_file"])))
    assert len(rows) == 12 and {r["label"] for r in rows} <= {"circle", "square", "triangle", "cross"}
    assert not os.path.isabs(rows[0]["path"])
    files, labels = image_table(paths["eval_file"], "data.eval_file", "path", "label")
    assert len(files) == 4 and all(os.path.isfile(f) for f in files)
    assert load_image(files[0]).size == (24, 24)


@pytest.mark.parametrize("mode,value,rgb", [("L", 100, (100, 100, 100)), ("RGBA", (10, 20, 30, 0), (255, 255, 255)),
                                            ("CMYK", (0, 0, 0, 0), (255, 255, 255)), ("I;16", 0, (0, 0, 0))])
def test_load_image_converts_every_mode_to_rgb(tmp_path, mode, value, rgb):
    """(A fully transparent pixel shows the white it is composited over, as in an image viewer.)"""
    path = str(tmp_path / ("x.tif" if mode in ("CMYK", "I;16") else "x.png"))
    Image.new(mode, (5, 4), value).save(path)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (5, 4) and img.getpixel((2, 2)) == rgb


@pytest.fixture
def bad_files(tmp_path):
    good = tmp_path / "good.png"
    Image.frombytes("RGB", (32, 32), os.urandom(32 * 32 * 3)).save(good)  # noise: a large pixel stream
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    names = ["good.png", "missing.png", "empty.png", "truncated.png", "text.png"]
    return [str(tmp_path / n) for n in names]


@pytest.mark.parametrize("bad", [1, 2, 3, 4])
def test_a_bad_file_is_an_error_naming_it(bad_files, bad):
    with pytest.raises(DataError, match=os.path.basename(bad_files[bad])):
        scan_images([bad_files[0], bad_files[bad]], "train.csv", skip_bad=False, counters={})


def test_bad_files_are_counted_skips_when_asked(bad_files):
    counters: dict = {}
    kept = scan_images(bad_files, "train.csv", skip_bad=True, counters=counters)
    assert kept == [0]
    assert counters == {"skipped_missing_images": 1, "skipped_empty_images": 1, "skipped_corrupt_images": 2}


def test_a_file_broken_after_the_scan_is_dropped_by_the_collator(bad_files):
    tf = classification_transforms(Preprocess.make(8), ImageAugment(), train=False)
    ds = ImageDataset(bad_files[:2], [0, 1], tf, skip_bad=True)
    batch = ImageCollator()([ds[0], ds[1]])
    assert batch["image"].shape == (1, 3, 8, 8) and batch["labels"].tolist() == [0]
    with pytest.raises(DataError, match="missing.png"):
        ImageDataset(bad_files[:2], [0, 1], tf, skip_bad=False)[1]


def test_table_paths_are_relative_to_the_table_and_folders_give_class_labels(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    (tmp_path / "t.jsonl").write_text('{"file": "imgs/cat/0.png", "y": "cat"}\n{"file": "imgs/dog/1.png", "y": "dog"}\n')
    files, labels = image_table(str(tmp_path / "t.jsonl"), "data.train_file", "file", "y")
    assert files == [str(tmp_path / "imgs/cat/0.png"), str(tmp_path / "imgs/dog/1.png")] and labels == ["cat", "dog"]
    files, labels = image_table(str(tmp_path / "imgs"), "data.train_file", "path", "label")
    assert sorted(zip((os.path.relpath(f, tmp_path) for f in files), labels)) == [
        ("imgs/cat/0.png", "cat"), ("imgs/cat/1.png", "cat"), ("imgs/dog/0.png", "dog"), ("imgs/dog/1.png", "dog")]
    with pytest.raises(DataError, match="missing column"):
        image_table(str(tmp_path / "t.jsonl"), "data.train_file", "path", "y")


def test_eval_transform_resizes_crops_and_normalises_like_a_hand_computation():
    pre = Preprocess.make(16, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5), crop_pct=0.5)
    img = Image.new("RGB", (40, 20), (51, 102, 204))  # constant colour: resizing cannot change it
    out = classification_transforms(pre, ImageAugment(), train=False)(img)
    assert out.shape == (3, 16, 16)
    expected = torch.tensor([(51 / 255 - 0.5) / 0.2, (102 / 255 - 0.4) / 0.25, (204 / 255 - 0.3) / 0.5])
    torch.testing.assert_close(out.mean((1, 2)), expected, atol=1e-5, rtol=0)


def test_train_transform_with_augmentations_keeps_the_shape():
    aug = ImageAugment(auto_augment="randaugment", color_jitter=0.3, random_erasing=0.5, scale=[0.5, 1.0])
    out = classification_transforms(Preprocess.make(24), aug, train=True)(Image.new("RGB", (50, 30), (1, 2, 3)))
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32
    with pytest.raises(ValueError, match="auto_augment"):
        classification_transforms(Preprocess.make(24), ImageAugment(auto_augment="rand"), train=True)


@pytest.mark.parametrize("mixup,cutmix", [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixup_cutmix_give_soft_labels_that_are_convex_mixes(mixup, cutmix):
    torch.manual_seed(0)
    mix = batch_mix(ImageAugment(mixup_alpha=mixup, cutmix_alpha=cutmix), num_classes=5)
    images, labels = torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4, 1])  # neighbours differ
    mixed, soft = mix(images, labels)
    assert mixed.shape == images.shape and soft.shape == (6, 5)
    torch.testing.assert_close(soft.sum(1), torch.ones(6))
    # each row mixes the sample's own class with its batch neighbour's (torchvision rolls by one)
    own = soft[torch.arange(6), labels]
    other = soft[torch.arange(6), labels.roll(1)]
    torch.testing.assert_close(own + other, torch.ones(6))
    assert batch_mix(ImageAugment(), 5) is None
