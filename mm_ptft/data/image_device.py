"""Image decoding and augmentation on the training device (``data.decode_on: device``).

The loader workers only read each image's encoded bytes and check its header (``read_encoded``, cheap: no pixel
is decoded). A JPEG in RGB or greyscale travels as its bytes, a 1-D uint8 tensor; every other image (PNG, WebP,
CMYK JPEG, ...) is decoded in the worker by the worker path's own decoder (``data.image.load_image``: alpha over
white, 16-bit scaling, CMYK as PIL converts it), so the two paths give the same pixels, and counted
(``host_decoded_images``). ``DeviceDecode`` wraps the recipe's collate: it gathers a batch's images into an
``EncodedImages`` (which ``to_device`` leaves on the host: ``decode_jpeg`` reads host bytes whatever the device)
and its ``on_device(batch, device)`` stage (``contracts.on_device``: the trainer calls it for every train and eval
batch after ``to_device``) decodes all JPEGs in one ``torchvision.io.decode_jpeg(list, device=...)`` call
(nvjpeg on CUDA, libjpeg-turbo on CPU), applies the EXIF orientation the header gave (``orient``, as PIL's
``exif_transpose``: decode_jpeg applies it on CPU only), then runs the recipe's own v2 ops
(``data.image.ImagePipeline``) on the device tensors: the resize/crop/flip/colour ops per image (sizes and random
draws differ), dtype and normalisation once on the stacked batch, random erasing per image.

Random draws come from the trainer process's torch generator (checkpointed with the run, so a resume continues
exactly), not from per-worker streams. When the batched decode fails, the batch's JPEGs are decoded one by one; one
the device's decoder refuses is retried with libjpeg-turbo on the host (the worker path's decoder family: a limit
of nvjpeg is not a bad file; counted ``device_decode_fallbacks``), and one neither decodes is a ``DataError`` naming
the file or shard and sample, or with ``skip_bad`` its row is dropped from every per-sample tensor of the batch and
counted (``skipped_bad_image``)."""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple, Optional

import torch
from PIL import Image, UnidentifiedImageError

from mm_ptft.config import ConfigError
from mm_ptft.data.image import EXIF_ORIENTATION, ImagePipeline, load_image
from mm_ptft.data.remote import media_file
from mm_ptft.data.tables import DataError
from mm_ptft.types import COUNTS, IMAGE

#: JPEG modes the device decoder turns into the RGB the worker path gives (others are decoded in the worker)
DEVICE_JPEG_MODES = ("RGB", "L")
DECODE_ON = ("worker", "device")


def check_decode_on(value: str, key: str = "data.decode_on") -> None:
    """ConfigError naming ``key`` unless ``value`` is one of ``DECODE_ON``."""
    if value not in DECODE_ON:
        raise ConfigError(f"{key}={value!r}; choose one of {list(DECODE_ON)} (device: decode and augment images on the "
                         f"training device)")


@dataclass
class EncodedImage:
    """One image as a worker hands it over: ``data`` (N,) uint8 JPEG bytes, or (3, H, W) uint8 pixels the worker
    decoded itself; ``name`` (file, or shard and sample) for errors; ``orient`` the EXIF orientation to apply;
    ``train``: which of the recipe's pipelines (augmenting or not) the device runs."""

    data: torch.Tensor
    name: str
    orient: int = 1
    train: bool = True

    @property
    def encoded(self) -> bool:
        return self.data.dim() == 1


@dataclass
class EncodedImages:
    """A batch's images before ``DeviceDecode.on_device``: not a tensor, list or dict, so ``to_device`` leaves it."""

    images: list[EncodedImage]

    def pin_memory(self) -> "EncodedImages":
        """The loader's ``pin_memory``: pins the worker-decoded pixels (moved with ``non_blocking``)."""
        return EncodedImages([EncodedImage(im.data if im.encoded else im.data.pin_memory(), im.name, im.orient,
                                           im.train) for im in self.images])

    def __len__(self) -> int:
        return len(self.images)


def _raw_bytes(source: Any) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    if isinstance(source, io.BytesIO):
        return source.getvalue()
    try:
        with open(media_file(source), "rb") as f:  # a URL: its local copy
            return f.read()
    except FileNotFoundError:
        raise DataError(f"{source}: image file not found") from None


def _header(raw: bytes, name: str) -> tuple[str, str, int]:
    """(format, mode, EXIF orientation) from the header alone; DataError naming ``name`` when it is no image."""
    try:
        with Image.open(io.BytesIO(raw)) as img:
            return img.format or "", img.mode, int(img.getexif().get(EXIF_ORIENTATION, 1) or 1)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise DataError(f"{name}: unreadable image ({type(err).__name__}: {err})") from None


def read_encoded(source: Any, name: str, train: bool = True) -> EncodedImage:
    """Worker side of the device path: ``source`` (a path, file object or bytes) → ``EncodedImage``. An RGB or
    greyscale JPEG stays encoded (after a cheap check: an empty file, an unreadable header or a missing end-of-image
    marker, i.e. a truncated file, is a DataError naming ``name``); any other image is decoded here as the worker
    path decodes it."""
    raw = _raw_bytes(source)
    if not raw:
        raise DataError(f"{name}: empty image file")
    fmt, mode, orient = _header(raw, name)
    if fmt == "JPEG" and mode in DEVICE_JPEG_MODES:
        # EOI (FF D9) cannot occur inside entropy-coded data (0xFF is stuffed): its absence near the end means the
        # file was cut (1 KiB allows the trailing bytes some writers append)
        if b"\xff\xd9" not in raw[-1024:]:
            raise DataError(f"{name}: truncated JPEG (no end-of-image marker)")
        return EncodedImage(torch.frombuffer(bytearray(raw), dtype=torch.uint8), name, orient, train)  # (N,)
    from torchvision.transforms.v2.functional import pil_to_tensor

    return EncodedImage(pil_to_tensor(load_image(io.BytesIO(raw))), name, 1, train)  # (3, H, W) uint8


class EncodedReader:
    """``read(source, name)`` for datasets and stream rows: ``read_encoded`` for the ``train`` or eval pipeline."""

    def __init__(self, train: bool) -> None:
        self.train = train

    def __call__(self, source: Any, name: str) -> EncodedImage:
        return read_encoded(source, name, self.train)


def orient(x: torch.Tensor, orientation: int) -> torch.Tensor:
    """(C, H, W) decoded pixels turned as EXIF ``orientation`` says (PIL ``ImageOps.exif_transpose``)."""
    ops: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {
        2: lambda t: t.flip(-1), 3: lambda t: t.flip(-2, -1), 4: lambda t: t.flip(-2),
        5: lambda t: t.transpose(-2, -1), 6: lambda t: torch.rot90(t, -1, (-2, -1)),
        7: lambda t: t.transpose(-2, -1).flip(-2, -1), 8: lambda t: torch.rot90(t, 1, (-2, -1))}
    return ops[orientation](x) if orientation in ops else x


def _decode_jpegs(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():  # torchvision 0.29 marks its decoders deprecated (TorchCodec): still the API
        warnings.simplefilter("ignore")
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


class Decoded(NamedTuple):
    """``decode_images``' answer: each image (3, H, W) uint8 on the device, None where undecodable; the reasons for
    those; how many JPEGs the device's decoder refused but libjpeg-turbo on the host decoded (moved there)."""

    pixels: list[Optional[torch.Tensor]]
    errors: list[str]
    host_fallbacks: int


def _try_decode(data: torch.Tensor, device: torch.device) -> tuple[Optional[torch.Tensor], str]:
    try:
        return _decode_jpegs([data], device)[0], ""
    except RuntimeError as err:
        return None, str(err).splitlines()[-1][-200:]


def _one_by_one(jpegs: list[EncodedImage], device: torch.device) -> Decoded:
    """Each JPEG alone on ``device``; one its decoder refuses, again with libjpeg-turbo on the host (then moved)."""
    pixels: list[Optional[torch.Tensor]] = []
    errors: list[str] = []
    fallbacks = 0
    for im in jpegs:
        x, reason = _try_decode(im.data, device)
        if x is None and device.type != "cpu":
            x = _try_decode(im.data, torch.device("cpu"))[0]
            fallbacks += x is not None
            x = x.to(device, non_blocking=True) if x is not None else None
        pixels.append(x)
        if x is None:
            errors.append(f"{im.name}: undecodable JPEG ({reason})")
    return Decoded(pixels, errors, fallbacks)


def decode_images(images: EncodedImages, device: torch.device) -> Decoded:
    """Decode ``images`` onto ``device``: the JPEGs in one batched ``decode_jpeg`` call; if it fails, one by one to
    find which, each retried on the host (a limit of the device's decoder, e.g. nvjpeg's, is not a bad file)."""
    out: list[Optional[torch.Tensor]] = [None if im.encoded else im.data.to(device, non_blocking=True)
                                         for im in images.images]
    jpegs = [i for i, im in enumerate(images.images) if im.encoded]
    try:
        decoded = Decoded(_decode_jpegs([images.images[i].data for i in jpegs], device) if jpegs else [], [], 0)
    except RuntimeError:
        decoded = _one_by_one([images.images[i] for i in jpegs], device)
    for i, x in zip(jpegs, decoded.pixels):
        out[i] = orient(x, images.images[i].orient) if x is not None else None
    return Decoded(out, decoded.errors, decoded.host_fallbacks)


def _keep_rows(batch: dict[str, Any], keep: list[int], n: int) -> dict[str, Any]:
    """The batch with only rows ``keep`` of each per-sample tensor (first dimension ``n``)."""
    idx = torch.tensor(keep)
    return {k: v[idx.to(v.device)] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == n else v
            for k, v in batch.items()}


def _add_count(batch: dict[str, Any], key: str, n: int) -> dict[str, Any]:
    """``batch`` with ``n`` added to its skip/fallback count ``key`` (``types.COUNTS``, taken off by the trainer)."""
    counts = dict(batch.get(COUNTS) or {})
    counts[key] = counts.get(key, 0) + n
    return {**batch, COUNTS: counts}


def _apply(ops: list[Any], x: torch.Tensor) -> torch.Tensor:
    for op in ops:
        x = op(x)
    return x


class DeviceDecode:
    """Collate wrapper of ``data.decode_on=device``: items' ``EncodedImage`` → the batch's ``EncodedImages`` (the
    rest collated by ``collate``); ``on_device`` decodes and transforms them with ``ops[train]`` (``ImagePipeline``)."""

    def __init__(self, collate: Callable[[list[Any]], dict[str, Any]], ops: Mapping[bool, ImagePipeline],
                 skip_bad: bool = False) -> None:
        self.collate, self.ops, self.skip_bad = collate, dict(ops), skip_bad

    def __call__(self, items: list[Any]) -> dict[str, Any]:
        items = [it for it in items if it is not None]
        if not items:
            raise DataError("every image in a batch was unreadable")
        batch = self.collate([{k: v for k, v in it.items() if k != IMAGE} for it in items])
        images = EncodedImages([it[IMAGE] for it in items])
        batch[IMAGE] = images
        host = sum(not im.encoded for im in images.images)
        return _add_count(batch, "host_decoded_images", host) if host else batch

    def on_device(self, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        """Decode and transform ``batch[IMAGE]`` on ``device`` → (B, 3, H, W) float; bad images raise or drop rows."""
        images = batch.get(IMAGE)
        if not isinstance(images, EncodedImages):
            return batch
        pixels, errors, fallbacks = decode_images(images, device)
        if fallbacks:
            batch = _add_count(batch, "device_decode_fallbacks", fallbacks)
        if errors:
            batch = self._drop_bad(batch, pixels, errors)
            images = batch[IMAGE]
            pixels = [p for p in pixels if p is not None]
        ops = self.ops[images.images[0].train]
        x = torch.stack([_apply(ops.pixel, p) for p in pixels])  # (B, 3, H, W) uint8
        x = _apply(ops.batch, x)  # (B, 3, H, W) float, normalised
        if ops.tail:
            x = torch.stack([_apply(ops.tail, xi) for xi in x])  # (B, 3, H, W)
        return {**batch, IMAGE: x}

    def _drop_bad(self, batch: dict[str, Any], pixels: list[Optional[torch.Tensor]],
                  errors: list[str]) -> dict[str, Any]:
        if not self.skip_bad:
            raise DataError(f"{errors[0]} (set data.skip_bad_samples=true to skip such samples)")
        keep = [i for i, p in enumerate(pixels) if p is not None]
        if not keep:
            raise DataError(f"every image in a batch was unreadable: {errors[0]}")
        n = len(pixels)
        batch = _keep_rows(batch, keep, n)
        batch[IMAGE] = EncodedImages([batch[IMAGE].images[i] for i in keep])
        return _add_count(batch, "skipped_bad_image", n - len(keep))
