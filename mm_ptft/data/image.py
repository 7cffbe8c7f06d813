"""Image data: tables or class folders of image files (via HF ``datasets``), PIL decoding with
bad-file handling, ``torchvision.transforms.v2`` pipelines built from config, and a collator.

Bad files (missing, zero-byte, unreadable, truncated, over PIL's decompression-bomb limit) are found
when the data is scanned: a ``DataError`` naming the file, or a counted skip with
``data.skip_bad_samples=true``.

Decoded pixels are what an image viewer shows, as 8-bit RGB (``to_rgb``): the EXIF orientation is
applied; transparency (RGBA, LA, PA, a palette or colour key) is composited over white, as
transformers' ``convert_to_rgb`` does; 16-bit integer images (``I;16*``, and 32-bit ``I``, read as
16-bit) are scaled to 8 bits by 255/65535; float images (``F``) are read as intensities in [0, 1];
every other mode (1, L, P, CMYK, YCbCr, ...) is PIL's ``convert("RGB")``. The file's content decides
its format, not its extension."""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, NamedTuple, Optional, Sequence

import torch
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from mm_ptft.features.image import eval_resize
from mm_ptft.data.folders import EXTS, FolderSpec, read_table
from mm_ptft.data.remote import local_media, media_file, resolve
from mm_ptft.data.tables import DataError, require_columns
from mm_ptft.types import IMAGE, LABELS

log = logging.getLogger(__name__)
IMAGE_EXTS = EXTS["image"]


@dataclass
class ImageAugment:
    """Training-time augmentation (evaluation always resizes and centre-crops)."""

    RANGES: ClassVar[dict[str, str]] = {
        "scale": "(0, 1]", "hflip": "[0, 1]", "randaugment_magnitude": ">=0", "color_jitter": ">=0",
        "random_erasing": "[0, 1]", "mixup_alpha": ">=0", "cutmix_alpha": ">=0"
    }  # checked by config.parse
    random_resized_crop: bool = True
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # RandomResizedCrop area range
    hflip: float = 0.5  # probability
    auto_augment: str = ""  # "" | randaugment | trivialaugment | augmix
    randaugment_magnitude: int = 9
    color_jitter: float = 0.0  # brightness/contrast/saturation strength; 0 disables
    random_erasing: float = 0.0  # probability
    mixup_alpha: float = 0.0  # 0 disables MixUp
    cutmix_alpha: float = 0.0  # 0 disables CutMix


def _add(counters: dict[str, int], key: str) -> None:
    counters[key] = counters.get(key, 0) + 1


# ---------------------------------------------------------------------------------------- decoding
EXIF_ORIENTATION = 0x0112
HIGH_DEPTH = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as a viewer shows it, in 8-bit RGB (the rules in this module's docstring)."""
    img = ImageOps.exif_transpose(img)
    if img.mode in HIGH_DEPTH:
        x = np.asarray(img, dtype=np.float64)  # (H, W)
        x = np.clip(x, 0, HIGH_DEPTH[img.mode]) * (255 / HIGH_DEPTH[img.mode])
        return Image.fromarray(np.round(x).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img.convert("RGB")


def decoded_size(path: str) -> tuple[int, int]:
    """(width, height) of ``path`` as ``load_image`` gives it (the EXIF orientation applied), from the header."""
    with Image.open(media_file(path)) as img:
        w, h = img.size
        return (h, w) if img.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8) else (w, h)


def load_image(path: str) -> Image.Image:
    """Decode ``path`` fully into the 8-bit RGB PIL image a viewer shows (``to_rgb``)."""
    try:
        with Image.open(media_file(path)) as img:
            img.load()  # decodes every pixel: truncated files fail here, not later in a worker
            return to_rgb(img)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except Image.DecompressionBombError as err:
        raise DataError(f"{path}: image too large to decode safely ({err})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise DataError(f"{path}: unreadable image ({type(err).__name__}: {err})") from None


def image_problem(path: str, decode: bool = True) -> Optional[str]:
    """Why ``path`` (a file or a URL: its local copy) cannot be used as an image (None when it can): missing, empty
    or undecodable."""
    path = local_media(path)
    if path is None or not os.path.isfile(path):
        return "missing"
    if os.path.getsize(path) == 0:
        return "empty"
    if decode:
        try:
            load_image(path)
        except DataError:
            return "corrupt"
    return None


def scan_images(paths: Sequence[str], where: str, skip_bad: bool, counters: dict[str, int],
                decode: bool = True, rows: Optional[Sequence[int]] = None) -> list[int]:
    """Indices of usable images; a bad one raises a ``DataError`` naming it and its row in the file
    (``rows[i]``, default ``i``), or is counted and skipped."""
    return [i for i, p in enumerate(paths)
            if check_image(rows[i] if rows is not None else i, p, where, skip_bad, counters, decode)]


def check_image(row: int, path: str, where: str, skip_bad: bool, counters: dict[str, int], decode: bool = True) -> bool:
    """True when ``path`` is a usable image; a missing, empty or (``decode``) undecodable one is a
    ``DataError`` naming it and ``row`` of ``where``, or with ``skip_bad`` a counted ``skipped_<problem>_images``."""
    problem = image_problem(path, decode)
    if problem is None:
        return True
    if not skip_bad:
        raise DataError(f"{where}: row {row}: {problem} image file {path} "
                        f"(set data.skip_bad_samples=true to skip such rows)")
    _add(counters, f"skipped_{problem}_images")
    return False


# ------------------------------------------------------------------------------------------- tables
def image_table(source: str, key: str, path_column: str, label_column: str, counters: Optional[dict[str, int]] = None,
                kind: str = "image") -> tuple[list[str], list[Any]]:
    """(absolute paths or URLs, raw labels) from a CSV/TSV/JSON/JSONL/parquet table (paths relative to the table's
    folder, also a remote one's: ``remote.resolve``) or a folder (``data.folders``: class sub-folders of ``kind``
    files, or a metadata file); files a folder's listing skipped are counted in ``counters``."""
    ds = read_table(source, key, FolderSpec(kind, path_column, label_column), counters)
    require_columns(ds, [path_column, label_column], source)
    paths = []
    for row, p in enumerate(ds[path_column]):
        if not p:
            raise DataError(f"{source}: row {row}: empty {path_column!r}")
        paths.append(resolve(str(p), source))
    return paths, list(ds[label_column])


# ---------------------------------------------------------------------------------------- transforms
def interpolation_mode(name: str):
    from torchvision.transforms import InterpolationMode

    return InterpolationMode(name.lower()) if name else InterpolationMode.BILINEAR


class ImagePipeline(NamedTuple):
    """A ``torchvision.transforms.v2`` pipeline in three parts, so that a device can batch the middle one:
    ``pixel`` ops on one uint8 image (resize/crop, flip, colour, auto-augment: their sizes or draws differ per
    image), ``batch`` ops that act alike on each image of a stack (dtype, normalise), ``tail`` ops on one float
    image (random erasing: its region differs per image)."""

    pixel: list[Any]
    batch: list[Any]
    tail: list[Any]

    def compose(self) -> Callable[[Any], torch.Tensor]:
        """The whole pipeline for one image (PIL or uint8 tensor) → float tensor (3, H, W): the worker path."""
        from torchvision.transforms import v2

        return v2.Compose([v2.ToImage(), *self.pixel, *self.batch, *self.tail])


@functools.lru_cache(maxsize=None)
def _floor_center_crop_class() -> type:
    from torchvision.transforms import v2

    class FloorCenterCrop(v2.Transform):
        """A centre crop whose offsets are floored, ``(H - h) // 2`` — transformers' image processors' convention;
        torchvision's ``CenterCrop`` rounds, one pixel apart when H - h is odd (HF encoders use this one)."""

        def __init__(self, size: Sequence[int]) -> None:
            super().__init__()
            self.size = [int(s) for s in size]

        def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
            h, w = v2.query_size(flat_inputs)
            return {"top": max(0, (h - self.size[0]) // 2), "left": max(0, (w - self.size[1]) // 2)}

        def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
            if isinstance(inpt, (int, float, str)) or inpt is None:  # pragma: no cover - non-image leaves
                return inpt
            return v2.functional.crop(inpt, params["top"], params["left"], *self.size)

    return FloorCenterCrop


def FloorCenterCrop(size: Sequence[int]) -> Any:  # noqa: N802 - a transform, built lazily (torchvision import)
    """``FloorCenterCrop(size)``: the centre crop of transformers' processors (see ``_floor_center_crop_class``)."""
    return _floor_center_crop_class()(size)


def classification_ops(pre: Any, aug: ImageAugment, train: bool) -> ImagePipeline:
    """The v2 ops of ``classification_transforms``, split as ``ImagePipeline`` (the device path batches ``batch``)."""
    from torchvision.transforms import v2

    size, interp = list(pre.size), interpolation_mode(pre.interpolation)
    if train and aug.random_resized_crop:
        ops: list[Any] = [v2.RandomResizedCrop(size, scale=tuple(aug.scale), interpolation=interp, antialias=True)]
    else:
        resize = eval_resize(size, pre.crop_pct, getattr(pre, "resize", "shortest"))
        crop = FloorCenterCrop(size) if getattr(pre, "crop_rounding", "round") == "floor" else v2.CenterCrop(size)
        ops = [v2.Resize(resize, interpolation=interp, antialias=True), crop]
    if train:
        ops += [v2.RandomHorizontalFlip(aug.hflip)] if aug.hflip > 0 else []
        ops += [_auto_augment(aug, interp)] if aug.auto_augment else []
        if aug.color_jitter > 0:
            ops.append(v2.ColorJitter(aug.color_jitter, aug.color_jitter, aug.color_jitter))
    tail = [v2.RandomErasing(aug.random_erasing)] if train and aug.random_erasing > 0 else []
    batch = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(pre.mean), list(pre.std))]
    return ImagePipeline(ops, batch, tail)


def classification_transforms(pre: Any, aug: ImageAugment, train: bool) -> Callable[[Image.Image], torch.Tensor]:
    """v2 pipeline: PIL image → normalised float tensor (3, H, W) at the encoder's ``preprocess`` size."""
    return classification_ops(pre, aug, train).compose()


def grid_interp(interp: Any) -> Any:
    """The resampling the auto-augment ops use on uint8 image tensors: ``interp`` when torchvision's
    tensor affine/rotate (``grid_sample``) supports it (nearest, bilinear), else bilinear.

    Encoders often ask for bicubic (timm ``resnet50.a1_in1k``, ViTs, open_clip): the resize and crop
    keep it, only the small shear/rotate/translate warps of RandAugment, TrivialAugment and AugMix fall
    back to bilinear, which torchvision would otherwise refuse ("Interpolation mode 'bicubic' is
    unsupported with Tensor input")."""
    from torchvision.transforms import InterpolationMode

    return interp if interp in (InterpolationMode.NEAREST, InterpolationMode.BILINEAR) else InterpolationMode.BILINEAR


def _auto_augment(aug: ImageAugment, interp: Any) -> Any:
    from torchvision.transforms import v2

    interp = grid_interp(interp)
    policies = {"randaugment": lambda: v2.RandAugment(magnitude=aug.randaugment_magnitude, interpolation=interp),
                "trivialaugment": lambda: v2.TrivialAugmentWide(interpolation=interp),
                "augmix": lambda: v2.AugMix(interpolation=interp)}
    if aug.auto_augment not in policies:
        raise ValueError(f"data.augment.auto_augment={aug.auto_augment!r}; choose one of {sorted(policies)} or ''")
    return policies[aug.auto_augment]()


def batch_mix(aug: ImageAugment, num_classes: int) -> Optional[Callable[..., tuple[torch.Tensor, torch.Tensor]]]:
    """MixUp and/or CutMix (one chosen at random per batch) giving soft (B, C) labels; None if off."""
    from torchvision.transforms import v2

    ops = []
    if aug.mixup_alpha > 0:
        ops.append(v2.MixUp(alpha=aug.mixup_alpha, num_classes=num_classes))
    if aug.cutmix_alpha > 0:
        ops.append(v2.CutMix(alpha=aug.cutmix_alpha, num_classes=num_classes))
    if not ops:
        return None
    return ops[0] if len(ops) == 1 else v2.RandomChoice(ops)


# ------------------------------------------------------------------------------------ dataset/collate
class ImageDataset(Dataset):
    """(path, label) pairs decoded and transformed on access. A file that became unreadable after
    the scan is an error naming it, or (``skip_bad``) an item the collator drops."""

    def __init__(self, paths: Sequence[str], labels: Optional[Sequence[int]], transform: Optional[Callable],
                 skip_bad: bool = False, read: Optional[Callable[[str, str], Any]] = None) -> None:
        """``read(path, name)``, when given, replaces decoding + ``transform`` (``data.decode_on=device``: it reads
        the encoded bytes, ``data.image_device.EncodedReader``)."""
        self.paths, self.labels, self.transform, self.skip_bad = paths, labels, transform, skip_bad
        self.read = read

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Optional[dict[str, Any]]:
        path = self.paths[i]
        try:
            image = self.read(path, path) if self.read is not None else self.transform(load_image(path))  # (3, H, W)
        except DataError:
            if not self.skip_bad:
                raise
            log.warning("skipping unreadable image %s", path)
            return None
        item: dict[str, Any] = {IMAGE: image}
        if self.labels is not None:
            item[LABELS] = self.labels[i]
        return item


class ImageCollator:
    """Stacks images to (B, 3, H, W) and labels to (B,); drops items the dataset skipped. (Items without an image:
    ``data.image_device.DeviceDecode`` collates the encoded images itself.)"""

    def __call__(self, items: list[Optional[dict[str, Any]]]) -> dict[str, Any]:
        items = [it for it in items if it is not None]
        if not items:
            raise DataError("every image in a batch was unreadable")
        batch: dict[str, Any] = {IMAGE: torch.stack([it[IMAGE] for it in items])} if IMAGE in items[0] else {}
        if LABELS in items[0]:
            batch[LABELS] = torch.as_tensor([it[LABELS] for it in items])  # (B,)
        return batch
