"""COCO detection data: box cleaning with counts, bad files, crowd boxes, and box-aware transforms
checked against hand-computed boxes (flip, resize, crop)."""
import json

import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

import mm_ptft.data.generated.images  # noqa: F401  (registers detection_shapes)
from mm_ptft.data.coco import (CocoDetection, DetectionAugment, clean_box, coco_records, detection_collate,
                               detection_transforms, read_coco)
from mm_ptft.data.generated import generate
from mm_ptft.data.tables import DataError


@pytest.mark.parametrize("xywh,expected,clipped", [
    ([10, 20, 30, 40], [10, 20, 40, 60], False),  # inside: xywh → xyxy
    ([-5, 90, 20, 30], [0, 90, 15, 100], True),  # crosses the left and bottom edges of a 50x100 image
    ([60, 10, 5, 5], None, False),  # entirely right of the image
    ([10, 10, 0, 5], None, False),  # zero width
    ([10, 10, -4, 5], None, False),  # negative width
    ([float("nan"), 1, 2, 3], None, False),
])
def test_clean_box(xywh, expected, clipped):
    box, was_clipped = clean_box(xywh, width=50, height=100)
    assert box == expected and was_clipped == clipped


def write_coco(tmp_path, anns, size=(50, 40), json_size=None, extra_images=()):
    (tmp_path / "img").mkdir(exist_ok=True)
    Image.new("RGB", size, (0, 0, 0)).save(tmp_path / "img" / "a.png")
    Image.new("RGB", size, (9, 9, 9)).save(tmp_path / "img" / "b.png")
    w, h = json_size or size
    images = [{"id": 1, "file_name": "img/a.png", "width": w, "height": h},
              {"id": 2, "file_name": "img/b.png", "width": w, "height": h}, *extra_images]
    cats = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    anns = [{"id": i + 1, "image_id": 1, "iscrowd": 0, **a} for i, a in enumerate(anns)]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return str(path)


def records(path, skip=False, counters=None):
    counters = {} if counters is None else counters
    return coco_records(read_coco(path, "data.train_file"), path, "", {3: 1, 7: 2}, counters, skip, True)


def test_records_clip_drop_count_and_keep_empty_images(tmp_path):
    path = write_coco(tmp_path, [{"category_id": 3, "bbox": [1, 2, 10, 10]},
                                 {"category_id": 7, "bbox": [45, 30, 20, 20]},  # clipped to [45,30,50,40]
                                 {"category_id": 7, "bbox": [60, 0, 5, 5]}])  # outside: dropped
    counters: dict = {}
    recs = records(path, counters=counters)
    assert [r.image_id for r in recs] == [1, 2]
    assert recs[0].boxes == [[1, 2, 11, 12], [45, 30, 50, 40]] and recs[0].labels == [1, 2]
    assert recs[1].boxes == [] and recs[0].path == str(tmp_path / "img" / "a.png")
    assert counters == {"clipped_boxes": 1, "dropped_degenerate_boxes": 1}


def test_unknown_category_and_bad_files_are_named(tmp_path):
    with pytest.raises(DataError, match="category_id 5"):
        records(write_coco(tmp_path, [{"category_id": 5, "bbox": [1, 2, 3, 4]}]))
    with pytest.raises(DataError, match=r"missized \(the JSON says 64x64, the file is 50x40\) image file .*a\.png"):
        records(write_coco(tmp_path, [], json_size=(64, 64)))
    missing = {"id": 9, "file_name": "img/gone.png", "width": 50, "height": 40}
    path = write_coco(tmp_path, [], extra_images=[missing])
    with pytest.raises(DataError, match="gone.png"):
        records(path)
    counters: dict = {}
    assert [r.image_id for r in records(path, skip=True, counters=counters)] == [1, 2]
    assert counters == {"skipped_missing_images": 1}
    with pytest.raises(DataError, match="COCO annotation file not found"):
        read_coco(str(tmp_path / "nope.json"), "data.eval_file")


def test_crowd_boxes_are_kept_for_evaluation_only(tmp_path):
    path = write_coco(tmp_path, [{"category_id": 3, "bbox": [1, 2, 10, 10]},
                                 {"category_id": 7, "bbox": [20, 20, 10, 10], "iscrowd": 1}])
    recs = records(path)
    train_item = CocoDetection(recs, detection_transforms(DetectionAugment(hflip=0)), train=True)[0]
    eval_item = CocoDetection(recs, detection_transforms(None), train=False)[0]
    assert train_item["targets"]["labels"].tolist() == [1]
    assert eval_item["targets"]["labels"].tolist() == [1, 2] and eval_item["targets"]["iscrowd"].tolist() == [0, 1]
    assert eval_item["image"].shape == (3, 40, 50) and eval_item["image"].dtype == torch.float32
    batch = detection_collate([eval_item, eval_item])
    assert list(batch) == ["image", "targets"] and len(batch["image"]) == 2  # image first: the batch size


def _target(boxes, size):
    h, w = size
    return {"boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes, dtype=torch.float32), format="XYXY",
                                              canvas_size=(h, w)),
            "labels": torch.arange(1, len(boxes) + 1), "iscrowd": torch.zeros(len(boxes), dtype=torch.int64)}


def test_flip_moves_boxes_to_mirrored_x():
    img = Image.new("RGB", (100, 60))
    _, t = detection_transforms(DetectionAugment(hflip=1.0))(img, _target([[10, 20, 30, 40], [0, 0, 100, 60]], (60, 100)))
    assert t["boxes"].tolist() == [[70, 20, 90, 40], [0, 0, 100, 60]]  # x' = W - x


def test_resize_scales_boxes_per_axis():
    img = Image.new("RGB", (100, 80))
    out, t = detection_transforms(DetectionAugment(hflip=0.0, resize=[40, 50]))(img, _target([[10, 20, 30, 40]], (80, 100)))
    assert out.shape == (3, 40, 50)
    torch.testing.assert_close(t["boxes"], torch.tensor([[5.0, 10.0, 15.0, 20.0]]))  # x * 50/100, y * 40/80


def test_iou_crop_shifts_clips_and_drops_boxes_like_a_hand_computation():
    """The image encodes each pixel's own (x, y) in its red/green channels, so the crop's offset can be
    read back from the output; boxes must then be: kept iff their centre is inside the crop, shifted
    by the offset, and clipped to the crop."""
    w, h = 120, 100
    xs, ys = torch.meshgrid(torch.arange(w), torch.arange(h), indexing="xy")
    pixels = torch.stack([xs, ys, torch.zeros_like(xs)], -1).to(torch.uint8).numpy()
    img = Image.fromarray(pixels)
    boxes = [[5, 5, 40, 30], [50, 40, 90, 95], [100, 0, 120, 20], [20, 60, 60, 100]]
    tf = detection_transforms(DetectionAugment(hflip=0.0, iou_crop=True))
    cropped_once = False
    for seed in range(8):
        torch.manual_seed(seed)
        out, t = tf(img, _target(boxes, (h, w)))
        left, top = int(round(float(out[0, 0, 0]) * 255)), int(round(float(out[1, 0, 0]) * 255))
        cw, ch = out.shape[2], out.shape[1]
        expected, labels = [], []
        for i, (x0, y0, x1, y1) in enumerate(boxes):
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            if left < cx < left + cw and top < cy < top + ch:
                expected.append([max(x0 - left, 0), max(y0 - top, 0), min(x1 - left, cw), min(y1 - top, ch)])
                labels.append(i + 1)
        assert t["labels"].tolist() == labels
        torch.testing.assert_close(t["boxes"], torch.tensor(expected, dtype=torch.float32).reshape(-1, 4))
        cropped_once |= (cw, ch) != (w, h)
    assert cropped_once


def test_detection_shapes_generator_writes_valid_coco(tmp_path):
    paths = generate({"name": "detection_shapes", "n_train": 6, "n_eval": 2, "size": 48, "seed": 1}, tmp_path)
    coco = read_coco(paths["train_file"], "data.train_file")
    assert len(coco.imgs) == 6 and sorted(c["name"] for c in coco.cats.values()) == ["circle", "square", "triangle"]
    counters: dict = {}
    recs = coco_records(coco, paths["train_file"], "", {1: 1, 2: 2, 3: 3}, counters, False, True)
    assert len(recs) == 6 and counters == {}  # every generated box lies inside its image
    assert all(0 <= b[0] < b[2] <= 48 and 0 <= b[1] < b[3] <= 48 for r in recs for b in r.boxes)
