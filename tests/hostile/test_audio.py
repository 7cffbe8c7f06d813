"""Hostile audio: every WAV/FLAC sub-format soundfile writes, OGG/MP3, channel counts, sample rates, lengths,
non-finite and out-of-range samples, and broken files. Valid files decode to the written signal (lossless:
sample for sample; lossy: a 440 Hz sine keeps its FFT peak), resampled to the target rate; broken ones are
a DataError naming the file and the manifest row, or a counted skip. Silence and float samples beyond
full scale are valid and kept as written (no clipping, no error)."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from mm_ptft.data.audio import check_clip, load_waveform, normalize_waveform, read_audio
from mm_ptft.data.multimodal import MediaConfig, load_audio
from mm_ptft.data.tables import DataError

SR = 16000


def sine(n: int, rate: int, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.float32)


def peak_hz(x: np.ndarray, rate: int) -> float:
    """Frequency of the largest FFT bin (the independent reference for 'the tone survived')."""
    spec = np.abs(np.fft.rfft(np.asarray(x, np.float64) * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[spec.argmax()])


# id: (format, subtype, rate, max abs error vs the source (None: lossy, the FFT peak is checked instead))
FORMATS = {
    "wav-PCM_U8": ("WAV", "PCM_U8", SR, 1 / 64), "wav-PCM_16": ("WAV", "PCM_16", SR, 1e-4),
    "wav-PCM_24": ("WAV", "PCM_24", SR, 1e-6), "wav-PCM_32": ("WAV", "PCM_32", SR, 1e-6),
    "wav-FLOAT": ("WAV", "FLOAT", SR, 0), "wav-DOUBLE": ("WAV", "DOUBLE", SR, 1e-7),
    "wav-ULAW": ("WAV", "ULAW", SR, 0.03), "wav-ALAW": ("WAV", "ALAW", SR, 0.03),
    "wav-IMA_ADPCM": ("WAV", "IMA_ADPCM", SR, None), "wav-MS_ADPCM": ("WAV", "MS_ADPCM", SR, None),
    "wav-GSM610": ("WAV", "GSM610", 8000, None),
    "flac-PCM_S8": ("FLAC", "PCM_S8", SR, 1 / 64), "flac-PCM_16": ("FLAC", "PCM_16", SR, 1e-4),
    "flac-PCM_24": ("FLAC", "PCM_24", SR, 1e-6),
    "ogg-VORBIS": ("OGG", "VORBIS", SR, None), "ogg-OPUS": ("OGG", "OPUS", 48000, None),
    "mp3": ("MP3", "MPEG_LAYER_III", SR, None),
}


@pytest.mark.parametrize("case", sorted(FORMATS))
def test_subformat_decodes_to_the_written_signal(tmp_path, case):
    fmt, subtype, rate, tol = FORMATS[case]
    if not sf.check_format(fmt, subtype):
        pytest.skip(f"this libsndfile cannot write {fmt}/{subtype}")
    x = sine(rate // 2, rate)
    path = str(tmp_path / f"x.{fmt.lower()}")
    sf.write(path, x, rate, format=fmt, subtype=subtype)
    data, got_rate = read_audio(path)
    assert got_rate == rate and data.dtype == np.float32 and data.shape[1] == 1
    y = data[:, 0]
    if tol is not None:
        assert len(y) == len(x) and np.abs(y - x).max() <= tol
    else:  # lossy / block codecs: length within a block or codec delay, the tone where it was
        assert len(x) * 0.9 <= len(y) <= len(x) * 1.5 and abs(peak_hz(y, rate) - 440) < 10


@pytest.mark.parametrize("channels", [1, 2, 6])
@pytest.mark.parametrize("fmt", ["WAV", "FLAC"])
def test_channels_are_mixed_to_their_mean(tmp_path, fmt, channels):
    n = SR // 10
    x = np.stack([sine(n, SR, 200 + 100 * c, 0.1) for c in range(channels)], 1)  # (T, C)
    path = str(tmp_path / f"x.{fmt.lower()}")
    sf.write(path, x, SR, format=fmt, subtype="PCM_24")
    np.testing.assert_allclose(load_waveform(path, SR).numpy(), x.mean(1), atol=1e-5)
    counters: dict[str, int] = {}
    assert check_clip(0, path, path, SR, 0, 0, False, True, counters) == (path, n)
    assert counters == ({"downmixed_to_mono": 1} if channels > 1 else {})


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000, 96000])
def test_sample_rates_are_resampled_to_the_target(tmp_path, rate):
    n = rate // 4  # 0.25 s
    path = str(tmp_path / "x.wav")
    sf.write(path, sine(n, rate), rate, subtype="PCM_16")
    wav = load_waveform(path, SR).numpy()
    assert abs(len(wav) - n * SR / rate) <= 1 and abs(peak_hz(wav, SR) - 440) < 8
    counters: dict[str, int] = {}
    _, samples = check_clip(0, path, path, SR, 0, 0, False, True, counters)
    assert abs(samples - len(wav)) <= 1 and counters == {"resampled": 1}


# ---- lengths: drops and crops are counted, never silent ------------------------------------------------------
@pytest.mark.parametrize("n,min_s,max_s,outcome", [
    (1, 0.025, 0, "dropped_too_short"), (SR // 100, 0.025, 0, "dropped_too_short"), (SR // 100, 0.0, 0, "kept"),
    (SR * 31, 0.0, 30.0, "dropped_too_long"), (SR * 31, 0.0, 0, "kept"),
], ids=["1-sample", "10ms-under-min", "10ms-no-min", "31s-over-max", "31s-no-max"])
def test_length_limits_are_counted(tmp_path, n, min_s, max_s, outcome):
    path = str(tmp_path / "x.wav")
    sf.write(path, np.zeros(n, np.float32) + 0.1, SR, subtype="PCM_16")
    counters: dict[str, int] = {}
    found = check_clip(4, path, "m.csv", SR, min_s, max_s, False, True, counters)
    assert (found == (path, n)) if outcome == "kept" else (found is None and counters == {outcome: 1})


def test_long_clip_is_cropped_by_the_multimodal_loader(tmp_path):
    path = str(tmp_path / "x.wav")
    sf.write(path, sine(8000 * 3, 8000), 8000, subtype="PCM_16")
    assert load_audio(path, MediaConfig(sample_rate=8000, max_audio_seconds=1.0)).shape == (8000,)


def test_silence_is_valid_and_normalises_to_zeros(tmp_path):
    path = str(tmp_path / "x.wav")
    sf.write(path, np.zeros(SR // 10, np.float32), SR, subtype="PCM_16")
    wav = load_waveform(path, SR)
    assert wav.abs().max() == 0 and normalize_waveform(wav).abs().max() == 0


def test_float_samples_beyond_full_scale_are_kept(tmp_path):
    path = str(tmp_path / "x.wav")
    x = np.array([0.0, 1.5, -2.0, 0.25] * 100, np.float32)
    sf.write(path, x, SR, subtype="FLOAT")
    np.testing.assert_array_equal(read_audio(path)[0][:, 0], x)


# ---- broken files: DataError naming the file and row, or a counted skip --------------------------------------
def _wav_bytes(x=None, subtype="PCM_16") -> bytes:
    import io

    b = io.BytesIO()
    sf.write(b, sine(SR // 10, SR) if x is None else x, SR, format="WAV", subtype=subtype)
    return b.getvalue()


def _rate_zero() -> bytes:
    b = bytearray(_wav_bytes())
    b[24:28] = (0).to_bytes(4, "little")  # the fmt chunk's sample rate
    return bytes(b)


def _cut(fmt: str, subtype: str) -> bytes:
    """The first half of a compressed file (the MP3 decoder used to stop there silently)."""
    import io

    b = io.BytesIO()
    sf.write(b, sine(SR, SR), SR, format=fmt, subtype=subtype)
    return b.getvalue()[: len(b.getvalue()) // 2]


BROKEN = {  # id: (file name, bytes (None: no file), message pattern)
    "zero-samples": ("x.wav", _wav_bytes(np.zeros(0, np.float32)), r"empty audio|unreadable audio"),
    "zero-byte": ("x.wav", b"", r"unreadable audio"),
    "truncated-header": ("x.wav", _wav_bytes()[:20], r"unreadable audio"),
    "truncated-data": ("x.wav", _wav_bytes()[:1000], r"truncated WAV"),
    "rate-0-header": ("x.wav", _rate_zero(), r"unreadable audio"),
    "nan-samples": ("x.wav", _wav_bytes(np.array([0.1, np.nan] * 400, np.float32), "FLOAT"), r"NaN or Inf"),
    "inf-samples": ("x.wav", _wav_bytes(np.array([0.1, np.inf] * 400, np.float32), "FLOAT"), r"NaN or Inf"),
    "text-named-wav": ("x.wav", b"hello, this is text\n" * 10, r"unreadable audio"),
    "text-named-mp3": ("x.mp3", b"hello, this is text\n" * 10, r"unreadable audio"),
    "text-named-ogg": ("x.ogg", b"OggS but not really\n" * 10, r"unreadable audio"),
    "missing": ("gone.wav", None, r"audio file not found"),
    "truncated-flac": ("x.flac", _cut("FLAC", "PCM_16"), r"unreadable audio|truncated audio"),
    "truncated-ogg": ("x.ogg", _cut("OGG", "VORBIS"), r"unreadable audio|truncated audio"),
    "truncated-mp3": ("x.mp3", _cut("MP3", "MPEG_LAYER_III"), r"truncated audio"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_audio_is_an_error_naming_file_and_row_or_a_counted_skip(tmp_path, case):
    name, data, message = BROKEN[case]
    path = tmp_path / name
    if data is not None:
        path.write_bytes(data)
    with pytest.raises(DataError, match=rf"m\.csv: row 9: .*{name}.*({message})"):
        check_clip(9, str(path), "m.csv", SR, 0, 0, False, True, {})
    counters: dict[str, int] = {}
    assert check_clip(9, str(path), "m.csv", SR, 0, 0, True, True, counters) is None
    assert counters == {"skipped_bad_audio": 1}
