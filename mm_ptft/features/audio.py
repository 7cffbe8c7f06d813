"""Audio features shared by the data pipeline and the audio encoders (one module both import from below):
log-mel spectrograms, per-utterance normalisation and valid-length helpers."""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn

from mm_ptft.env import require_torchaudio
from mm_ptft.types import AUDIO_LENGTHS


def lengths_to_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """(B,) valid lengths → (B, size) mask, True where a position is real."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]  # (B, size)


def batch_lengths(batch: Mapping[str, Any], x: torch.Tensor) -> torch.Tensor:
    """``audio_lengths`` from the batch, or the full last-axis length for every row."""
    lengths = batch.get(AUDIO_LENGTHS)
    if lengths is None:
        return torch.full((x.shape[0],), x.shape[-1], dtype=torch.long, device=x.device)
    return lengths.to(x.device).long()


def constant_buffers(module: nn.Module) -> None:
    """Re-register the fixed STFT window / mel filterbank buffers as non-persistent copies: they are
    rebuilt from the config, and safetensors refuses the window's shared storage."""
    for sub in module.modules():
        for name, buf in list(sub.named_buffers(recurse=False)):
            sub.register_buffer(name, buf.clone(), persistent=False)


class LogMel(nn.Module):
    """Waveform (B, T) → log-mel (B, F, N) via ``torchaudio.transforms.MelSpectrogram``."""

    def __init__(self, sample_rate: int, n_mels: int, win_ms: float = 25.0, hop_ms: float = 10.0) -> None:
        super().__init__()
        torchaudio = require_torchaudio("log-mel features")

        self.hop = int(sample_rate * hop_ms / 1000)
        n_fft = 2 ** math.ceil(math.log2(sample_rate * win_ms / 1000))
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate, n_fft=n_fft, win_length=int(sample_rate * win_ms / 1000), hop_length=self.hop,
            n_mels=n_mels, center=True, pad_mode="constant")  # zeros: padding a batch adds is the same
        constant_buffers(self.mel)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        with torch.autocast(wav.device.type, enabled=False):
            return torch.log(self.mel(wav.float()) + 1e-6)  # (B, F, N)

    def out_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return lengths // self.hop + 1  # center=True pads n_fft // 2 on both sides


def masked_normalize(feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per-utterance, per-bin mean/variance normalisation over real frames; padding set to 0.
    feats (B, F, N), lengths (B,) → (B, F, N)."""
    m = lengths_to_mask(lengths, feats.shape[-1]).unsqueeze(1).to(feats.dtype)  # (B, 1, N)
    count = m.sum(-1, keepdim=True).clamp_min(1)  # (B, 1, 1)
    mean = (feats * m).sum(-1, keepdim=True) / count  # (B, F, 1)
    var = (((feats - mean) * m) ** 2).sum(-1, keepdim=True) / count  # (B, F, 1)
    return (feats - mean) / (var + 1e-5).sqrt() * m  # (B, F, N)
