"""Hostile images: every mode and bit depth PIL writes for PNG/JPEG/TIFF/BMP/GIF/WebP, EXIF orientations,
animation, odd sizes, and broken files. Valid images must decode to what a viewer shows (``load_image``'s
documented rules: EXIF applied, alpha over white, 16-bit scaled by 255/65535, float as [0, 1]), checked
against references computed here with numpy; broken ones are a DataError naming file and row, or a counted
skip with ``skip_bad``."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from mm_ptft.data.coco import _size_problem
from mm_ptft.data.image import check_image, decoded_size, load_image
from mm_ptft.data.multimodal import MediaConfig
from mm_ptft.data.multimodal import load_image as media_image
from mm_ptft.data.tables import DataError

H, W = 5, 6
RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
GRAY = RNG.integers(0, 256, (H, W), dtype=np.uint8)
ALPHA = np.array([0, 64, 128, 200, 255, 255] * H, np.uint8).reshape(H, W)
PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30], [200, 100, 50], [0, 0, 0]], np.uint8)
INDEX = (np.arange(H * W).reshape(H, W) % 6).astype(np.uint8)
U16 = np.linspace(0, 65535, H * W).round().astype(np.uint16).reshape(H, W)
I32 = np.linspace(-500, 70000, H * W).round().astype(np.int32).reshape(H, W)
F32 = np.linspace(-0.25, 1.25, H * W).astype(np.float32).reshape(H, W)
CMYK = RNG.integers(0, 256, (H, W, 4), dtype=np.uint8)
YCC = RNG.integers(16, 240, (H, W, 3), dtype=np.uint8)
# smooth content for the lossy codecs (noise at 6x5 pixels is not what they are built for)
SMOOTH = np.stack([*np.meshgrid(np.linspace(20, 230, W), np.linspace(40, 200, H)), np.full((H, W), 128.0)], -1).round()
SMOOTH = SMOOTH.astype(np.uint8)


def gray3(g):
    return np.repeat(np.asarray(g, np.float64)[..., None], 3, -1)


def over_white(rgb, a):
    """Alpha compositing over white, by the textbook formula."""
    a = a.astype(np.float64)[..., None] / 255
    return rgb.astype(np.float64) * a + 255 * (1 - a)


def palette_image(transparent=None):
    img = Image.fromarray(INDEX, "P")
    img.putpalette(PALETTE.flatten().tolist())
    if transparent is not None:
        img.info["transparency"] = transparent
    return img


def rgba(x, a):
    return np.dstack([x, a])


def ycbcr_to_rgb(y):
    Y, Cb, Cr = (y[..., i].astype(np.float64) for i in range(3))
    return np.stack([Y + 1.402 * (Cr - 128), Y - 0.344136 * (Cb - 128) - 0.714136 * (Cr - 128), Y + 1.772 * (Cb - 128)], -1)


def cmyk_to_rgb(c):
    return 255 * (1 - c[..., :3] / 255) * (1 - c[..., 3:] / 255)


with_transparency = np.where((INDEX == 2)[..., None], 255, PALETTE[INDEX])
# id: (file name, image to save, save kwargs, expected RGB (H, W, 3), tolerance)
LOSSLESS = {
    "png-1": ("x.png", lambda: Image.fromarray(GRAY > 127), {}, gray3((GRAY > 127) * 255), 0),
    "tiff-1": ("x.tif", lambda: Image.fromarray(GRAY > 127), {}, gray3((GRAY > 127) * 255), 0),
    "bmp-1": ("x.bmp", lambda: Image.fromarray(GRAY > 127), {}, gray3((GRAY > 127) * 255), 0),
    "png-L": ("x.png", lambda: Image.fromarray(GRAY, "L"), {}, gray3(GRAY), 0),
    "tiff-L": ("x.tif", lambda: Image.fromarray(GRAY, "L"), {}, gray3(GRAY), 0),
    "bmp-L": ("x.bmp", lambda: Image.fromarray(GRAY, "L"), {}, gray3(GRAY), 0),
    "png-LA": ("x.png", lambda: Image.fromarray(rgba(GRAY, ALPHA), "LA"), {}, over_white(gray3(GRAY), ALPHA), 1),
    "tiff-LA": ("x.tif", lambda: Image.fromarray(rgba(GRAY, ALPHA), "LA"), {}, over_white(gray3(GRAY), ALPHA), 1),
    "png-P": ("x.png", palette_image, {}, PALETTE[INDEX], 0),
    "tiff-P": ("x.tif", palette_image, {}, PALETTE[INDEX], 0),
    "bmp-P": ("x.bmp", palette_image, {}, PALETTE[INDEX], 0),
    "gif-P": ("x.gif", palette_image, {}, PALETTE[INDEX], 0),
    "png-P-transparency": ("x.png", lambda: palette_image(2), {"transparency": 2}, with_transparency, 0),
    "gif-P-transparency": ("x.gif", lambda: palette_image(2), {"transparency": 2}, with_transparency, 0),
    "tiff-PA": ("x.tif", lambda: palette_image().convert("PA"), {}, PALETTE[INDEX], 0),  # alpha 255: the palette colours
    "png-RGB": ("x.png", lambda: Image.fromarray(RGB, "RGB"), {}, RGB, 0),
    "tiff-RGB": ("x.tif", lambda: Image.fromarray(RGB, "RGB"), {}, RGB, 0),
    "bmp-RGB": ("x.bmp", lambda: Image.fromarray(RGB, "RGB"), {}, RGB, 0),
    "webp-RGB-lossless": ("x.webp", lambda: Image.fromarray(RGB, "RGB"), {"lossless": True}, RGB, 0),
    "png-RGBA": ("x.png", lambda: Image.fromarray(rgba(RGB, ALPHA), "RGBA"), {}, over_white(RGB, ALPHA), 1),
    "tiff-RGBA": ("x.tif", lambda: Image.fromarray(rgba(RGB, ALPHA), "RGBA"), {}, over_white(RGB, ALPHA), 1),
    "webp-RGBA-lossless": ("x.webp", lambda: Image.fromarray(rgba(RGB, ALPHA), "RGBA"), {"lossless": True, "exact": True},
                           over_white(RGB, ALPHA), 1),
    "png-I;16": ("x.png", lambda: Image.fromarray(U16), {}, gray3(U16 / 65535 * 255), 0.5),
    "tiff-I;16": ("x.tif", lambda: Image.fromarray(U16), {}, gray3(U16 / 65535 * 255), 0.5),
    "tiff-I-clipped": ("x.tif", lambda: Image.fromarray(I32), {}, gray3(np.clip(I32, 0, 65535) * 255 / 65535), 0.5),
    "tiff-F-clipped": ("x.tif", lambda: Image.fromarray(F32), {}, gray3(np.clip(F32, 0, 1) * 255), 0.5),
    "tiff-CMYK": ("x.tif", lambda: Image.fromarray(CMYK, "CMYK"), {}, cmyk_to_rgb(CMYK), 1),
    "tiff-YCbCr": ("x.tif", lambda: Image.fromarray(YCC, "YCbCr"), {}, ycbcr_to_rgb(YCC).clip(0, 255), 1.5),
}


@pytest.mark.parametrize("case", sorted(LOSSLESS))
def test_lossless_mode_decodes_to_what_a_viewer_shows(tmp_path, case):
    name, make, kwargs, expected, tol = LOSSLESS[case]
    path = str(tmp_path / name)
    make().save(path, **kwargs)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (W, H)
    np.testing.assert_allclose(np.asarray(img, np.float64), expected, atol=tol)


# Lossy files: the decoder's output (PIL, no extra steps for these modes) is the reference, and the pixels
# stay close to the source values (a sanity bound on the codec, independent of PIL's conversion code).
LOSSY = {
    "jpeg-L": ("x.jpg", lambda: Image.fromarray(GRAY, "L"), gray3(GRAY)),
    "jpeg-1": ("x.jpg", lambda: Image.fromarray(GRAY > 127), gray3((GRAY > 127) * 255)),
    "jpeg-RGB": ("x.jpg", lambda: Image.fromarray(SMOOTH, "RGB"), SMOOTH),
    "jpeg-CMYK": ("x.jpg", lambda: Image.fromarray(CMYK, "CMYK"), cmyk_to_rgb(CMYK)),
    "jpeg-YCbCr": ("x.jpg", lambda: Image.fromarray(SMOOTH, "YCbCr"), ycbcr_to_rgb(SMOOTH).clip(0, 255)),
    "webp-RGB-lossy": ("x.webp", lambda: Image.fromarray(SMOOTH, "RGB"), SMOOTH),
}


@pytest.mark.parametrize("case", sorted(LOSSY))
def test_lossy_mode_decodes_like_the_reference_decoder(tmp_path, case):
    name, make, source = LOSSY[case]
    path = str(tmp_path / name)
    make().save(path, quality=100)
    img = np.asarray(load_image(path), np.float64)
    with Image.open(path) as ref:
        np.testing.assert_array_equal(img, np.asarray(ImageOps.exif_transpose(ref).convert("RGB"), np.float64))
    assert img.shape == (H, W, 3) and np.abs(img - source).mean() < 12


# EXIF orientation: the transform each tag asks a viewer to apply, written out with numpy.
ORIENT = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
          5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, -1)[::-1],
          8: lambda a: np.rot90(a, 1)}


@pytest.mark.parametrize("orientation", sorted(ORIENT))
def test_exif_orientation_is_applied(tmp_path, orientation):
    path = str(tmp_path / "x.png")
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(RGB, "RGB").save(path, exif=exif)
    got = np.asarray(load_image(path))
    np.testing.assert_array_equal(got, ORIENT[orientation](RGB))
    with Image.open(path) as ref:
        np.testing.assert_array_equal(got, np.asarray(ImageOps.exif_transpose(ref).convert("RGB")))
    assert decoded_size(path) == (got.shape[1], got.shape[0])


def test_exif_rotated_jpeg_and_coco_sizes_follow_the_viewer(tmp_path):
    """A camera JPEG (orientation 6): decoded upright, and a COCO entry with the upright size matches."""
    path = str(tmp_path / "cam.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(RGB, "RGB").save(path, exif=exif, quality=100)
    assert load_image(path).size == (H, W)
    assert _size_problem(path, {"width": H, "height": W}) is None
    assert "missized" in _size_problem(path, {"width": W, "height": H})


def test_animated_gif_gives_its_first_frame(tmp_path):
    path = str(tmp_path / "anim.gif")
    frames = [Image.new("RGB", (W, H), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(path).n_frames == 3
    assert np.asarray(load_image(path)).reshape(-1, 3).tolist() == [[255, 0, 0]] * (W * H)


@pytest.mark.parametrize("size", [(1, 1), (1, 4000), (4000, 1)], ids=["1x1", "1x4000", "4000x1"])
def test_tiny_and_extreme_aspect_images_decode_and_resize(tmp_path, size):
    path = str(tmp_path / "x.png")
    Image.new("RGB", size, (9, 99, 199)).save(path)
    assert load_image(path).size == size
    x = media_image(path, MediaConfig(image_size=8))  # (3, 8, 8): the resize copes with 1-pixel sides
    assert tuple(x.shape) == (3, 8, 8)


def test_png_bytes_named_jpg_decode_by_content(tmp_path):
    path = str(tmp_path / "really_png.jpg")
    Image.fromarray(RGB, "RGB").save(path, format="PNG")
    np.testing.assert_array_equal(np.asarray(load_image(path)), RGB)


# ---- broken files: a DataError naming the file and the row, or a counted skip ---------------------------
def _png_bytes():
    import io

    b = io.BytesIO()
    Image.frombytes("RGB", (64, 64), np.random.default_rng(1).integers(0, 256, 64 * 64 * 3, np.uint8).tobytes()).save(b, "PNG")
    return b.getvalue()


def _jpeg_bytes():
    import io

    b = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), np.uint8)).save(b, "JPEG")
    return b.getvalue()


BROKEN = {  # id: (file name, how to make it (None: not created), skip counter)
    "zero-byte": ("x.png", lambda p: p.write_bytes(b""), "skipped_empty_images"),
    "truncated-png": ("x.png", lambda p: p.write_bytes(_png_bytes()[:300]), "skipped_corrupt_images"),
    "truncated-jpeg": ("x.jpg", lambda p: p.write_bytes(_jpeg_bytes()[:400]), "skipped_corrupt_images"),
    "text-named-png": ("x.png", lambda p: p.write_text("this is not an image\n"), "skipped_corrupt_images"),
    "random-bytes-webp": ("x.webp", lambda p: p.write_bytes(bytes(range(256)) * 4), "skipped_corrupt_images"),
    "directory": ("a_folder.png", lambda p: p.mkdir(), "skipped_missing_images"),
    "missing": ("gone.png", None, "skipped_missing_images"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_image_is_an_error_naming_file_and_row_or_a_counted_skip(tmp_path, case):
    name, make, counter = BROKEN[case]
    path = tmp_path / name
    if make:
        make(path)
    with pytest.raises(DataError, match=rf"train\.csv: row 7: .*{name}"):
        check_image(7, str(path), "train.csv", False, {})
    counts: dict[str, int] = {}
    assert check_image(7, str(path), "train.csv", True, counts) is False and counts == {counter: 1}


def test_decompression_bomb_is_a_clear_error_or_counted_skip(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("L", (64, 64)).save(path)  # 4096 pixels, over twice the limit set below
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DataError, match=r"bomb\.png: image too large"):
        load_image(str(path))
    counts: dict[str, int] = {}
    assert check_image(3, str(path), "train.csv", True, counts) is False and counts == {"skipped_corrupt_images": 1}
