"""Generated video clips (real mp4 files written with PyAV) for the tiny video recipe and tests.

``moving_shapes``: a bright shape slides across a static noisy background in one of four directions and wraps
around the edges (a torus), starting anywhere. Every position is then equally likely in every class, so a single
frame says nothing about the label: only the order of frames does. Deterministic by ``seed``."""
from __future__ import annotations

import os
import random
from fractions import Fraction
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from mm_ptft.data.generated import GENERATORS, write_csv

#: class → (dx, dy) unit motion per frame (image axes: y grows downwards)
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
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


def moving_clip(rng: random.Random, direction: str, size: int, frames: int, speed: float) -> np.ndarray:
    """(T, H, W, 3) uint8: a shape of random colour and size moving ``direction`` at ``speed`` px/frame, wrapping."""
    np_rng = np.random.default_rng(rng.randrange(2 ** 32))
    side = max(2, size // 4)
    small = np_rng.integers(0, 70, (side, side, 3), dtype=np.uint8)
    background = np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BILINEAR))  # (H, W, 3)
    layer = Image.new("L", (size, size), 0)
    s = rng.uniform(0.25, 0.4) * size
    box = (size / 2 - s / 2, size / 2 - s / 2, size / 2 + s / 2, size / 2 + s / 2)
    (ImageDraw.Draw(layer).ellipse if rng.random() < 0.5 else ImageDraw.Draw(layer).rectangle)(box, fill=255)
    shape = np.asarray(layer) > 127  # (H, W)
    colour = np.array([rng.randrange(150, 256) for _ in range(3)], dtype=np.uint8)
    x0, y0 = rng.randrange(size), rng.randrange(size)
    dx, dy = DIRECTIONS[direction]
    clip = np.empty((frames, size, size, 3), dtype=np.uint8)
    for t in range(frames):
        here = np.roll(shape, (y0 + round(dy * speed * t), x0 + round(dx * speed * t)), axis=(0, 1))  # (H, W)
        clip[t] = np.where(here[..., None], colour, background)
    return clip


@GENERATORS.register()
def moving_shapes(out_dir: str, n_train: int = 320, n_eval: int = 80, size: int = 32, frames: int = 16,
                  speed: float = 2.0, fps: int = 10, classes: Sequence[str] = tuple(DIRECTIONS), seed: int = 0,
                  video_format: str = "mp4") -> dict[str, str]:
    """Clips of one moving shape, labelled by its motion direction, as ``video_format`` files (mp4: H.264) with
    CSV ``path,label`` tables (relative paths) per split."""
    unknown = [c for c in classes if c not in DIRECTIONS]
    if unknown:
        raise ValueError(f"data.generate.classes: unknown direction(s) {unknown}; known: {list(DIRECTIONS)}")
    ext = f".{video_format.lstrip('.')}"
    if ext not in CODECS:
        raise ValueError(f"data.generate.video_format={video_format!r}: one of {[e[1:] for e in CODECS]}")
    rng = random.Random(seed)
    paths = {}
    for split, n in (("train", n_train), ("eval", n_eval)):
        os.makedirs(os.path.join(out_dir, split), exist_ok=True)
        rows = []
        for i in range(n):
            label = classes[i % len(classes)]  # balanced: chance is exactly 1 / len(classes)
            rel = f"{split}/{i:05d}{ext}"
            write_video(os.path.join(out_dir, rel), moving_clip(rng, label, size, frames, speed), fps)
            rows.append((rel, label))
        rng.shuffle(rows)
        paths[f"{split}_file"] = write_csv(out_dir, split, ["path", "label"], rows)
    return paths
