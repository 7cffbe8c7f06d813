"""Streamed image-classification samples (``data.stream`` map function): a WebDataset sample
(``{key}.jpg|png|webp|…`` + ``{key}.cls`` or ``label_column`` in ``{key}.json``, the timm / img2dataset
layout) or a table row (image path relative to the shard's folder + label) → ``{image, labels}``.

The image is decoded as the in-memory path decodes it (``data.image.load_image``: EXIF orientation, modes,
bit depths) and transformed with the recipe's transforms. Random augmentation is seeded per sample
(``data.stream.sample_seed`` of seed, pass, shard, row), so a resumed run continues exactly."""
from __future__ import annotations

import io
import json
import os
from typing import Any, Callable, Optional


from mm_ptft.data.image import load_image
from mm_ptft.data.multimodal import media_path
from mm_ptft.data.paired_stream import EXTS, is_tar_sample
from mm_ptft.data.shards import Shard
from mm_ptft.data.stream import sample_seed
from mm_ptft.data.tables import DataError, LabelMap
from mm_ptft.types import IMAGE, LABELS


def tar_label(record: dict[str, Any], label_column: str) -> Any:
    """A WebDataset sample's label: ``{key}.cls``, else ``label_column`` of ``{key}.json``."""
    if "cls" in record:
        return record["cls"].decode("utf-8").strip()
    return json.loads(record["json"]).get(label_column) if "json" in record else None


class ImageRow:
    """A record → ``{image: (3, H, W), labels}``; a bad image is an error naming the shard and sample or (with
    ``skip_bad``) a counted skip (``skipped_bad_image``); a bad label is an error naming the row."""

    def __init__(self, transform: Callable, path_column: str, label_column: str, labels: LabelMap,
                 skip_bad: bool = False, seed: int = 0) -> None:
        self.transform, self.path_column, self.label_column = transform, path_column, label_column
        self.labels, self.skip_bad, self.seed, self.pass_no = labels, skip_bad, seed, 0

    def set_pass(self, pass_no: int) -> None:
        """Called by the stream at each pass: augmentation differs between passes, never between runs."""
        self.pass_no = pass_no

    def _decode(self, shard: Shard, row: int, record: dict[str, Any]) -> Any:
        if is_tar_sample(record):
            name = f"{shard.name}: sample {record['__key__']!r}"
            ext = next((e for e in EXTS["image"] if e in record), None)
            if ext is None:
                raise DataError(f"{name}: no image ({'/'.join(EXTS['image'])}); it has {sorted(record)}")
            try:
                return load_image(io.BytesIO(record[ext]))
            except DataError as err:  # drop the file object's repr, keep the reason
                raise DataError(f"{name}: {str(err).split(': ', 1)[-1]}") from err
        if self.path_column not in record:
            raise DataError(f"{shard.name}: row {row}: missing column {self.path_column!r}; it has {sorted(record)}")
        path = media_path(os.path.dirname(os.path.abspath(shard.path)), record[self.path_column])
        if path is None:
            raise DataError(f"{shard.name}: row {row}: empty {self.path_column!r} cell")
        return load_image(path)

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
        with sample_seed(self.seed, self.pass_no, os.path.basename(shard.path), shard.index, row):
            return {IMAGE: self.transform(img), LABELS: y}  # (3, H, W)
