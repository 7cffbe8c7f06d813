"""Streamed video-classification samples (``data.stream`` map function): a WebDataset sample (``{key}.mp4|webm|
mkv|…`` + ``{key}.cls`` or ``label_column`` in ``{key}.json``) or a table row (video path relative to the shard's
folder + label) → ``{video, video_mask, labels}``.

The clip is sampled, decoded and transformed as the map-style ``VideoDataset`` does it (``data.video.make_clip``:
PyAV, ``data.sampling``, one crop for the whole clip). The frame draws and the crop are seeded per sample
(``data.stream.sample_seed`` of seed, pass, shard, row), so a resumed run continues exactly. A bad member
(corrupt, truncated, no video stream, zero frames, over ``data.sampling.max_pixels``) is a ``DataError`` naming
the shard and sample, or with ``skip_bad`` a counted ``skipped_<problem>_videos`` (the map-style names)."""
from __future__ import annotations

import os
from typing import Any, Callable, Optional

from mm_ptft.data.paired_stream import decode_media, is_tar_sample, media_source, tar_label
from mm_ptft.data.shards import Shard
from mm_ptft.data.stream import sample_seed
from mm_ptft.data.tables import DataError, LabelMap
from mm_ptft.data.video import VideoSampling, make_clip, problem_of
from mm_ptft.types import LABELS, VIDEO, VIDEO_MASK


class VideoRow:
    """A record → ``{video: (T, 3, H, W), video_mask: (T,), labels}`` (random clips with ``train``, the centred
    ones without); a bad label is an error naming the row."""

    def __init__(self, transform: Callable, sampling: VideoSampling, train: bool, path_column: str,
                 label_column: str, labels: LabelMap, skip_bad: bool = False, seed: int = 0) -> None:
        self.transform, self.sampling, self.train = transform, sampling, train
        self.path_column, self.label_column, self.labels = path_column, label_column, labels
        self.skip_bad, self.seed, self.pass_no = skip_bad, seed, 0

    def set_pass(self, pass_no: int) -> None:
        """Called by the stream at each pass: clips differ between passes, never between runs."""
        self.pass_no = pass_no

    def __call__(self, shard: Shard, row: int, record: dict[str, Any], counters: dict[str, int]) -> Optional[dict]:
        raw = tar_label(record, self.label_column) if is_tar_sample(record) else record.get(self.label_column)
        y = self.labels.encode([raw], shard.name, [row])[0]
        try:
            source, name = media_source(shard, row, record, "video", self.path_column)
            with sample_seed(self.seed, self.pass_no, os.path.basename(shard.path), shard.index, row):
                video, mask = decode_media(lambda s: make_clip(s, self.sampling, self.transform, self.train),
                                           source, name)
        except DataError as err:
            if not self.skip_bad:
                raise
            key = f"skipped_{problem_of(err)}_videos"
            counters[key] = counters.get(key, 0) + 1
            return None
        return {VIDEO: video, VIDEO_MASK: mask, LABELS: y}  # (T, 3, H, W), (T,)
