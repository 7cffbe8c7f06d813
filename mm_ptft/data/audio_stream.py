"""Streamed speech-recognition samples (``data.stream`` map function): a WebDataset sample (``{key}.flac|wav|…``
+ ``{key}.txt``) or a manifest row (audio path relative to the shard's folder + transcript) →
``{audio, labels, transcripts}``, checked as the in-memory path checks a clip: an unreadable, empty,
truncated or NaN/Inf file is an error naming the shard and sample or (``skip_bad``) a counted
``skipped_bad_audio``; durations outside [min, max] and clips too short for their transcript under CTC are
counted drops; an empty transcript is an error or a counted skip. Augmentation (speed, noise, SpecAugment) is
seeded per sample (``data.stream.sample_seed``), so a resumed run continues exactly."""
from __future__ import annotations

import os
from typing import Any, Callable, Optional

import torch

from mm_ptft.data.audio import AudioPipeline, count, load_waveform
from mm_ptft.data.paired_stream import decode_media, is_tar_sample, media_source
from mm_ptft.data.shards import Shard
from mm_ptft.data.stream import sample_seed
from mm_ptft.data.tables import DataError
from mm_ptft.types import AUDIO, LABELS, TRANSCRIPTS


class ClipRow:
    """A record → one CTC training/eval sample. ``normalize(text)`` is the transcript normalisation,
    ``vocab.encode(text) -> (ids, unknown)`` the targets, ``frames(input length)`` the encoder's output length
    and ``needed(ids)`` the frames CTC needs for them; ``d`` the recipe's data config."""

    def __init__(self, pipeline: AudioPipeline, vocab: Any, normalize: Callable[[str], str],
                 frames: Callable[[int], int], needed: Callable[[list[int]], int], d: Any, seed: int = 0) -> None:
        self.pipe, self.vocab, self.normalize, self.frames, self.needed = pipeline, vocab, normalize, frames, needed
        self.d, self.seed, self.pass_no = d, seed, 0

    def set_pass(self, pass_no: int) -> None:
        self.pass_no = pass_no

    def text_of(self, record: dict[str, Any]) -> str:
        value = record.get("txt") if is_tar_sample(record) else record.get(self.d.text_column)
        value = value.decode("utf-8") if isinstance(value, bytes) else value
        return self.normalize(value or "")

    def targets(self, text: str, counters: dict[str, int]) -> list[int]:
        """The CTC label ids of ``text`` (characters outside the vocabulary dropped, counted)."""
        ids, unknown = self.vocab.encode(text)
        if unknown:
            count(counters, "unknown_characters_dropped", unknown)
        return ids

    def keep(self, wav: torch.Tensor, ids: list[int], where: str, counters: dict[str, int]) -> bool:
        """False (a counted drop) for a clip too short for its transcript under CTC."""
        if self.frames(self.pipe.input_length(wav.shape[-1])) < self.needed(ids):
            count(counters, "dropped_too_short_for_transcript")
            return False
        return True

    def _waveform(self, shard: Shard, row: int, record: dict[str, Any]) -> torch.Tensor:
        source, name = media_source(shard, row, record, "audio", self.d.audio_column)
        rate = self.pipe.sample_rate
        return decode_media(lambda s: load_waveform(s if isinstance(s, str) else (s, name), rate), source, name)

    def __call__(self, shard: Shard, row: int, record: dict[str, Any], counters: dict[str, int]) -> Optional[dict]:
        d = self.d
        text = self.text_of(record)
        if not text:
            if not d.skip_bad_samples:
                raise DataError(f"{shard.name}: row {row}: empty transcript (set data.skip_bad_samples=true to skip)")
            count(counters, "skipped_empty_transcript")
            return None
        try:
            wav = self._waveform(shard, row, record)  # (T,)
        except DataError:
            if not d.skip_bad_samples:
                raise
            count(counters, "skipped_bad_audio")
            return None
        seconds = wav.shape[-1] / self.pipe.sample_rate
        if seconds < d.min_duration or (d.max_duration > 0 and seconds > d.max_duration):
            count(counters, "dropped_too_short" if seconds < d.min_duration else "dropped_too_long")
            return None
        ids = self.targets(text, counters)
        if not self.keep(wav, ids, f"{shard.name}: row {row}", counters):
            return None
        with sample_seed(self.seed, self.pass_no, os.path.basename(shard.path), shard.index, row):
            return {AUDIO: self.pipe.process(wav), LABELS: ids, TRANSCRIPTS: text}
