"""Device-side image decoding (``data.decode_on=device``) run with device=cpu, the same code path as CUDA: the
decoded pixels against PIL (the worker path's decoder), the whole eval pipeline against the worker path, EXIF
orientations, modes the device cannot decode, seeded train augmentation, and bad JPEGs (an error naming the file,
or a counted skip that drops the row from every per-sample tensor)."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from mm_ptft.contracts import on_device
from mm_ptft.data.image import (EXIF_ORIENTATION, ImageAugment, ImageCollator, ImageDataset, classification_ops,
                                load_image)
from mm_ptft.data.image_device import (DeviceDecode, EncodedImage, EncodedImages, EncodedReader, decode_images,
                                       read_encoded)
from mm_ptft.data.multimodal import MediaConfig, MultimodalCollator, image_input, load_image as paired_image, \
    paired_ops
from mm_ptft.data.stream import CountingCollate
from mm_ptft.data.tables import DataError
from mm_ptft.encoders.image import Preprocess
from mm_ptft.types import COUNTS, IMAGE, LABELS, TEXT

from mm_fixtures import jpegs_good_and_bad, one_thread  # noqa: F401  (one_thread: autouse)

CPU = torch.device("cpu")
PRE = Preprocess.make(24, interpolation="bicubic", crop_pct=0.875)  # resize to 27, centre-crop 24


def _photo(w: int, h: int, seed: int) -> Image.Image:
    """A smooth gradient with noise and a bright block: JPEG-typical content (not flat, not pure noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], -1) + rng.normal(0, 12, (h, w, 3))
    img[h // 4: h // 2, w // 3: w // 2] = rng.integers(150, 255, 3)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _save(img: Image.Image, path, **kw) -> str:
    img.save(path, **kw)
    return str(path)


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    """JPEGs of several sizes and aspect ratios (one 500x375, one greyscale, one progressive)."""
    root = tmp_path_factory.mktemp("jpegs")
    files = [_save(_photo(w, h, i), root / f"{i}.jpg", quality=90) for i, (w, h) in
             enumerate([(500, 375), (64, 48), (31, 57), (224, 224)])]
    files.append(_save(_photo(80, 60, 9).convert("L"), root / "grey.jpg", quality=90))
    files.append(_save(_photo(70, 90, 10), root / "progressive.jpg", quality=85, progressive=True))
    return files


def _batches(files, train, ops_kind="classification", skip_bad=False):
    """(worker-path batch, device-path batch before ``on_device``, the device collate) of ``files``."""
    ops = {t: classification_ops(PRE, ImageAugment(), t) for t in (True, False)}
    labels = list(range(len(files)))
    worker = ImageDataset(files, labels, ops[train].compose())
    device = ImageDataset(files, labels, None, read=EncodedReader(train))
    collate = CountingCollate(DeviceDecode(ImageCollator(), ops, skip_bad))
    return (ImageCollator()([worker[i] for i in range(len(files))]), collate([device[i] for i in range(len(files))]),
            collate)


def test_decoded_jpeg_pixels_match_pil(jpegs):
    """The device decoder against PIL (libjpeg-turbo both; other builds/nvjpeg may differ by a level or two)."""
    enc = EncodedImages([read_encoded(f, f) for f in jpegs])
    assert all(im.encoded and im.data.dtype == torch.uint8 and im.data.dim() == 1 for im in enc.images)
    pixels, errors, fallbacks = decode_images(enc, CPU)
    assert not errors and not fallbacks
    for f, x in zip(jpegs, pixels):
        ref = torch.from_numpy(np.array(load_image(f))).permute(2, 0, 1)  # (3, H, W) RGB, greyscale expanded
        assert x.shape == ref.shape and x.dtype == torch.uint8
        assert (x.int() - ref.int()).abs().max() <= 2


def test_eval_pipeline_on_the_device_matches_the_worker_path(jpegs):
    """Resize (bicubic) + centre crop + normalise. Tolerance: mean |diff| < 0.02 after normalisation, i.e. less than
    one 8-bit level everywhere (1/255/std ~= 0.0175 for ImageNet's std): what libjpeg-turbo vs nvjpeg IDCT and
    chroma-upsampling differences leave (on CPU both paths run libjpeg-turbo, so the difference is ~0)."""
    worker, device, collate = _batches(jpegs, train=False)
    assert isinstance(device[IMAGE], EncodedImages)
    out = on_device(collate, device, CPU)
    assert out[IMAGE].shape == worker[IMAGE].shape == (len(jpegs), 3, 24, 24)
    assert out[IMAGE].dtype == worker[IMAGE].dtype == torch.float32
    assert (out[IMAGE] - worker[IMAGE]).abs().mean() < 0.02
    assert torch.equal(out[LABELS], worker[LABELS])


def test_paired_pipeline_on_the_device_matches_load_image(jpegs):
    media = MediaConfig(image_size=16, image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.25], decode_on="device")
    items = [{IMAGE: image_input(f, f, media), TEXT: [1, 2, 3][: 1 + i % 3]} for i, f in enumerate(jpegs)]
    ops = paired_ops(media)
    out = on_device(DeviceDecode(MultimodalCollator(), {True: ops, False: ops}), DeviceDecode(
        MultimodalCollator(), {True: ops, False: ops})(items), CPU)
    ref = torch.stack([paired_image(f, media) for f in jpegs])  # (B, 3, 16, 16)
    assert out[IMAGE].shape == ref.shape and (out[IMAGE] - ref).abs().mean() < 0.02
    assert out[TEXT].shape == (len(jpegs), 3)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_pil_applies_it(tmp_path, orientation):
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    path = _save(_photo(40, 24, orientation), tmp_path / "o.jpg", quality=95, exif=exif)
    enc = read_encoded(path, path)
    assert enc.orient == orientation
    x = decode_images(EncodedImages([enc]), CPU)[0][0]
    ref = torch.from_numpy(np.array(load_image(path))).permute(2, 0, 1)  # PIL's exif_transpose
    assert x.shape == ref.shape and (x.int() - ref.int()).abs().max() <= 2


def test_images_the_device_cannot_decode_alike_are_decoded_in_the_worker_and_counted(tmp_path):
    """A CMYK JPEG and a PNG with transparency: decoded in the worker by the worker path's decoder (same pixels)."""
    cmyk = _save(_photo(30, 20, 1).convert("CMYK"), tmp_path / "cmyk.jpg", quality=95)
    rgba = _photo(30, 20, 2).convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.arange(30, dtype=np.uint8) * 8, (20, 1))))
    png = _save(rgba, tmp_path / "alpha.png")
    for path in (cmyk, png):
        enc = read_encoded(path, path)
        assert not enc.encoded
        assert torch.equal(enc.data, torch.from_numpy(np.array(load_image(path))).permute(2, 0, 1))
    worker, device, collate = _batches([cmyk, png], train=False)
    assert device[COUNTS] == {"host_decoded_images": 2}
    assert torch.equal(on_device(collate, device, CPU)[IMAGE], worker[IMAGE])


def test_train_augmentation_on_the_device_is_seeded_and_random(jpegs):
    _, device, collate = _batches(jpegs, train=True)
    torch.manual_seed(0)
    a = on_device(collate, device, CPU)[IMAGE]
    torch.manual_seed(0)
    b = on_device(collate, device, CPU)[IMAGE]
    torch.manual_seed(1)
    c = on_device(collate, device, CPU)[IMAGE]
    assert a.shape == (len(jpegs), 3, 24, 24) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_train_draws_follow_the_worker_path_draw_for_draw(jpegs):
    """Same decoder, same v2 ops, same per-image draw order: from one seed the device path augments as the worker
    path (run in-process) does."""
    worker_ops = classification_ops(PRE, ImageAugment(), True).compose()
    torch.manual_seed(3)
    ref = torch.stack([worker_ops(load_image(f)) for f in jpegs])
    _, device, collate = _batches(jpegs, train=True)
    torch.manual_seed(3)
    assert (on_device(collate, device, CPU)[IMAGE] - ref).abs().mean() < 0.02


@pytest.mark.parametrize("content,reason", [(b"", "empty image file"), (b"not a jpeg at all", "unreadable image")])
def test_a_bad_file_is_an_error_naming_it_in_the_worker(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(DataError, match=f"bad.jpg: {reason}"):
        ImageDataset([str(path)], [0], None, read=EncodedReader(True))[0]
    assert ImageDataset([str(path)], [0], None, skip_bad=True, read=EncodedReader(True))[0] is None


def test_a_truncated_jpeg_is_found_in_the_worker(jpegs, tmp_path):
    raw = open(jpegs[0], "rb").read()
    (tmp_path / "cut.jpg").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="cut.jpg: truncated JPEG"):
        read_encoded(str(tmp_path / "cut.jpg"), str(tmp_path / "cut.jpg"))


def _corrupt(name: str) -> EncodedImage:
    """Bytes that pass the worker's cheap checks (the header read them) but that no JPEG decoder accepts."""
    return EncodedImage(torch.frombuffer(bytearray(b"\xff\xd8\xff\xe0 broken scan \xff\xd9"), dtype=torch.uint8), name)


def test_a_jpeg_whose_header_reads_but_whose_data_does_not_is_named_by_the_device_stage(tmp_path):
    path = tmp_path / "bogus_huffman.jpg"
    path.write_bytes(jpegs_good_and_bad()[1])
    ds = ImageDataset([str(path)], [0], None, read=EncodedReader(False))
    collate = DeviceDecode(ImageCollator(), {t: classification_ops(PRE, ImageAugment(), t) for t in (True, False)})
    with pytest.raises(DataError, match=r"bogus_huffman.jpg: undecodable JPEG .*Huffman"):
        collate.on_device(collate([ds[0]]), CPU)


def test_a_jpeg_the_device_decoder_refuses_is_decoded_on_the_host_and_moved(jpegs, monkeypatch):
    """As nvjpeg may refuse what libjpeg-turbo reads: a stand-in device ('meta') whose decoder refuses the progressive
    JPEG gets it from the host decoder, counted; a file no decoder reads stays an error naming it."""
    from mm_ptft.data import image_device

    real = image_device._decode_jpegs

    def decode(data, device):
        if device.type == "meta" and any(len(d) == len(progressive.data) for d in data):
            raise RuntimeError("nvjpeg: unsupported encoding")
        return [x.to(device) for x in real(data, CPU)]

    monkeypatch.setattr(image_device, "_decode_jpegs", decode)
    enc = [read_encoded(f, f) for f in jpegs[1:]]
    progressive = enc[-1]
    pixels, errors, fallbacks = decode_images(EncodedImages(enc), torch.device("meta"))
    assert not errors and fallbacks == 1 and all(p.device.type == "meta" for p in pixels)
    assert pixels[-1].shape == (3, 90, 70)
    _, errors, fallbacks = decode_images(EncodedImages([enc[0], _corrupt("shard: sample 'x'")]), torch.device("meta"))
    assert fallbacks == 0 and len(errors) == 1 and errors[0].startswith("shard: sample 'x': undecodable JPEG")


def test_an_undecodable_jpeg_on_the_device_is_an_error_naming_it_or_a_counted_skip(jpegs):
    ops = {t: classification_ops(PRE, ImageAugment(), t) for t in (True, False)}
    good = [read_encoded(f, f, train=False) for f in jpegs[:3]]
    items = [{IMAGE: good[0], LABELS: 0}, {IMAGE: _corrupt("shard-3.tar: sample 'k7'"), LABELS: 1},
             {IMAGE: good[1], LABELS: 2}, {IMAGE: good[2], LABELS: 3}]
    strict = DeviceDecode(ImageCollator(), ops)
    with pytest.raises(DataError, match=r"shard-3.tar: sample 'k7': undecodable JPEG .*skip_bad_samples"):
        strict.on_device(strict(items), CPU)
    lenient = DeviceDecode(ImageCollator(), ops, skip_bad=True)
    out = lenient.on_device(lenient(items), CPU)
    assert out[LABELS].tolist() == [0, 2, 3] and out[IMAGE].shape == (3, 3, 24, 24)
    assert out[COUNTS] == {"skipped_bad_image": 1}
    every = [{IMAGE: _corrupt("a"), LABELS: 0}]
    with pytest.raises(DataError, match="every image in a batch"):
        lenient.on_device(lenient(every), CPU)


def test_to_device_leaves_the_encoded_bytes_on_the_host_and_pinning_keeps_them():
    from mm_ptft.train.trainer import to_device

    enc = EncodedImages([_corrupt("x"), EncodedImage(torch.zeros(3, 4, 4, dtype=torch.uint8), "y")])
    batch = to_device({IMAGE: enc, LABELS: torch.tensor([0, 1])}, CPU)
    assert batch[IMAGE] is enc
    if torch.cuda.is_available():
        pinned = enc.pin_memory()
        assert pinned.images[1].data.is_pinned() and torch.equal(pinned.images[0].data, enc.images[0].data)


def test_a_collate_without_a_device_stage_passes_batches_through():
    batch = {LABELS: torch.tensor([1])}
    assert on_device(ImageCollator(), batch, CPU) is batch


def test_reading_bytes_from_a_tar_member(jpegs):
    raw = open(jpegs[1], "rb").read()
    enc = read_encoded(io.BytesIO(raw), "train-0.tar: sample 'a'")
    assert enc.encoded and enc.name == "train-0.tar: sample 'a'" and bytes(enc.data.numpy()) == raw
