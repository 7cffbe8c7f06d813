"""Detection data: COCO instances JSON (``file_name`` relative to the JSON's folder or ``data.image_root``),
box cleaning with counts, box-aware ``torchvision.transforms.v2`` augmentation, and a collator.

Boxes reaching outside the image are clipped; boxes with no area (zero, negative or NaN width/height, or
nothing left after clipping) are dropped; both are counted. Images without boxes are kept (they teach the
detector what background looks like). Crowd boxes (``iscrowd: 1``) are kept for evaluation only.

A file that breaks the COCO spec in its structure is an error naming the file and the offending entry
(``check_coco``): a missing ``images``/``annotations``/``categories`` list; an image without an integer
``id`` or a ``file_name``, or with a duplicate id; an annotation whose ``image_id`` or ``category_id`` is
unknown, whose ``bbox`` is not four numbers, or whose ``iscrowd`` is not 0/1; duplicate category or
annotation ids. Category ids are any integers (0 too): they map to labels 1..K in ``data.category_ids``
order."""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset

from mm_ptft.data.image import decoded_size, image_problem, load_image
from mm_ptft.data.tables import DataError
from mm_ptft.types import IMAGE, TARGETS


@dataclass
class DetectionAugment:
    """Box-aware training augmentation (evaluation uses the images as they are)."""

    RANGES: ClassVar[dict[str, str]] = {
        "hflip": "[0, 1]", "zoom_out": "[0, 1]", "photometric": "[0, 1]", "resize": ">0"
    }  # checked by config.parse
    hflip: float = 0.5  # probability of a horizontal flip
    iou_crop: bool = False  # SSD-style RandomIoUCrop (keeps crops that overlap objects)
    zoom_out: float = 0.0  # probability of RandomZoomOut (places the image on a larger canvas)
    photometric: float = 0.0  # probability of RandomPhotometricDistort
    resize: list[int] = field(default_factory=list)  # [H, W]: resize every image (e.g. to shrink large photos)


@dataclass
class CocoRecord:
    """One image and its cleaned annotations (boxes xyxy in pixels, labels 1..K)."""

    path: str
    image_id: int
    boxes: list[list[float]]
    labels: list[int]
    iscrowd: list[int]


def _add(counters: dict[str, int], key: str, n: int = 1) -> None:
    if n:
        counters[key] = counters.get(key, 0) + n


def read_coco(path: str, key: str):
    """A pycocotools ``COCO`` index of ``path`` (its load chatter suppressed), after ``check_coco``;
    DataError naming the file (and entry) when unusable."""
    from pycocotools.coco import COCO

    if not path or not os.path.isfile(path):
        raise DataError(f"{key}={path}: COCO annotation file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (ValueError, OSError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DataError(f"{key}={path}: not a COCO instances JSON ({type(err).__name__}: {err})") from None
    check_coco(data, f"{key}={path}")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_coco(data: Any, where: str) -> None:
    """The spec's structure (module docstring); a DataError naming ``where`` and the first offending entry."""
    if not isinstance(data, dict):
        raise DataError(f"{where}: not a COCO instances JSON (the top level is a {type(data).__name__}, not an object)")
    for part in ("images", "annotations", "categories"):
        if part not in data:
            raise DataError(f"{where}: missing top-level {part!r}")
        if not isinstance(data[part], list):
            raise DataError(f"{where}: top-level {part!r} must be a list, got {type(data[part]).__name__}")

    def ids(part: str, extra: Callable[[int, dict], Optional[str]]) -> set:
        kind = {"images": "image", "annotations": "annotation", "categories": "category"}[part]
        seen: set = set()
        for i, entry in enumerate(data[part]):
            name = f"{part}[{i}]"
            if not isinstance(entry, dict):
                raise DataError(f"{where}: {name} is not an object")
            if not _is_int(entry.get("id")):
                raise DataError(f"{where}: {name}: 'id' must be an integer, got {entry.get('id')!r}")
            if entry["id"] in seen:
                raise DataError(f"{where}: {name}: duplicate {kind} id {entry['id']}")
            seen.add(entry["id"])
            problem = extra(i, entry)
            if problem:
                raise DataError(f"{where}: {name} (id {entry['id']}): {problem}")
        return seen

    def image_problem_(i: int, im: dict) -> Optional[str]:
        if not isinstance(im.get("file_name"), str) or not im["file_name"].strip():
            return f"'file_name' must be a non-empty string, got {im.get('file_name')!r}"
        for side in ("width", "height"):
            if side in im and not (_is_int(im[side]) and im[side] > 0):
                return f"{side!r} must be a positive integer, got {im[side]!r}"
        return None

    image_ids = ids("images", image_problem_)
    category_ids = ids("categories", lambda i, c: None if isinstance(c.get("name"), str) and c["name"].strip()
                       else f"'name' must be a non-empty string, got {c.get('name')!r}")

    def annotation_problem(i: int, a: dict) -> Optional[str]:
        if a.get("image_id") not in image_ids or not _is_int(a.get("image_id")):
            return f"image_id {a.get('image_id')!r} is not among the images' ids"
        if a.get("category_id") not in category_ids or not _is_int(a.get("category_id")):
            return f"category_id {a.get('category_id')!r} is not among the categories' ids {sorted(category_ids)}"
        box = a.get("bbox")
        if not isinstance(box, list) or len(box) != 4 or not all(map(_is_number, box)):
            return f"'bbox' must be four numbers [x, y, width, height], got {box!r}"
        if a.get("iscrowd", 0) not in (0, 1) or isinstance(a.get("iscrowd"), bool):
            return f"'iscrowd' must be 0 or 1, got {a.get('iscrowd')!r}"
        return None

    ids("annotations", annotation_problem)


def clean_box(xywh: Sequence[float], width: float, height: float) -> tuple[Optional[list[float]], bool]:
    """COCO ``[x, y, w, h]`` → xyxy clipped to the image; (None, _) when nothing of it is left.
    The flag says whether clipping changed the box."""
    x, y, w, h = (float(v) for v in xywh)
    if not all(map(math.isfinite, (x, y, w, h))) or w <= 0 or h <= 0:
        return None, False
    box = [x, y, x + w, y + h]
    clipped = [min(max(box[0], 0.0), width), min(max(box[1], 0.0), height),
               min(max(box[2], 0.0), width), min(max(box[3], 0.0), height)]
    if clipped[2] - clipped[0] <= 0 or clipped[3] - clipped[1] <= 0:
        return None, False
    return clipped, clipped != box


def coco_records(coco: Any, path: str, image_root: str, label_of: dict[int, int], counters: dict[str, int],
                 skip_bad: bool, verify: bool) -> list[CocoRecord]:
    """Cleaned per-image records; bad image files raise (naming them) or are counted and skipped."""
    root = image_root or os.path.dirname(os.path.abspath(path))
    records = []
    for img_id in sorted(coco.imgs):
        info = coco.imgs[img_id]
        file = info["file_name"] if os.path.isabs(info["file_name"]) else os.path.join(root, info["file_name"])
        problem = image_problem(file, decode=verify) or _size_problem(file, info)
        if problem:
            if not skip_bad:
                raise DataError(f"{path}: image id {img_id}: {problem} image file {file} "
                                "(set data.skip_bad_samples=true to skip such images)")
            _add(counters, f"skipped_{problem.split(' ')[0]}_images")
            continue
        rec = CocoRecord(file, int(img_id), [], [], [])
        for ann in coco.imgToAnns.get(img_id, []):
            if ann["category_id"] not in label_of:
                raise DataError(f"{path}: annotation {ann.get('id')}: category_id {ann['category_id']} "
                                f"is not among the categories {sorted(label_of)}")
            box, was_clipped = clean_box(ann["bbox"], info["width"], info["height"])
            _add(counters, "clipped_boxes", int(was_clipped))
            if box is None:
                _add(counters, "dropped_degenerate_boxes")
                continue
            rec.boxes.append(box)
            rec.labels.append(label_of[ann["category_id"]])
            rec.iscrowd.append(int(ann.get("iscrowd", 0)))
        records.append(rec)
    return records


def _size_problem(file: str, info: dict[str, Any]) -> Optional[str]:
    """The JSON's width/height (filled from the file when absent) must match the file as ``load_image``
    gives it (EXIF orientation applied): boxes are in those pixel coordinates."""
    try:
        size = decoded_size(file)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:  # not verified (verify_images=false)
        return f"corrupt ({type(err).__name__}: {err})"
    info.setdefault("width", size[0])
    info.setdefault("height", size[1])
    if size != (info["width"], info["height"]):
        return f"missized (the JSON says {info['width']}x{info['height']}, the file is {size[0]}x{size[1]})"
    return None


def detection_transforms(aug: Optional[DetectionAugment]) -> Callable[..., Any]:
    """v2 pipeline over (image, target) that moves/clips/drops boxes with the pixels; None aug = eval."""
    from torchvision.transforms import v2

    ops: list[Any] = [v2.ToImage()]
    if aug is not None:
        ops += [v2.RandomPhotometricDistort(p=aug.photometric)] if aug.photometric > 0 else []
        ops += [v2.RandomZoomOut(fill=0, p=aug.zoom_out)] if aug.zoom_out > 0 else []
        ops += [v2.RandomIoUCrop()] if aug.iou_crop else []
        ops += [v2.RandomHorizontalFlip(aug.hflip)] if aug.hflip > 0 else []
        ops += [v2.Resize(list(aug.resize), antialias=True)] if aug.resize else []
    ops += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=_box_fields),
            v2.ToDtype(torch.float32, scale=True)]
    return v2.Compose(ops)


def _box_fields(inputs: tuple[Any, dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-box fields that SanitizeBoundingBoxes must filter together with the boxes."""
    target = inputs[1]
    return target["labels"], target["iscrowd"]


class CocoDetection(Dataset):
    """Decoded image (3, H, W) in [0, 1] and its target dict (``boxes`` xyxy, ``labels``, ``image_id``)."""

    def __init__(self, records: Sequence[CocoRecord], transform: Callable[..., Any], train: bool) -> None:
        self.records, self.transform, self.train = list(records), transform, train

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from torchvision import tv_tensors

        rec = self.records[i]
        img = load_image(rec.path)
        keep = [k for k, c in enumerate(rec.iscrowd) if not (self.train and c)]  # crowd boxes: eval only
        boxes = torch.tensor([rec.boxes[k] for k in keep], dtype=torch.float32).reshape(-1, 4)  # (N, 4)
        target = {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(img.height, img.width)),
                  "labels": torch.tensor([rec.labels[k] for k in keep], dtype=torch.int64),  # (N,)
                  "iscrowd": torch.tensor([rec.iscrowd[k] for k in keep], dtype=torch.int64)}
        image, target = self.transform(img, target)
        target = {"boxes": target["boxes"].as_subclass(torch.Tensor), "labels": target["labels"],
                  "iscrowd": target["iscrowd"], "image_id": torch.tensor(rec.image_id)}
        return {IMAGE: image.as_subclass(torch.Tensor), TARGETS: target}


def detection_collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Images stay a list (sizes differ; the detector resizes and pads); ``image`` first, as the trainer
    takes the batch size from the first value."""
    return {IMAGE: [it[IMAGE] for it in items], TARGETS: [it[TARGETS] for it in items]}
