"""Hostile COCO files: each field of the instances spec violated once. A structural violation is a
DataError naming the file and the offending entry (``images[i]``, ``annotations[i]``, ``categories[i]``
with its id); box problems follow the documented policy (clipped / dropped and counted); valid but unusual
files (no annotations, crowd boxes, category id 0) give the right records."""
from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from mm_ptft.data.coco import coco_records, read_coco
from mm_ptft.data.tables import DataError


def base():
    return {"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
                       {"id": 2, "file_name": "b.png", "width": 40, "height": 30}],
            "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
            "annotations": [{"id": 10, "image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 8], "iscrowd": 0},
                            {"id": 11, "image_id": 2, "category_id": 7, "bbox": [5, 5, 4, 4], "iscrowd": 0}]}


def records(tmp_path, data, counters=None):
    for name in ("a.png", "b.png"):
        if not (tmp_path / name).exists():
            Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / name)
    path = tmp_path / "train.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    coco = read_coco(str(path), "data.train_file")
    label_of = {c["id"]: i + 1 for i, c in enumerate(sorted(coco.cats.values(), key=lambda c: c["id"]))}
    return coco_records(coco, str(path), "", label_of, counters if counters is not None else {}, False, True)


def edit(path, value):
    """A copy of ``base()`` with ``path`` (keys/indices) set to ``value`` (``DELETE``: removed)."""
    data = copy.deepcopy(base())
    *parents, leaf = path
    node = data
    for k in parents:
        node = node[k]
    if value is DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return data


DELETE = object()
# id: (edit path, value, message pattern after "train.json: ")
ERRORS = {
    "missing-images": (("images",), DELETE, r"missing top-level 'images'"),
    "missing-annotations": (("annotations",), DELETE, r"missing top-level 'annotations'"),
    "missing-categories": (("categories",), DELETE, r"missing top-level 'categories'"),
    "images-not-a-list": (("images",), {"id": 1}, r"top-level 'images' must be a list"),
    "image-without-file_name": (("images", 1, "file_name"), DELETE, r"images\[1\] \(id 2\): 'file_name'"),
    "image-empty-file_name": (("images", 1, "file_name"), "", r"images\[1\] \(id 2\): 'file_name'"),
    "image-without-id": (("images", 1, "id"), DELETE, r"images\[1\]: 'id' must be an integer"),
    "image-duplicate-id": (("images", 1, "id"), 1, r"images\[1\]: duplicate image id 1"),
    "image-string-id": (("images", 0, "id"), "1", r"images\[0\]: 'id' must be an integer, got '1'"),
    "image-zero-width": (("images", 0, "width"), 0, r"images\[0\] \(id 1\): 'width' must be a positive integer"),
    "image-not-an-object": (("images", 0), "a.png", r"images\[0\] is not an object"),
    "annotation-unknown-image_id": (("annotations", 1, "image_id"), 99,
                                    r"annotations\[1\] \(id 11\): image_id 99 is not among"),
    "annotation-unknown-category_id": (("annotations", 1, "category_id"), 5,
                                       r"annotations\[1\] \(id 11\): category_id 5 is not among"),
    "annotation-string-category_id": (("annotations", 0, "category_id"), "3", r"annotations\[0\] \(id 10\): category_id '3'"),
    "annotation-without-id": (("annotations", 0, "id"), DELETE, r"annotations\[0\]: 'id' must be an integer"),
    "annotation-duplicate-id": (("annotations", 1, "id"), 10, r"annotations\[1\]: duplicate annotation id 10"),
    "bbox-three-numbers": (("annotations", 0, "bbox"), [1, 2, 3], r"annotations\[0\] \(id 10\): 'bbox' must be four"),
    "bbox-five-numbers": (("annotations", 0, "bbox"), [1, 2, 3, 4, 5], r"annotations\[0\] \(id 10\): 'bbox' must be four"),
    "bbox-missing": (("annotations", 0, "bbox"), DELETE, r"annotations\[0\] \(id 10\): 'bbox' must be four"),
    "bbox-strings": (("annotations", 0, "bbox"), ["1", "2", "3", "4"], r"annotations\[0\] \(id 10\): 'bbox' must be four numbers"),
    "iscrowd-2": (("annotations", 0, "iscrowd"), 2, r"annotations\[0\] \(id 10\): 'iscrowd' must be 0 or 1"),
    "category-duplicate-id": (("categories", 1, "id"), 3, r"categories\[1\]: duplicate category id 3"),
    "category-string-id": (("categories", 0, "id"), "cat", r"categories\[0\]: 'id' must be an integer"),
    "category-without-name": (("categories", 0, "name"), DELETE, r"categories\[0\] \(id 3\): 'name'"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_spec_violation_is_an_error_naming_file_and_entry(tmp_path, case):
    path, value, message = ERRORS[case]
    with pytest.raises(DataError, match=rf"train\.json: {message}"):
        records(tmp_path, edit(path, value))


@pytest.mark.parametrize("text", ["", "{\"images\": [", "[1, 2, 3]", "\xff\xfe garbage"],
                         ids=["empty-file", "truncated-json", "top-level-list", "not-utf8"])
def test_not_a_coco_json_is_an_error_naming_the_file(tmp_path, text):
    with pytest.raises(DataError, match=r"data\.train_file=.*train\.json: not a COCO instances JSON"):
        records(tmp_path, text)


# Box policy (module docstring of mm_ptft.data.coco): id: (bbox, kept xyxy box or None, counters)
BOXES = {
    "inside": ([1, 2, 10, 8], [1, 2, 11, 10], {}),
    "reaching-outside-is-clipped": ([35, 25, 10, 10], [35, 25, 40, 30], {"clipped_boxes": 1}),
    "negative-origin-is-clipped": ([-5, -5, 10, 10], [0, 0, 5, 5], {"clipped_boxes": 1}),
    "wholly-outside-is-dropped": ([50, 50, 5, 5], None, {"dropped_degenerate_boxes": 1}),
    "zero-width-is-dropped": ([1, 2, 0, 8], None, {"dropped_degenerate_boxes": 1}),
    "negative-height-is-dropped": ([1, 20, 5, -8], None, {"dropped_degenerate_boxes": 1}),
    "nan-is-dropped": ([float("nan"), 2, 5, 5], None, {"dropped_degenerate_boxes": 1}),
    "inf-is-dropped": ([1, 2, float("inf"), 5], None, {"dropped_degenerate_boxes": 1}),
}


@pytest.mark.parametrize("case", sorted(BOXES))
def test_box_policy(tmp_path, case):
    bbox, kept, counts = BOXES[case]
    counters: dict[str, int] = {}
    rec = records(tmp_path, edit(("annotations", 0, "bbox"), bbox), counters)[0]
    assert rec.boxes == ([kept] if kept else []) and counters == counts


def test_no_annotations_keeps_every_image_as_a_negative(tmp_path):
    recs = records(tmp_path, edit(("annotations",), []))
    assert [(r.image_id, r.boxes) for r in recs] == [(1, []), (2, [])]


def test_crowd_annotation_is_kept_and_flagged(tmp_path):
    recs = records(tmp_path, edit(("annotations", 0, "iscrowd"), 1))
    assert recs[0].iscrowd == [1] and recs[1].iscrowd == [0]


def test_category_id_0_is_an_ordinary_class_not_background(tmp_path):
    data = edit(("categories", 0, "id"), 0)
    data["annotations"][0]["category_id"] = 0
    recs = records(tmp_path, data)
    assert recs[0].labels == [1] and recs[1].labels == [2]  # labels 1..K; 0 stays the detector's background


@pytest.mark.parametrize("labels,ids", [(["cat", "dog"], [3]), (["cat", "dog"], [3, 3])], ids=["lengths", "duplicates"])
def test_listed_labels_and_category_ids_must_pair_up(tmp_path, labels, ids):
    from mm_ptft.config import ConfigError
    from mm_ptft.tasks.detection import _categories

    cfg = SimpleNamespace(data=SimpleNamespace(labels=labels, category_ids=ids))
    with pytest.raises(ConfigError, match=r"data\.labels .* data\.category_ids"):
        _categories(cfg, None, "train.json")


def test_unverified_corrupt_image_is_named_or_counted(tmp_path):
    """With data.verify_images=false the size check still opens the file: a corrupt one is named, not a raw
    PIL error, and skip_bad counts it."""
    records(tmp_path, base())  # writes the images and train.json
    (tmp_path / "b.png").write_text("not an image")
    coco = read_coco(str(tmp_path / "train.json"), "data.train_file")
    with pytest.raises(DataError, match=r"train\.json: image id 2: corrupt .*b\.png"):
        coco_records(coco, str(tmp_path / "train.json"), "", {3: 1, 7: 2}, {}, False, False)
    counters: dict[str, int] = {}
    recs = coco_records(coco, str(tmp_path / "train.json"), "", {3: 1, 7: 2}, counters, True, False)
    assert [r.image_id for r in recs] == [1] and counters == {"skipped_corrupt_images": 1}
