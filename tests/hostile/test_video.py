"""Hostile video files: broken (zero-byte, random bytes, text named .mp4, an mp4 cut before its index, a
faststart mp4 and an mkv cut mid-stream, a directory, a missing path), empty (an mkv whose video stream has zero
frames), no video stream (an audio-only mp4, a WAV named .mp4) and a decompression bomb (a 51 KB mp4 of
4112x4112 frames) are each a DataError naming the file (and the table row) or, with data.skip_bad_samples, a
counted ``skipped_<problem>_videos``; valid-but-unusual clips (shorter than num_frames x frame_stride, padded or
looped; a single frame; odd sizes) decode to PyAV's own frames at the sampled indices."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from mm_ptft.data.generated.video import moving_clip, write_video  # noqa: E402
from mm_ptft.data.tables import DataError  # noqa: E402
from mm_ptft.data.video import VideoSampling, check_video, sample_clip, video_problem  # noqa: E402

MKV_CLUSTER = bytes.fromhex("1f43b675")  # the Matroska element that holds frames


def clip(frames: int = 12, h: int = 32, w: int = 32) -> np.ndarray:
    """(T, H, W, 3): a moving shape at 32x32, else frame t a uniform grey 20 t."""
    if (h, w) == (32, 32):
        return moving_clip(random.Random(0), "left", 32, frames, 2.0)
    return np.stack([np.full((h, w, 3), 20 * t, np.uint8) for t in range(frames)])


def put(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def faststart_mp4(path: Path, frames: np.ndarray) -> Path:
    """An mp4 with its index (moov) before the frames, as streaming-friendly encoders write it."""
    with av.open(str(path), "w", options={"movflags": "faststart"}) as c:
        st = c.add_stream("libx264", rate=10, options={"x264-params": "mbtree=0"})
        st.height, st.width, st.pix_fmt = frames.shape[1], frames.shape[2], "yuv420p"
        for f in frames:
            c.mux(st.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
        c.mux(st.encode())
    return path


def audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as c:
        st = c.add_stream("aac", rate=16000)
        for k in range(4):
            fr = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            fr.sample_rate, fr.pts = 16000, k * 1024
            c.mux(st.encode(fr))
        c.mux(st.encode())
    return path


def bomb(path: Path, side: int = 4112) -> Path:
    """One black frame of side x side (> data.sampling.max_pixels = 4096²): a few KB on disk."""
    with av.open(str(path), "w") as c:
        st = c.add_stream("libx264", rate=1, options={"preset": "ultrafast"})
        st.height = st.width = side
        st.pix_fmt = "yuv420p"
        c.mux(st.encode(av.VideoFrame.from_ndarray(np.zeros((side, side, 3), np.uint8), format="rgb24")))
        c.mux(st.encode())
    return path


def cut(src: Path, dst: Path, frac: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * frac)])
    return dst


def make(tmp: Path, case: str) -> Path:
    mp4 = lambda: Path(write_video(str(tmp / "whole.mp4"), clip()))  # noqa: E731
    mkv = lambda: Path(write_video(str(tmp / "whole.mkv"), clip())).read_bytes()  # noqa: E731
    makers = {
        "zero_byte": lambda: put(tmp / "x.mp4", b""),
        "random_bytes": lambda: put(tmp / "x.mp4", np.random.default_rng(0).bytes(4000)),
        "text_named_mp4": lambda: put(tmp / "x.mp4", b"not a video\n" * 50),
        "mp4_cut_before_its_index": lambda: cut(mp4(), tmp / "x.mp4"),  # the moov atom is written last
        "faststart_mp4_cut_mid_stream": lambda: cut(faststart_mp4(tmp / "fs.mp4", clip()), tmp / "x.mp4", 0.8),
        "mkv_cut_mid_stream": lambda: put(tmp / "x.mkv", mkv()[: len(mkv()) // 2]),
        "directory_named_mp4": lambda: (tmp / "d.mp4").mkdir() or tmp / "d.mp4",
        "missing": lambda: tmp / "nope.mp4",
        "mkv_zero_frames": lambda: put(tmp / "x.mkv", mkv()[: mkv().index(MKV_CLUSTER) + 8]),  # an empty cluster
        "audio_only_mp4": lambda: audio_only(tmp / "x.mp4"),
        "wav_named_mp4": lambda: wav_named_mp4(tmp / "x.mp4"),
        "decompression_bomb": lambda: bomb(tmp / "x.mp4"),
    }
    return makers[case]()


def wav_named_mp4(path: Path) -> Path:
    import soundfile

    soundfile.write(str(path), np.zeros(800, np.float32), 8000, format="WAV")
    return path


#: case → the problem it is counted as (``skipped_<problem>_videos``) and what the error says
BAD = {
    "zero_byte": ("empty", "empty video file"),
    "random_bytes": ("corrupt", "unreadable video"),
    "text_named_mp4": ("corrupt", "unreadable video"),
    "mp4_cut_before_its_index": ("corrupt", "unreadable video"),
    "faststart_mp4_cut_mid_stream": ("truncated", "truncated video: its header declares 12 frames"),
    "mkv_cut_mid_stream": ("truncated", "truncated video"),
    "directory_named_mp4": ("missing", "video file not found"),
    "missing": ("missing", "video file not found"),
    "mkv_zero_frames": ("zero_frames", "the video stream has zero frames"),
    "audio_only_mp4": ("no_stream", r"no video stream \(streams: audio\)"),
    "wav_named_mp4": ("no_stream", r"no video stream \(streams: audio\)"),
    "decompression_bomb": ("too_large", "frames of 4112x4112 exceed data.sampling.max_pixels=16777216"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_file_is_named_or_counted(tmp_path, case):
    path = str(make(tmp_path, case))
    problem, message = BAD[case]
    assert video_problem(path) == problem
    with pytest.raises(DataError, match=f"{path}: {message}"):
        sample_clip(path, VideoSampling(num_frames=12, frame_stride=1), False)  # what a training sample reads
    with pytest.raises(DataError, match=rf"train.csv: row 7: {problem.replace('_', ' ')} video file {path}"):
        check_video(7, path, "train.csv", False, {})
    counters: dict[str, int] = {}
    assert check_video(7, path, "train.csv", True, counters) is False
    assert counters == {f"skipped_{problem}_videos": 1}


def pyav(path: str) -> list[np.ndarray]:
    """The independent reference: PyAV's own decode, every frame."""
    with av.open(path) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


#: (mode, short) → (frames in the file, the indices PyAV's frames are taken at, real frames of num_frames=4);
#: stride: 4 frames 2 apart span 7; segments: fewer frames than the 4 segments
SHORT = {("stride", "pad"): (5, [0, 2, 4], 3),  # the frames it has, 2 apart; one padding frame
         ("stride", "loop"): (5, [0, 2, 4, 1], 4),  # (0 + 2k) mod 5
         ("segments", "pad"): (3, [0, 1, 2], 3),  # each frame once, then padding
         ("segments", "loop"): (3, [0, 0, 1, 2], 4)}  # segments [0, .75) [.75, 1.5) [1.5, 2.25) [2.25, 3): middles


@pytest.mark.parametrize("mode, short", sorted(SHORT), ids=["-".join(k) for k in sorted(SHORT)])
def test_a_clip_shorter_than_its_span_is_padded_or_looped(tmp_path, mode, short):
    n, idx, real = SHORT[(mode, short)]
    path = write_video(str(tmp_path / "short.mp4"), clip(n))
    frames, mask = sample_clip(path, VideoSampling(num_frames=4, frame_stride=2, mode=mode, short=short), False)
    ref = pyav(path)
    assert torch.equal(frames, torch.from_numpy(np.stack([ref[i] for i in idx])).permute(0, 3, 1, 2))
    assert mask.tolist() == [True] * real + [False] * (4 - real)


@pytest.mark.parametrize("shape", [(1, 32, 32), (3, 31, 33), (2, 2, 2)], ids=["one_frame", "odd_31x33", "2x2"])
def test_unusual_but_valid_clips_decode_to_pyav_s_frames(tmp_path, shape):
    t, h, w = shape
    frames = clip(t, h, w)
    opts = {} if (h, w) == (32, 32) else {"codec": "libx264rgb", "pix_fmt": "rgb24"}  # yuv420p needs even sides
    path = write_video(str(tmp_path / "x.mp4"), frames, **opts)
    got, mask = sample_clip(path, VideoSampling(num_frames=t, frame_stride=1), False)
    assert torch.equal(got, torch.from_numpy(np.stack(pyav(path))).permute(0, 3, 1, 2)) and mask.all()
