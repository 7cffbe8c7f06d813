"""Audio data: soundfile decoding with bad-file checks, mono mixdown, torchaudio resampling,
log-mel features, augmentation (speed, noise, SpecAugment) and a padding collator.

Manifests are tables (CSV/JSONL/...) with an audio-path column (relative to the manifest) and a
transcript column, loaded with ``mm_ptft.data.tables.load_table``. Decoding uses ``soundfile``
(not ``datasets``' Audio feature, which needs torchcodec + FFmpeg).
"""
from __future__ import annotations

import os
import random
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mm_ptft.data.remote import media_file, resolve
from mm_ptft.data.tables import DataError, column, require_columns, rows_of
from mm_ptft.env import require_torchaudio
from mm_ptft.types import AUDIO, AUDIO_LENGTHS, LABEL_LENGTHS, LABELS, TRANSCRIPTS


def count(counters: dict[str, int], key: str, n: int = 1) -> None:
    counters[key] = counters.get(key, 0) + n


@dataclass
class AugmentConfig:
    """Training-time augmentation; every part is off by default."""

    RANGES: ClassVar[dict[str, str]] = {
        "speed_factors": ">0", "noise_prob": "[0, 1]", "freq_mask_width": ">=0", "freq_masks": ">=0",
        "time_mask_width": ">=0", "time_masks": ">=0"
    }  # checked by config.parse
    speed_factors: list[float] = field(default_factory=list)  # e.g. [0.9, 1.0, 1.1]: one drawn per clip
    noise_prob: float = 0.0  # probability of adding white noise to a clip
    noise_snr_db: list[float] = field(default_factory=lambda: [10.0, 30.0])  # SNR drawn uniformly in [lo, hi]
    freq_mask_width: int = 0  # SpecAugment: max mel bins per frequency mask (features input only)
    freq_masks: int = 2
    time_mask_width: int = 0  # SpecAugment: max frames per time mask
    time_masks: int = 2


# ---- decoding -----------------------------------------------------------------------------------


def wav_truncated(path: str) -> bool:
    """True when a RIFF/WAVE file's ``data`` chunk declares more bytes than the file holds
    (libsndfile silently reads what is there, so truncation needs this header check)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return False
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return False
            cid, n = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"data":
                return n != 0xFFFFFFFF and f.tell() + n > size  # 0xFFFFFFFF: streamed, size unknown
            f.seek(n + (n & 1), os.SEEK_CUR)


def read_audio(path: str) -> tuple[np.ndarray, int]:
    """Decode ``path`` with soundfile → (samples (T, C) float32, sample rate); DataError naming the
    file when it is unreadable, empty, truncated (fewer samples than the header declares) or holds NaN/Inf
    samples."""
    name, path = path, media_file(path)  # a URL: its local copy
    if not os.path.isfile(path):
        raise DataError(f"{name}: audio file not found")
    if path.lower().endswith(".wav") and wav_truncated(path):
        raise DataError(f"{name}: truncated WAV (the data chunk is shorter than its header says)")
    return decode_audio(path, name)


def decode_audio(source: Any, name: str) -> tuple[np.ndarray, int]:
    """``read_audio``'s decoding and checks on a path or file object (e.g. a WebDataset sample's bytes in a
    ``BytesIO``); ``name`` is how errors call it."""
    import soundfile as sf

    try:
        data, rate = sf.read(source, dtype="float32", always_2d=True)  # (T, C)
        if hasattr(source, "seek"):
            source.seek(0)
        declared = sf.info(source).frames
    except Exception as err:  # soundfile raises LibsndfileError / RuntimeError subclasses
        raise DataError(f"{name}: unreadable audio ({err})") from err
    if data.shape[0] == 0:
        raise DataError(f"{name}: empty audio (0 samples)")
    if data.shape[0] < declared:  # e.g. a cut MP3: the decoder stops early without an error
        raise DataError(f"{name}: truncated audio ({data.shape[0]} of the {declared} samples its header declares)")
    if not np.isfinite(data).all():
        raise DataError(f"{name}: audio contains NaN or Inf samples")
    return data, int(rate)


def probe(path: str) -> tuple[int, int, int]:
    """(frames, sample rate, channels) from the file header only (cheap; for duration filters)."""
    import soundfile as sf

    name, path = path, media_file(path)  # a URL: its local copy
    if not os.path.isfile(path):
        raise DataError(f"{name}: audio file not found")
    try:
        info = sf.info(path)
    except Exception as err:
        raise DataError(f"{name}: unreadable audio ({err})") from err
    if info.frames <= 0:
        raise DataError(f"{name}: empty audio (0 samples)")
    return int(info.frames), int(info.samplerate), int(info.channels)


def load_waveform(path: Any, sample_rate: int) -> torch.Tensor:
    """Decoded, mono-mixed (channel mean) waveform (T,) resampled to ``sample_rate`` with torchaudio; ``path``
    may also be a ``(file object, name)`` pair (``decode_audio``)."""
    torchaudio = require_torchaudio("audio resampling")

    data, rate = decode_audio(*path) if isinstance(path, tuple) else read_audio(path)
    wav = torch.from_numpy(data).mean(1)  # (T,)
    if rate != sample_rate:
        wav = torchaudio.functional.resample(wav, rate, sample_rate)  # (T * sample_rate / rate,)
    return wav


# ---- transforms ---------------------------------------------------------------------------------


def normalize_waveform(wav: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per utterance (what wav2vec2-family models expect). (T,) → (T,)"""
    return (wav - wav.mean()) / (wav.std() + 1e-7)


def spec_augment(feats: torch.Tensor, aug: AugmentConfig) -> torch.Tensor:
    """SpecAugment with torchaudio's masking transforms: ``freq_masks`` masks of up to
    ``freq_mask_width`` mel bins and ``time_masks`` of up to ``time_mask_width`` frames. (F, N) → (F, N)"""
    torchaudio = require_torchaudio("SpecAugment")

    x = feats.unsqueeze(0)  # (1, F, N)
    if aug.freq_mask_width > 0:
        fm = torchaudio.transforms.FrequencyMasking(aug.freq_mask_width)
        for _ in range(aug.freq_masks):
            x = fm(x)
    if aug.time_mask_width > 0:
        tm = torchaudio.transforms.TimeMasking(min(aug.time_mask_width, x.shape[-1]))
        for _ in range(aug.time_masks):
            x = tm(x)
    return x.squeeze(0)


class AudioPipeline:
    """Path → model input: decode, mono, resample, (train) speed + noise, then either the
    normalised waveform (T,) or normalised log-mel features (F, N) with optional SpecAugment."""

    def __init__(self, sample_rate: int, input_kind: str, n_mels: int = 0, aug: Optional[AugmentConfig] = None,
                 train: bool = False) -> None:
        torchaudio = require_torchaudio("audio features")

        from mm_ptft.features.audio import LogMel

        self.sample_rate, self.input_kind = sample_rate, input_kind
        self.aug, self.train = aug or AugmentConfig(), train
        self.logmel = LogMel(sample_rate, n_mels) if input_kind == "features" else None
        self.speed = {f: torchaudio.transforms.Resample(round(sample_rate * f), sample_rate)  # kernels built once
                      for f in self.aug.speed_factors if f != 1.0}
        if input_kind != "features" and (self.aug.freq_mask_width or self.aug.time_mask_width):
            raise DataError("data.augment: SpecAugment needs a features-input encoder; for waveform models use "
                            "their own masking (e.g. model.audio.config.mask_time_prob for HF wav2vec2)")

    def input_length(self, samples: int) -> int:
        """Length of the model input (samples or feature frames) for a clip of ``samples``."""
        return samples // self.logmel.hop + 1 if self.logmel is not None else samples

    def augment_waveform(self, wav: torch.Tensor) -> torch.Tensor:
        """Speed perturbation (resampling, as Kaldi's) and white noise at a random SNR. (T,) → (T',)"""
        torchaudio = require_torchaudio("audio augmentation")

        a = self.aug
        if a.speed_factors:
            factor = random.choice(list(a.speed_factors))
            if factor != 1.0:  # ``factor`` times faster: read as rate * factor, resample to rate
                wav = self.speed[factor](wav)  # (T / factor,)
        if a.noise_prob > 0 and random.random() < a.noise_prob:
            snr = torch.tensor([random.uniform(*a.noise_snr_db)])
            noise = torch.randn_like(wav)
            wav = torchaudio.functional.add_noise(wav[None], noise[None], snr)[0]  # (T,)
        return wav

    def __call__(self, path: str) -> torch.Tensor:
        return self.process(load_waveform(path, self.sample_rate))

    def process(self, wav: torch.Tensor) -> torch.Tensor:
        """A decoded mono waveform (T,) at ``sample_rate`` → the model input (train: augmented)."""
        if self.train:
            wav = self.augment_waveform(wav)
        if self.logmel is None:
            return normalize_waveform(wav)  # (T,)
        feats = self.logmel(wav[None])[0]  # (F, N)
        feats = (feats - feats.mean(-1, keepdim=True)) / (feats.std(-1, keepdim=True) + 1e-5)
        return spec_augment(feats, self.aug) if self.train else feats  # (F, N)


# ---- manifests ----------------------------------------------------------------------------------


@dataclass
class Clip:
    path: str
    text: str
    labels: list[int]
    samples: int  # at the pipeline's sample rate


def scan_clips(paths: Sequence[str], manifest: str, sample_rate: int, min_s: float, max_s: float,
               skip_bad: bool, check_audio: bool, counters: dict[str, int],
               rows: Optional[Sequence[int]] = None) -> list[tuple[int, str, int]]:
    """(index into ``paths``, absolute path, samples at ``sample_rate``) of usable clips: bad files raise a
    DataError naming the file and its row in the manifest (``rows[i]``, default ``i``) or are counted
    skips; out-of-range durations are counted drops."""
    kept = []
    for i, rel in enumerate(paths):
        row = rows[i] if rows is not None else i
        found = check_clip(row, rel, manifest, sample_rate, min_s, max_s, skip_bad, check_audio, counters)
        if found is not None:
            kept.append((i, *found))
    return kept


def check_clip(row: int, rel: Any, manifest: str, sample_rate: int, min_s: float, max_s: float, skip_bad: bool,
               check_audio: bool, counters: dict[str, int]) -> Optional[tuple[str, int]]:
    """(absolute path, samples at ``sample_rate``) of one manifest clip, or None for a counted skip or
    drop. A missing, unreadable, empty (0 samples), truncated or NaN/Inf file (the last two found when
    ``check_audio`` decodes it) is a DataError naming the file and ``row``, or with ``skip_bad`` a counted
    ``skipped_bad_audio``; a clip shorter than ``min_s`` or longer than ``max_s`` (> 0) a counted drop."""
    try:
        if not rel:
            raise DataError("empty audio path")
        path = resolve(str(rel), manifest)  # relative to the manifest's folder (a remote one's too)
        frames, rate, channels = probe(path)
        if check_audio:
            read_audio(path)
    except DataError as err:
        if not skip_bad:
            raise DataError(f"{manifest}: row {row}: {err} "
                            "(set data.skip_bad_samples=true to skip bad files)") from None
        count(counters, "skipped_bad_audio")
        return None
    seconds = frames / rate
    if seconds < min_s or (max_s > 0 and seconds > max_s):
        count(counters, "dropped_too_short" if seconds < min_s else "dropped_too_long")
        return None
    if rate != sample_rate:
        count(counters, "resampled")
    if channels > 1:
        count(counters, "downmixed_to_mono")
    return path, round(frames * sample_rate / rate)


def manifest_clips(ds: Any, manifest: str, d: Any, sample_rate: int, normalize: Callable[[str], str],
                   counters: dict[str, int]) -> Iterator[tuple[int, str, int, str]]:
    """(manifest row, absolute path, samples at ``sample_rate``, normalised transcript) of each usable clip of a
    manifest table (``d``: the speech data section's columns, durations and checks, ``scan_clips``); an empty or
    missing transcript is a DataError naming the row and file, or with ``d.skip_bad_samples`` a counted
    ``skipped_empty_transcript``."""
    require_columns(ds, [d.audio_column, d.text_column], manifest)
    texts = column(ds, d.text_column)
    rows = rows_of(ds) or list(range(len(ds)))  # the manifest's own rows, for messages
    found = scan_clips(column(ds, d.audio_column), manifest, sample_rate, d.min_duration, d.max_duration,
                       d.skip_bad_samples, d.check_audio, counters, rows)
    for i, path, samples in found:
        text = normalize(texts[i] or "")
        if text:
            yield rows[i], path, samples, text
        elif not d.skip_bad_samples:
            raise DataError(f"{manifest}: row {rows[i]}: empty transcript of {path} (in a folder: its metadata's "
                            f"transcription cell, or a .txt / .lab beside the clip; set data.skip_bad_samples=true "
                            f"to skip)")
        else:
            count(counters, "skipped_empty_transcript")


CLIP_FEATURES = {"path": "string", "text": "string", "labels": "int32[]", "samples": "int64"}  # a clip as a table row


def clip_columns(clips: Sequence[Clip]) -> dict[str, list]:
    """``clips`` as table columns (``CLIP_FEATURES``), e.g. for the preprocessing cache."""
    return {"path": [c.path for c in clips], "text": [c.text for c in clips], "labels": [c.labels for c in clips],
            "samples": [c.samples for c in clips]}


class ClipTable(Sequence[Clip]):
    """Clips kept as a table (``clip_columns``; ``table_cache.ArrowRecords``, memory-mapped when it came from the
    cache): a ``Clip`` read per index, the sample counts as one column."""

    def __init__(self, records: Any) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: Any) -> Clip:
        return Clip(**self.records[i])

    def lengths(self) -> list[int]:
        return self.records.column("samples").tolist()


class AudioDataset(Dataset):
    """Clips (a list, or a ``ClipTable``) decoded on access through an ``AudioPipeline``."""

    def __init__(self, clips: Sequence[Clip], pipeline: AudioPipeline) -> None:
        self.clips, self.pipeline = clips, pipeline

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict[str, Any]:
        c = self.clips[i]
        return {AUDIO: self.pipeline(c.path), LABELS: c.labels, TRANSCRIPTS: c.text}

    def lengths(self) -> list[int]:
        return self.clips.lengths() if isinstance(self.clips, ClipTable) else [c.samples for c in self.clips]


def clip_dataset(records: Any, pipe: AudioPipeline) -> Optional[AudioDataset]:
    """Clips of a checked table (``clip_columns``; memory-mapped when it came from the preprocessing cache) decoded
    through ``pipe`` on access; ``.cache`` is the entry's status (``check-data`` reports it)."""
    if records is None:
        return None
    ds = AudioDataset(ClipTable(records), pipe)
    ds.cache = records.cache
    return ds


class AudioCollator:
    """Pads waveforms (B, T) or features (B, F, N) with zeros, and label ids (B, S) with ``pad_id``."""

    def __init__(self, pad_id: int = 0) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        lengths = torch.tensor([it[AUDIO].shape[-1] for it in items])  # (B,)
        first = items[0][AUDIO]
        audio = first.new_zeros((len(items), *first.shape[:-1], int(lengths.max())))  # (B, [F,] T)
        for i, it in enumerate(items):
            audio[i, ..., : it[AUDIO].shape[-1]] = it[AUDIO]
        batch: dict[str, Any] = {AUDIO: audio, AUDIO_LENGTHS: lengths}
        if LABELS in items[0]:
            label_lengths = torch.tensor([len(it[LABELS]) for it in items])  # (B,)
            labels = torch.full((len(items), max(int(label_lengths.max()), 1)), self.pad_id, dtype=torch.long)
            for i, it in enumerate(items):
                labels[i, : len(it[LABELS])] = torch.as_tensor(it[LABELS], dtype=torch.long)
            batch.update({LABELS: labels, LABEL_LENGTHS: label_lengths})
        if TRANSCRIPTS in items[0]:
            batch[TRANSCRIPTS] = [it[TRANSCRIPTS] for it in items]
        return batch
