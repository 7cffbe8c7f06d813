"""Audio data: decoding checks, mixdown, resampling, augmentation widths, manifests and counters."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mm_ptft.data.audio import (AudioCollator, AudioPipeline, AugmentConfig, load_waveform, read_audio, scan_clips,
                                spec_augment, wav_truncated)
from mm_ptft.data.tables import DataError
from mm_ptft.types import AUDIO, AUDIO_LENGTHS, LABELS


def _sine(path: Path, rate: int, seconds: float, channels: int = 1, freq: float = 440.0) -> Path:
    t = np.arange(int(rate * seconds)) / rate
    x = 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    sf.write(str(path), np.stack([x] * channels, 1) if channels > 1 else x, rate, subtype="FLOAT")
    return path


def test_resampling_changes_length_by_the_rate_ratio(tmp_path):
    path = _sine(tmp_path / "a.wav", 22050, 1.0)
    wav = load_waveform(str(path), 16000)
    assert wav.shape == (16000,)  # 22050 samples at 22.05 kHz = 1 s = 16000 samples at 16 kHz
    # the tone survives: its spectral peak stays at 440 Hz (bin resolution 1 Hz over 1 s)
    peak = torch.fft.rfft(wav).abs().argmax().item()
    assert abs(peak - 440) <= 1


def test_stereo_is_mixed_down_to_the_channel_mean(tmp_path):
    left, right = np.full(800, 0.2, np.float32), np.full(800, -0.6, np.float32)
    sf.write(str(tmp_path / "s.wav"), np.stack([left, right], 1), 8000, subtype="FLOAT")
    wav = load_waveform(str(tmp_path / "s.wav"), 8000)
    assert wav.shape == (800,) and torch.allclose(wav, torch.full((800,), -0.2))


@pytest.mark.parametrize("kind", ["empty", "truncated", "nan", "garbage", "missing"])
def test_bad_files_raise_a_data_error_naming_the_file(tmp_path, kind):
    path = tmp_path / f"{kind}.wav"
    if kind == "empty":
        sf.write(str(path), np.zeros(0, np.float32), 8000)
    elif kind == "truncated":
        _sine(tmp_path / "full.wav", 8000, 0.5)
        data = (tmp_path / "full.wav").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "nan":
        x = np.zeros(800, np.float32)
        x[10] = np.nan
        sf.write(str(path), x, 8000, subtype="FLOAT")
    elif kind == "garbage":
        path.write_bytes(b"not audio at all" * 20)
    with pytest.raises(DataError, match=f"{kind}.wav"):
        read_audio(str(path))


def test_truncation_check_passes_whole_files(tmp_path):
    assert not wav_truncated(str(_sine(tmp_path / "ok.wav", 8000, 0.3)))


def _manifest(tmp_path: Path) -> tuple[str, list[str]]:
    (tmp_path / "clips").mkdir()
    _sine(tmp_path / "clips" / "ok.wav", 16000, 0.5)
    _sine(tmp_path / "clips" / "long.wav", 16000, 3.0)
    _sine(tmp_path / "clips" / "short.wav", 16000, 0.05)
    _sine(tmp_path / "clips" / "rate.wav", 8000, 0.5)
    _sine(tmp_path / "clips" / "stereo.wav", 16000, 0.5, channels=2)
    (tmp_path / "clips" / "bad.wav").write_bytes(b"RIFF....junk")
    rel = ["clips/ok.wav", "clips/long.wav", "clips/short.wav", "clips/rate.wav", "clips/stereo.wav", "clips/bad.wav"]
    return str(tmp_path / "manifest.csv"), rel


def test_scan_counts_drops_and_skips(tmp_path):
    manifest, rel = _manifest(tmp_path)
    counters: dict[str, int] = {}
    kept = scan_clips(rel, manifest, 16000, 0.1, 2.0, skip_bad=True, check_audio=True, counters=counters)
    assert [Path(p).name for _, p, _ in kept] == ["ok.wav", "rate.wav", "stereo.wav"]
    assert counters == {"dropped_too_long": 1, "dropped_too_short": 1, "resampled": 1, "downmixed_to_mono": 1,
                        "skipped_bad_audio": 1}
    assert [n for _, _, n in kept] == [8000, 8000, 8000]  # 0.5 s each at 16 kHz, whatever the file's rate


def test_scan_without_skip_names_file_and_row(tmp_path):
    manifest, rel = _manifest(tmp_path)
    with pytest.raises(DataError, match=r"row 5: .*bad.wav.*skip_bad_samples"):
        scan_clips(rel, manifest, 16000, 0.1, 2.0, skip_bad=False, check_audio=True, counters={})


def test_spec_augment_masks_at_most_the_configured_widths():
    torch.manual_seed(0)
    aug = AugmentConfig(freq_mask_width=5, freq_masks=1, time_mask_width=7, time_masks=1)
    widest_f = widest_t = 0
    for _ in range(200):
        out = spec_augment(torch.ones(40, 100), aug)  # (F, N)
        masked_rows = int((out == 0).all(1).sum())  # whole mel bins zeroed
        masked_cols = int((out == 0).all(0).sum())  # whole frames zeroed
        zeros = int((out == 0).sum())
        # every zero lies in a masked bin or frame, and the masks are one contiguous band each
        assert zeros == masked_rows * 100 + masked_cols * 40 - masked_rows * masked_cols
        assert masked_rows <= 5 and masked_cols <= 7
        widest_f, widest_t = max(widest_f, masked_rows), max(widest_t, masked_cols)
    assert widest_f >= 4 and widest_t >= 6  # the widths are actually reached


def test_spec_augment_needs_features_input():
    with pytest.raises(DataError, match="SpecAugment"):
        AudioPipeline(16000, "waveform", aug=AugmentConfig(time_mask_width=5), train=True)


def test_speed_perturbation_scales_length(tmp_path):
    path = _sine(tmp_path / "a.wav", 8000, 1.0)
    for factor in (0.9, 1.1):
        pipe = AudioPipeline(8000, "waveform", aug=AugmentConfig(speed_factors=[factor]), train=True)
        assert abs(pipe(str(path)).shape[0] - 8000 / factor) <= 2


def test_noise_reaches_the_drawn_snr(tmp_path):
    path = _sine(tmp_path / "a.wav", 8000, 1.0)
    torch.manual_seed(0)
    pipe = AudioPipeline(8000, "waveform", aug=AugmentConfig(noise_prob=1.0, noise_snr_db=[10.0, 10.0]), train=True)
    clean = load_waveform(str(path), 8000)
    noisy = pipe.augment_waveform(clean)
    snr = 10 * math.log10(float(clean.pow(2).sum() / (noisy - clean).pow(2).sum()))
    assert abs(snr - 10.0) < 0.1


def test_features_pipeline_shape_and_normalisation(tmp_path):
    path = _sine(tmp_path / "a.wav", 8000, 0.5)
    pipe = AudioPipeline(8000, "features", n_mels=20)
    feats = pipe(str(path))
    assert feats.shape == (20, pipe.input_length(4000))  # 4000 // 80 + 1 = 51 frames
    assert feats.shape[1] == 51
    assert torch.allclose(feats.mean(-1), torch.zeros(20), atol=1e-4)


def test_collator_pads_and_keeps_lengths():
    items = [{AUDIO: torch.ones(3, 5), LABELS: [1, 2]}, {AUDIO: torch.ones(3, 2), LABELS: [4]}]
    b = AudioCollator()(items)
    assert b[AUDIO].shape == (2, 3, 5) and b[AUDIO_LENGTHS].tolist() == [5, 2]
    assert b[AUDIO][1, :, 2:].abs().sum() == 0
    assert b[LABELS].tolist() == [[1, 2], [4, 0]] and b["label_lengths"].tolist() == [2, 1]
