"""Generated image datasets (PNG files + CSV / COCO JSON) for the tiny image recipes and tests.

Shapes are drawn with PIL on a noisy background, so the files go through exactly the same loading,
decoding and augmentation code as a user's own photos. Deterministic by ``seed``."""
from __future__ import annotations

import json
import os
import random
from typing import Callable, Sequence

from PIL import Image, ImageDraw

from mm_ptft.data.generated import GENERATORS, write_csv
from mm_ptft.data.generated.multimodal import image_save_options

SHAPES = ("circle", "square", "triangle", "cross")
Box = tuple[float, float, float, float]  # x0, y0, x1, y1


def _draw_circle(d: ImageDraw.ImageDraw, b: Box, fill: tuple[int, int, int]) -> None:
    d.ellipse(b, fill=fill)


def _draw_square(d: ImageDraw.ImageDraw, b: Box, fill: tuple[int, int, int]) -> None:
    d.rectangle(b, fill=fill)


def _draw_triangle(d: ImageDraw.ImageDraw, b: Box, fill: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = b
    d.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)


def _draw_cross(d: ImageDraw.ImageDraw, b: Box, fill: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = b
    tw, th = (x1 - x0) / 3, (y1 - y0) / 3
    d.rectangle((x0 + tw, y0, x1 - tw, y1), fill=fill)
    d.rectangle((x0, y0 + th, x1, y1 - th), fill=fill)


DRAW: dict[str, Callable[[ImageDraw.ImageDraw, Box, tuple[int, int, int]], None]] = {
    "circle": _draw_circle, "square": _draw_square, "triangle": _draw_triangle, "cross": _draw_cross}


def _canvas(rng: random.Random, size: int) -> Image.Image:
    """A dark, noisy background (random pixels, upscaled) so that shapes are not a pixel lookup."""
    side = size // 4
    small = Image.frombytes("RGB", (side, side), bytes(rng.randrange(0, 70) for _ in range(3 * side * side)))
    return small.resize((size, size), Image.Resampling.BILINEAR)


def _colour(rng: random.Random) -> tuple[int, int, int]:
    """A bright colour: high contrast against the dark background, but not class-specific."""
    return tuple(rng.randrange(150, 256) for _ in range(3))  # type: ignore[return-value]


def _box(rng: random.Random, size: int, lo: float, hi: float) -> Box:
    s = rng.uniform(lo, hi) * size
    x0, y0 = rng.uniform(0, size - s), rng.uniform(0, size - s)
    return (round(x0), round(y0), round(x0 + s), round(y0 + s))


@GENERATORS.register()
def image_shapes(out_dir: str, n_train: int = 400, n_eval: int = 100, size: int = 32,
                 classes: Sequence[str] = SHAPES, seed: int = 0, image_format: str = "png",
                 layout: str = "table") -> dict[str, str]:
    """One shape per image (random colour, size, position) as PNG (or ``image_format: jpg``); ``layout: table``:
    CSV ``path,label`` with relative paths; ``layout: folders``: no table, class sub-folders in split sub-folders
    (``train/<class>/``, ``val/<class>/``), the folder given as ``train_file``."""
    unknown = [c for c in classes if c not in DRAW]
    if unknown:
        raise ValueError(f"data.generate.classes: unknown shape(s) {unknown}; known: {list(DRAW)}")
    if layout not in ("table", "folders"):
        raise ValueError(f"data.generate.layout={layout!r}: choose table or folders")
    save_options = image_save_options(image_format)
    rng = random.Random(seed)
    paths = {}
    for split, n in (("train", n_train), ("eval", n_eval)):
        folder = "val" if split == "eval" and layout == "folders" else split
        rows = []
        for i in range(n):
            label = classes[rng.randrange(len(classes))]
            img = _canvas(rng, size)
            DRAW[label](ImageDraw.Draw(img), _box(rng, size, 0.45, 0.9), _colour(rng))
            rel = f"{folder}/{label + '/' if layout == 'folders' else ''}{i:05d}.{image_format}"
            os.makedirs(os.path.dirname(os.path.join(out_dir, rel)), exist_ok=True)
            img.save(os.path.join(out_dir, rel), **save_options)
            rows.append((rel, label))
        if layout == "table":
            paths[f"{split}_file"] = write_csv(out_dir, split, ["path", "label"], rows)
    return paths if layout == "table" else {"train_file": out_dir}


def _no_overlap(b: Box, others: list[Box], gap: float = 2) -> bool:
    return all(b[2] + gap <= o[0] or o[2] + gap <= b[0] or b[3] + gap <= o[1] or o[3] + gap <= b[1] for o in others)


def _detection_image(rng: random.Random, size: int, max_objects: int,
                     classes: Sequence[str]) -> tuple[Image.Image, list[tuple[str, Box]]]:
    """An image with 0..max_objects non-overlapping shapes and their (label, box) pairs."""
    img = _canvas(rng, size)
    draw, objects = ImageDraw.Draw(img), []
    for _ in range(rng.randint(0, max_objects)):
        for _try in range(20):
            b = _box(rng, size, 0.2, 0.4)
            if _no_overlap(b, [o[1] for o in objects]):
                label = classes[rng.randrange(len(classes))]
                DRAW[label](draw, b, _colour(rng))
                objects.append((label, b))
                break
    return img, objects


@GENERATORS.register()
def detection_shapes(out_dir: str, n_train: int = 300, n_eval: int = 60, size: int = 96, max_objects: int = 3,
                     classes: Sequence[str] = ("circle", "square", "triangle"), seed: int = 0) -> dict[str, str]:
    """Images with several boxed shapes (some with none); COCO instances JSON per split,
    ``file_name`` relative to the JSON's folder."""
    rng = random.Random(seed)
    cats = [{"id": i + 1, "name": c, "supercategory": "shape"} for i, c in enumerate(classes)]
    cat_id = {c["name"]: c["id"] for c in cats}
    paths = {}
    for split, n in (("train", n_train), ("eval", n_eval)):
        os.makedirs(os.path.join(out_dir, split), exist_ok=True)
        images, anns = [], []
        for i in range(n):
            img, objects = _detection_image(rng, size, max_objects, classes)
            rel = f"{split}/{i:05d}.png"
            img.save(os.path.join(out_dir, rel))
            images.append({"id": i + 1, "file_name": rel, "width": size, "height": size})
            for label, (x0, y0, x1, y1) in objects:
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat_id[label],
                             "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
        path = os.path.join(out_dir, f"{split}.json")
        with open(path, "w") as f:
            json.dump({"images": images, "annotations": anns, "categories": cats}, f)
        paths[f"{split}_file"] = path
    return paths
