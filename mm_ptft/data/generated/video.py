"""Generated video clips (real mp4 files written with PyAV) for the tiny video recipe and tests.

``moving_shapes``: a bright shape slides across a static noisy background in one of four directions and wraps
around the edges (a torus), starting anywhere. Every position is then equally likely in every class, so a single
frame says nothing about the label: only the order of frames does. Deterministic by ``seed``.

``moving_captions``: the same clips, each with a caption that names its shape, colour and direction ("a red
circle moving left"), as a paired manifest (``caption,video,label``) for video–text pretraining: a caption's
direction is matched only by a model that sees motion."""
from __future__ import annotations

import os
import random
from fractions import Fraction
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from mm_ptft.data.generated import GENERATORS, write_csv

#: class → (dx, dy) unit motion per frame (image axes: y grows downwards)
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
#: caption colour name → RGB of the shape (moving_captions)
COLOURS = {"red": (230, 40, 40), "green": (40, 210, 60), "blue": (50, 90, 240), "yellow": (235, 220, 40)}
SHAPES = ("circle", "square")
#: container extension → (codec, pixel format) that PyAV's bundled FFmpeg writes
CODECS = {".mp4": ("libx264", "yuv420p"), ".webm": ("libvpx-vp9", "yuv420p"), ".mkv": ("ffv1", "yuv444p"),
          ".avi": ("mpeg4", "yuv420p")}


def write_video(path: str, frames: np.ndarray, fps: int = 10, rotation: int = 0,
                pts: Optional[Sequence[int]] = None, codec: Optional[str] = None, pix_fmt: Optional[str] = None) -> str:
    """Encode ``frames`` (T, H, W, 3) uint8 RGB into ``path`` (the codec from its extension, ``CODECS``);
    ``rotation`` is a display-matrix rotation (counter-clockwise degrees), ``pts`` frame times in 1/``fps``/100 s
    ticks (a variable frame rate) instead of one frame per 1/``fps`` s."""
    import av

    default_codec, default_pix = CODECS[os.path.splitext(path)[1].lower()]
    with av.open(path, "w") as container:
        stream = container.add_stream(codec or default_codec, rate=fps)
        stream.height, stream.width = int(frames.shape[1]), int(frames.shape[2])
        stream.pix_fmt = pix_fmt or default_pix
        if pts is not None:
            stream.codec_context.time_base = Fraction(1, fps * 100)
        if rotation:
            stream.set_display_rotation(rotation)
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = int(pts[i]), Fraction(1, fps * 100)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def moving_clip(rng: random.Random, direction: str, size: int, frames: int, speed: float,
                shape_kind: Optional[str] = None, rgb: Optional[Sequence[int]] = None) -> np.ndarray:
    """(T, H, W, 3) uint8: a shape (``shape_kind`` circle|square, else drawn at random) of colour ``rgb`` (else a
    random bright one) and random size moving ``direction`` at ``speed`` px/frame, wrapping around the edges."""
    np_rng = np.random.default_rng(rng.randrange(2 ** 32))
    side = max(2, size // 4)
    small = np_rng.integers(0, 70, (side, side, 3), dtype=np.uint8)
    background = np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BILINEAR))  # (H, W, 3)
    layer = Image.new("L", (size, size), 0)
    s = rng.uniform(0.25, 0.4) * size
    box = (size / 2 - s / 2, size / 2 - s / 2, size / 2 + s / 2, size / 2 + s / 2)
    circle = rng.random() < 0.5 if shape_kind is None else shape_kind == "circle"
    (ImageDraw.Draw(layer).ellipse if circle else ImageDraw.Draw(layer).rectangle)(box, fill=255)
    shape = np.asarray(layer) > 127  # (H, W)
    colour = np.array(rgb if rgb is not None else [rng.randrange(150, 256) for _ in range(3)], dtype=np.uint8)
    x0, y0 = rng.randrange(size), rng.randrange(size)
    dx, dy = DIRECTIONS[direction]
    clip = np.empty((frames, size, size, 3), dtype=np.uint8)
    for t in range(frames):
        here = np.roll(shape, (y0 + round(dy * speed * t), x0 + round(dx * speed * t)), axis=(0, 1))  # (H, W)
        clip[t] = np.where(here[..., None], colour, background)
    return clip


def clip_splits(out_dir: str, sizes: dict[str, int], video_format: str, fps: int, header: Sequence[str],
                sample: Callable[[random.Random, int], tuple[np.ndarray, tuple]], seed: int) -> dict[str, str]:
    """Per split, ``sizes[split]`` clips from ``sample(rng, i)`` → (frames, row) written as ``<split>/<i>.<ext>``
    and a CSV table of ``header`` whose rows are ``row`` with the clip's relative path in place of None."""
    ext = f".{video_format.lstrip('.')}"
    if ext not in CODECS:
        raise ValueError(f"data.generate.video_format={video_format!r}: one of {[e[1:] for e in CODECS]}")
    rng, paths = random.Random(seed), {}
    for split, n in sizes.items():
        os.makedirs(os.path.join(out_dir, split), exist_ok=True)
        rows = []
        for i in range(n):
            clip, row = sample(rng, i)
            rel = f"{split}/{i:05d}{ext}"
            write_video(os.path.join(out_dir, rel), clip, fps)
            rows.append(tuple(rel if v is None else v for v in row))
        rng.shuffle(rows)
        paths[f"{split}_file"] = write_csv(out_dir, split, header, rows)
    return paths


@GENERATORS.register()
def moving_shapes(out_dir: str, n_train: int = 320, n_eval: int = 80, size: int = 32, frames: int = 16,
                  speed: float = 2.0, fps: int = 10, classes: Sequence[str] = tuple(DIRECTIONS), seed: int = 0,
                  video_format: str = "mp4") -> dict[str, str]:
    """Clips of one moving shape, labelled by its motion direction, as ``video_format`` files (mp4: H.264) with
    CSV ``path,label`` tables (relative paths) per split."""
    unknown = [c for c in classes if c not in DIRECTIONS]
    if unknown:
        raise ValueError(f"data.generate.classes: unknown direction(s) {unknown}; known: {list(DIRECTIONS)}")

    def sample(rng: random.Random, i: int) -> tuple[np.ndarray, tuple]:
        label = classes[i % len(classes)]  # balanced: chance is exactly 1 / len(classes)
        return moving_clip(rng, label, size, frames, speed), (None, label)

    return clip_splits(out_dir, {"train": n_train, "eval": n_eval}, video_format, fps, ["path", "label"], sample, seed)


@GENERATORS.register()
def moving_captions(out_dir: str, n_train: int = 320, n_eval: int = 80, size: int = 32, frames: int = 16,
                    speed: float = 2.0, fps: int = 10, seed: int = 0, video_format: str = "mp4") -> dict[str, str]:
    """``moving_shapes`` clips of a named shape and colour, each with its caption ("a red circle moving left"):
    CSV ``caption,video,label`` manifests (label = the direction) per split."""
    names = list(DIRECTIONS)

    def sample(rng: random.Random, i: int) -> tuple[np.ndarray, tuple]:
        direction, colour, kind = names[i % len(names)], rng.choice(list(COLOURS)), rng.choice(SHAPES)
        clip = moving_clip(rng, direction, size, frames, speed, kind, COLOURS[colour])
        return clip, (f"a {colour} {kind} moving {direction}", None, direction)

    return clip_splits(out_dir, {"train": n_train, "eval": n_eval}, video_format, fps, ["caption", "video", "label"],
                       sample, seed)
