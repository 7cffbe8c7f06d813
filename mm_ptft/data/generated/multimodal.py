"""A generated paired multimodal dataset: coloured shapes as PNG, a caption, a tone as WAV, a label.

Every sample has three attributes — shape, colour, size — and each modality encodes them:
the image draws the shape in the colour at the size (on a noisy background, at a random place);
the caption says them in varied words; the audio clip plays a tone whose timbre is the shape
(sine/square/sawtooth/triangle wave), whose pitch is the colour and whose loudness is the size.
So image, text and audio of one sample match, and retrieval between any two is learnable.
The class label is the shape. Deterministic by seed; written as ordinary files plus a JSONL
manifest (columns: image, audio, caption, label, shape, color, size; media paths relative to it).
"""
from __future__ import annotations

import json
import math
import os
import random
from typing import Any

import numpy as np

from mm_ptft.data.generated import GENERATORS

SHAPES = ["circle", "square", "triangle", "cross"]
COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 220), "yellow": (230, 210, 40)}
PITCH = {"red": 220.0, "green": 330.0, "blue": 495.0, "yellow": 660.0}  # Hz
SIZES = {"small": 0.28, "large": 0.5}  # fraction of the image side
TEMPLATES = ["a {size} {color} {shape}", "a picture of a {size} {color} {shape}", "there is a {color} {shape} , {size}",
             "{size} {shape} in {color}", "the {shape} is {color} and {size}", "a {color} {shape} that is {size}"]


def _draw(rng: random.Random, shape: str, color: str, size: str, side: int):
    """The shape drawn on a noisy grey background (PIL image, RGB, side x side)."""
    from PIL import Image, ImageDraw

    noise = np.random.default_rng(rng.randrange(2**31)).integers(90, 150, (side, side, 3), dtype=np.uint8)
    img = Image.fromarray(noise, "RGB")
    d = ImageDraw.Draw(img)
    r = SIZES[size] * side / 2 * rng.uniform(0.85, 1.15)
    cx, cy = rng.uniform(r, side - r), rng.uniform(r, side - r)
    fill = tuple(int(np.clip(c + rng.randint(-25, 25), 0, 255)) for c in COLORS[color])
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:  # cross
        w = r / 2.5
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    return img


def _tone(rng: random.Random, shape: str, color: str, size: str, sample_rate: int, seconds: float) -> np.ndarray:
    """A tone: timbre = shape, pitch = colour, loudness = size; random length jitter and noise."""
    n = int(sample_rate * seconds * rng.uniform(0.75, 1.0))
    t = np.arange(n) / sample_rate
    phase = 2 * math.pi * PITCH[color] * rng.uniform(0.97, 1.03) * t + rng.uniform(0, 2 * math.pi)
    wave = {"circle": np.sin(phase), "square": np.sign(np.sin(phase)),
            "triangle": 2 / math.pi * np.arcsin(np.sin(phase)),
            "cross": 2 * ((phase / (2 * math.pi)) % 1.0) - 1}[shape]
    amp = 0.6 if size == "large" else 0.2
    noise = np.random.default_rng(rng.randrange(2**31)).normal(0, 0.02, n)
    return (amp * wave + noise).astype(np.float32)


def _caption(rng: random.Random, shape: str, color: str, size: str) -> str:
    return rng.choice(TEMPLATES).format(shape=shape, color=color, size=size)


def _write_split(out_dir: str, split: str, n: int, rng: random.Random, image_size: int, sample_rate: int,
                 seconds: float, image_format: str = "png") -> str:
    import soundfile as sf

    media = os.path.join(out_dir, split)
    os.makedirs(media, exist_ok=True)
    path = os.path.join(out_dir, f"{split}.jsonl")
    with open(path, "w") as f:
        for i in range(n):
            shape, color, size = rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(list(SIZES))
            image, audio = f"{split}/{i:05d}.{image_format}", f"{split}/{i:05d}.wav"
            picture = _draw(rng, shape, color, size, image_size)
            picture.save(os.path.join(out_dir, image), **image_save_options(image_format))
            sf.write(os.path.join(out_dir, audio), _tone(rng, shape, color, size, sample_rate, seconds), sample_rate)
            row: dict[str, Any] = {"image": image, "audio": audio, "caption": _caption(rng, shape, color, size),
                                   "label": shape, "shape": shape, "color": color, "size": size}
            f.write(json.dumps(row) + "\n")
    return path


#: image file formats the generators write (``image_format``): PIL save options
IMAGE_FORMATS = {"png": {"format": "PNG"}, "jpg": {"format": "JPEG", "quality": 95}}


def image_save_options(image_format: str) -> dict[str, Any]:
    """PIL ``save`` options of a generator's ``image_format``; ValueError naming the key for an unknown one."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"data.generate.image_format={image_format!r}; choose one of {sorted(IMAGE_FORMATS)}")
    return IMAGE_FORMATS[image_format]


@GENERATORS.register()
def shapes_captions(out_dir: str, n_train: int = 600, n_eval: int = 200, image_size: int = 32,
                    sample_rate: int = 8000, seconds: float = 0.5, seed: int = 0,
                    image_format: str = "png") -> dict[str, str]:
    """Paired shapes: PNG (or ``image_format: jpg``) image + caption + WAV tone + shape label, as JSONL manifests."""
    image_save_options(image_format)  # checked before anything is written
    rng = random.Random(seed)
    return {f"{split}_file": _write_split(out_dir, split, n, rng, image_size, sample_rate, seconds, image_format)
            for split, n in (("train", n_train), ("eval", n_eval))}


@GENERATORS.register()
def shapes_captions_shards(out_dir: str, shards: int = 4, n_train: int = 600, n_eval: int = 200,
                           image_size: int = 32, sample_rate: int = 8000, seconds: float = 0.5,
                           seed: int = 0, image_format: str = "png") -> dict[str, str]:
    """``shapes_captions`` packed as WebDataset tar shards (``{key}.png|jpg/.wav/.txt/.cls``, the open_clip /
    img2dataset layout): ``train-{000000..N-1}.tar`` and ``eval-000000.tar`` (brace ranges)."""
    import webdataset as wds

    manifests = shapes_captions(out_dir, n_train, n_eval, image_size, sample_rate, seconds, seed, image_format)
    out: dict[str, str] = {}
    for split, n_shards in (("train", shards), ("eval", 1)):
        with open(manifests[f"{split}_file"]) as f:
            rows = [json.loads(line) for line in f]
        per = -(-len(rows) // n_shards)
        for k in range(n_shards):
            with wds.TarWriter(os.path.join(out_dir, f"{split}-{k:06d}.tar")) as sink:
                for i, row in enumerate(rows[k * per: (k + 1) * per], k * per):
                    sample = {"__key__": f"{split}{i:06d}", "txt": row["caption"], "cls": row["label"]}
                    for ext, col in ((image_format, "image"), ("wav", "audio")):
                        with open(os.path.join(out_dir, row[col]), "rb") as media:
                            sample[ext] = media.read()
                    sink.write(sample)
        last = f"{n_shards - 1:06d}"
        out[f"{split}_file"] = os.path.join(out_dir, f"{split}-{{000000..{last}}}.tar" if n_shards > 1
                                            else f"{split}-000000.tar")
    return out
