"""Streamed image-classification samples (``data.stream`` map function): a WebDataset sample
(``{key}.jpg|png|webp|…`` + ``{key}.cls`` or ``label_column`` in ``{key}.json``, the timm / img2dataset
layout) or a table row (image path relative to the shard's folder + label) → ``{image, labels}``.

The image is decoded as the in-memory path decodes it (``data.image.load_image``: EXIF orientation, modes, bit
depths) and transformed with the recipe's transforms. Random augmentation is seeded per sample
(``data.stream.sample_seed`` of seed, pass, shard, row), so a resumed run continues exactly. With ``read``
(``data.decode_on=device``) the record gives its encoded image instead, decoded and augmented on the device."""
from __future__ import annotations

import os
from typing import Any, Callable, Optional


from mm_ptft.data.image import load_image
from mm_ptft.data.paired_stream import decode_media, is_tar_sample, media_source, tar_label
from mm_ptft.data.shards import Shard
from mm_ptft.data.stream import sample_seed
from mm_ptft.data.tables import DataError, LabelMap
from mm_ptft.types import IMAGE, LABELS


class ImageRow:
    """A record → ``{image: (3, H, W), labels}``; a bad image is an error naming the shard and sample or (with
    ``skip_bad``) a counted skip (``skipped_bad_image``); a bad label is an error naming the row."""

    def __init__(self, transform: Optional[Callable], path_column: str, label_column: str, labels: LabelMap,
                 skip_bad: bool = False, seed: int = 0, read: Optional[Callable[[Any, str], Any]] = None) -> None:
        """``read(source, name)``, when given, replaces decoding + ``transform`` (``data.decode_on=device``: the
        encoded bytes, ``data.image_device.EncodedReader``; the device draws the augmentation)."""
        self.transform, self.path_column, self.label_column = transform, path_column, label_column
        self.labels, self.skip_bad, self.seed, self.pass_no, self.read = labels, skip_bad, seed, 0, read

    def set_pass(self, pass_no: int) -> None:
        """Called by the stream at each pass: augmentation differs between passes, never between runs."""
        self.pass_no = pass_no

    def _decode(self, shard: Shard, row: int, record: dict[str, Any]) -> Any:
        source, name = media_source(shard, row, record, "image", self.path_column)
        return decode_media(load_image if self.read is None else (lambda s: self.read(s, name)), source, name)

    def __call__(self, shard: Shard, row: int, record: dict[str, Any], counters: dict[str, int]) -> Optional[dict]:
        raw = tar_label(record, self.label_column) if is_tar_sample(record) else record.get(self.label_column)
        y = self.labels.encode([raw], shard.name, [row])[0]
        try:
            img = self._decode(shard, row, record)
        except DataError:
            if not self.skip_bad:
                raise
            counters["skipped_bad_image"] = counters.get("skipped_bad_image", 0) + 1
            return None
        if self.read is not None:
            return {IMAGE: img, LABELS: y}
        with sample_seed(self.seed, self.pass_no, os.path.basename(shard.path), shard.index, row):
            return {IMAGE: self.transform(img), LABELS: y}  # (3, H, W)
