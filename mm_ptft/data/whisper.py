"""Whisper's side of the speech data path: a decoded clip → the processor's log-mel window, with the speech recipe's
augmentation (speed and noise on the waveform before the features, SpecAugment on them after), and the checks a
fixed-window encoder-decoder needs (a clip over the window, a transcript over the decoder's positions).

The feature extractor is the model's own ``WhisperFeatureExtractor`` (any feature-extractor object with
``sampling_rate``, ``n_samples`` and ``__call__(wav, sampling_rate=...)`` works), so training, evaluation,
``predict`` and transformers' ``pipeline`` on the exported directory all see the same features."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import numpy as np
import torch

from mm_ptft.data.audio import AudioPipeline, AugmentConfig, count, spec_augment
from mm_ptft.data.audio_stream import ClipRow
from mm_ptft.data.tables import DataError

LONG_AUDIO = ("error", "skip", "chunk")


class WhisperPipeline(AudioPipeline):
    """Decoded mono waveform (T,) at the extractor's rate → log-mel window (F, N): (train) speed + noise, the feature
    extractor (pads or cuts to its window: callers check the length first), (train) SpecAugment."""

    def __init__(self, feature_extractor: Any, aug: Optional[AugmentConfig] = None, train: bool = False) -> None:
        aug = aug or AugmentConfig()
        # the waveform part of AudioPipeline (resampling, speed, noise); the masks apply to Whisper's features here
        super().__init__(int(feature_extractor.sampling_rate), "waveform", 0,
                         dataclasses.replace(aug, freq_mask_width=0, time_mask_width=0), train)
        self.aug, self.fe = aug, feature_extractor

    def features(self, wav: torch.Tensor) -> torch.Tensor:
        """The extractor's log-mel of one window of waveform. (T,) → (F, N)"""
        x = self.fe(wav.numpy().astype(np.float32), sampling_rate=self.sample_rate, return_tensors="np")
        return torch.from_numpy(x.input_features[0])  # (F, N)

    def process(self, wav: torch.Tensor) -> torch.Tensor:
        if self.train:
            wav = self.augment_waveform(wav)  # (T',)
        feats = self.features(wav)  # (F, N)
        return spec_augment(feats, self.aug) if self.train else feats

    def windows(self, wav: torch.Tensor) -> list[torch.Tensor]:
        """``data.long_audio=chunk``: consecutive windows of a long clip, each as features. (T,) → [(F, N), ...]"""
        n = self.fe.n_samples
        return [self.features(wav[i:i + n]) for i in range(0, wav.shape[-1], n)]

    def longest(self, samples: int) -> int:
        """The most samples a clip of ``samples`` can reach after speed perturbation (a 0.9 factor lengthens it)."""
        slowest = min([1.0, *self.aug.speed_factors]) if self.train else 1.0
        return int(np.ceil(samples / slowest))


def fits(samples: int, ids: list[int], pipe: WhisperPipeline, max_labels: int, long_audio: str, skip_bad: bool,
         where: str, counters: dict[str, int]) -> bool:
    """Whether a clip (``samples`` at the extractor's rate) and its decoder targets ``ids`` fit the model: a clip over
    the window (after speed perturbation) is a DataError naming ``where`` (``long_audio=error``) or a counted
    ``skipped_over_window``; targets over the decoder's ``max_labels`` positions a DataError or (``skip_bad``) a
    counted ``skipped_overlong_transcript``."""
    rate, window = pipe.sample_rate, pipe.fe.n_samples
    if pipe.longest(samples) > window:
        if long_audio == "error":
            raise DataError(f"{where}: {pipe.longest(samples) / rate:.2f} s of audio (after speed perturbation) is over "
                            f"the model's {window / rate:g} s window; set data.long_audio=skip to drop such clips "
                            f"(chunk: predict transcribes long files window by window)")
        count(counters, "skipped_over_window")
        return False
    if len(ids) > max_labels:
        if not skip_bad:
            raise DataError(f"{where}: the transcript is {len(ids)} tokens, over the decoder's {max_labels} positions "
                            f"(max_target_positions); set data.skip_bad_samples=true to skip such rows")
        count(counters, "skipped_overlong_transcript")
        return False
    return True


class WhisperClipRow(ClipRow):
    """A streamed record → one Whisper sample: ``ClipRow``'s decoding and checks, then ``fits`` instead of CTC's
    frame count. ``encode(text)`` gives the decoder targets."""

    def __init__(self, pipeline: WhisperPipeline, encode: Callable[[str], list[int]], normalize: Callable[[str], str],
                 max_labels: int, d: Any, seed: int = 0) -> None:
        super().__init__(pipeline, None, normalize, len, len, d, seed)
        self.encode, self.max_labels = encode, max_labels

    def targets(self, text: str, counters: dict[str, int]) -> list[int]:
        return self.encode(text)

    def keep(self, wav: torch.Tensor, ids: list[int], where: str, counters: dict[str, int]) -> bool:
        return fits(wav.shape[-1], ids, self.pipe, self.max_labels, self.d.long_audio, self.d.skip_bad_samples, where,
                    counters)


__all__ = ["LONG_AUDIO", "WhisperClipRow", "WhisperPipeline", "fits"]
