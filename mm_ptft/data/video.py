"""Video data: decoding with PyAV (FFmpeg bundled in its wheels: mp4, webm, mkv, avi, …), temporal sampling,
``torchvision.transforms.v2`` on whole clips, a dataset and a collator.

**Frames.** A file's frames are its video stream's frames in presentation order (B-frames reordered by the
decoder), each as 8-bit RGB (``to_ndarray(format="rgb24")``: any pixel format and any size, odd ones
included) turned upright by its display matrix (``VideoFrame.rotation``, counter-clockwise degrees: a phone's
portrait clip comes out portrait). The frame count comes from demuxing (packets, no decoding).

**Sampling** (``VideoSampling``): ``mode: stride`` takes ``num_frames`` frames ``frame_stride`` apart from a
start drawn at random in training and the centred start in evaluation; ``mode: segments`` (TSN) cuts the clip
into ``num_frames`` equal segments and takes a random frame of each in training, each segment's middle frame in
evaluation. ``fps > 0`` first resamples the clip to that rate by timestamps (the frame showing at each instant):
a variable-frame-rate file is then sampled by time, not by frame number. The random draws come from torch's
generator (a loader worker's, which the trainer seeds per epoch; a streamed sample's, seeded per sample by
``data.stream.sample_seed``), so a resumed run draws the same clips. A clip shorter than the sampling span is
``short: pad`` (the frames it has, then zero frames with ``video_mask`` False) or ``short: loop`` (indices wrap
around: every frame real).

**Bad files** (missing, empty, not a container FFmpeg reads, no video stream, zero frames, truncated, frames
larger than ``max_pixels``) raise a ``DataError`` naming the file, or with ``data.skip_bad_samples=true`` are
counted (``skipped_<problem>_videos``) and skipped: at the scan for map-style data, per sample for streams."""
from __future__ import annotations

import bisect
import logging
import os
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, ClassVar, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from mm_ptft.data.folders import EXTS
from mm_ptft.data.remote import local_media, media_file
from mm_ptft.data.tables import DataError
from mm_ptft.types import LABELS, VIDEO, VIDEO_MASK

log = logging.getLogger(__name__)
VIDEO_EXTS = EXTS["video"]
SAMPLING_MODES = ("stride", "segments")
SHORT_CLIPS = ("pad", "loop")


@dataclass
class VideoSampling:
    """Which frames of a clip a sample holds (the module docstring says how each key acts)."""

    RANGES: ClassVar[dict[str, str]] = {"num_frames": ">0", "frame_stride": ">0", "fps": ">=0",
                                        "max_pixels": ">0"}  # checked by config.parse
    num_frames: int = 8
    frame_stride: int = 2  # mode=stride: frames between two sampled ones
    mode: str = "stride"  # stride | segments (TSN: one frame per equal segment)
    short: str = "pad"  # a clip shorter than the span: pad (zero frames, video_mask False) | loop (wrap around)
    fps: float = 0.0  # > 0: resample to this rate by timestamps first (variable frame rate sampled by time)
    max_pixels: int = 4096 * 4096  # decompression limit: a larger frame is a bad file, never decoded

    def check(self, where: str = "data.sampling") -> None:
        """The choices are known ones (a ``ConfigError`` naming the key otherwise)."""
        from mm_ptft.config import ConfigError

        if self.mode not in SAMPLING_MODES:
            raise ConfigError(f"{where}.mode={self.mode!r}: choose one of {', '.join(SAMPLING_MODES)}")
        if self.short not in SHORT_CLIPS:
            raise ConfigError(f"{where}.short={self.short!r}: choose one of {', '.join(SHORT_CLIPS)}")


class VideoInfo(NamedTuple):
    """What demuxing a file says (no frame decoded): frame count, presentation times (s), size, frame rate."""

    num_frames: int
    times: list[float]
    width: int
    height: int
    fps: float


# ---------------------------------------------------------------------------------------- decoding
def _av() -> Any:
    try:
        import av
    except ImportError as err:  # pragma: no cover - the video extra is missing
        raise ImportError("video needs PyAV: pip install 'mm_ptft[video]' (or pip install av)") from err
    return av


Source = Union[str, BinaryIO]  # a path, or an open binary file (a WebDataset member as ``io.BytesIO``)


def _size(source: Source) -> int:
    if isinstance(source, str):
        return os.path.getsize(source)
    here = source.seek(0, os.SEEK_END)
    source.seek(0)
    return here


def _open(path: Source) -> Any:
    """The container at ``path`` (a file name, or a binary file read from its start) and its first video stream,
    or a ``DataError`` naming the file."""
    av = _av()
    name = path
    if isinstance(path, str):
        path = media_file(path)  # a URL: its local copy
        if not os.path.isfile(path):
            raise DataError(f"{name}: video file not found")
    if _size(path) == 0:
        raise DataError(f"{name}: empty video file")
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError, ValueError) as err:
        raise DataError(f"{name}: unreadable video ({type(err).__name__}: {err})") from None
    if not container.streams.video:
        kinds = [st.type for st in container.streams]
        container.close()
        raise DataError(f"{name}: no video stream (streams: {', '.join(kinds) or 'none'})")
    return container, container.streams.video[0]


def probe_video(path: Source, max_pixels: int = VideoSampling.max_pixels) -> VideoInfo:
    """Frame count and presentation times from the packets (no decoding); frames over ``max_pixels`` refused."""
    av = _av()
    container, stream = _open(path)
    with container:
        w, h = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
        if w * h > max_pixels:
            raise DataError(f"{path}: frames of {w}x{h} exceed data.sampling.max_pixels={max_pixels} "
                            f"(a decompression limit; raise it if the file is trusted)")
        base = float(stream.time_base or 0) or 1.0
        try:
            stamps = [p.pts if p.pts is not None else p.dts for p in container.demux(stream) if p.size]
        except (av.FFmpegError, OSError, ValueError) as err:
            raise DataError(f"{path}: unreadable video ({type(err).__name__}: {err})") from None
    if not stamps:
        raise DataError(f"{path}: the video stream has zero frames")
    times = sorted(float(s) * base if s is not None else float(i) for i, s in enumerate(stamps))
    rate = float(stream.average_rate or stream.guessed_rate or 0)
    cut = _truncation(stream, times, rate)
    if cut:
        raise DataError(f"{path}: truncated video: {cut}")
    return VideoInfo(len(times), times, w, h, rate)


def _truncation(stream: Any, times: Sequence[float], rate: float) -> Optional[str]:
    """What the file's own header declares that its packets fall short of (None: they do not): the frame count
    (mp4, avi) or the stream's duration (the DURATION tag of mkv/webm), a frame and a half of slack."""
    declared = int(stream.frames or 0)
    if declared and len(times) < declared:
        return f"its header declares {declared} frames, {len(times)} are in the file"
    tag = (stream.metadata or {}).get("DURATION", "")
    try:
        h, m, sec = tag.split(":")
        seconds = int(h) * 3600 + int(m) * 60 + float(sec)
    except ValueError:
        return None
    step = 1 / rate if rate > 0 else 0.0
    if times[-1] + step < seconds - 1.5 * step - 0.01:
        return f"its header declares {seconds:.3f} s, the frames in it end at {times[-1] + step:.3f} s"
    return None


def upright(frame: Any) -> np.ndarray:
    """One decoded frame as (H, W, 3) uint8 RGB, rotated by its display matrix (counter-clockwise degrees)."""
    rgb = frame.to_ndarray(format="rgb24")  # (H, W, 3)
    turns = int(round((getattr(frame, "rotation", 0) or 0) / 90)) % 4
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def decode_frames(path: Source, indices: Sequence[int], max_pixels: int = VideoSampling.max_pixels) -> torch.Tensor:
    """Frames ``indices`` (presentation order, repeats allowed) of ``path`` as (T, 3, H, W) uint8; decoding stops
    after the last one wanted. A file that ends (or breaks) before it is a ``DataError`` naming it."""
    av = _av()
    wanted, last = set(int(i) for i in indices), max(int(i) for i in indices)
    got: dict[int, np.ndarray] = {}
    container, stream = _open(path)
    with container:
        w, h = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
        if w * h > max_pixels:
            raise DataError(f"{path}: frames of {w}x{h} exceed data.sampling.max_pixels={max_pixels}")
        # FFmpeg's own threads, as many as the process's intra-op threads (1 in a loader worker), not one per CPU
        stream.codec_context.thread_count = torch.get_num_threads()
        stream.thread_type = "AUTO"
        try:
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    got[i] = upright(frame)
                if i >= last:
                    break
        except (av.FFmpegError, OSError, ValueError) as err:
            raise DataError(f"{path}: unreadable video ({type(err).__name__}: {err})") from None
    if last not in got:
        raise DataError(f"{path}: truncated video: frame {last} wanted, {len(got) and max(got) + 1} decoded")
    shapes = {a.shape for a in got.values()}
    if len(shapes) > 1:
        raise DataError(f"{path}: frames change size mid-stream ({sorted(shapes)[:3]}); re-encode the file")
    clip = np.stack([got[int(i)] for i in indices])  # (T, H, W, 3)
    return torch.from_numpy(clip).permute(0, 3, 1, 2).contiguous()  # (T, 3, H, W)


def video_problem(path: str, decode: bool = True, max_pixels: int = VideoSampling.max_pixels) -> Optional[str]:
    """Why ``path`` cannot be used as a video (None when it can): missing, empty, no_stream, zero_frames,
    too_large, truncated or (``decode``: every frame decoded once) corrupt. A URL is checked as its local copy."""
    path = local_media(path)
    if path is None or not os.path.isfile(path):
        return "missing"
    if os.path.getsize(path) == 0:
        return "empty"
    try:
        info = probe_video(path, max_pixels)
        if decode:
            decode_frames(path, [info.num_frames - 1], max_pixels)
    except DataError as err:
        return problem_of(err)
    return None


def problem_of(err: DataError) -> str:
    """The kind of a decoding ``DataError`` (``video_problem``'s names; counters say ``skipped_<kind>_videos``)."""
    text = str(err)
    return next((kind for key, kind in (("video file not found", "missing"), ("no video (", "missing"),
                                        ("empty video file", "empty"),
                                        ("no video stream", "no_stream"), ("zero frames", "zero_frames"),
                                        ("max_pixels", "too_large"), ("truncated", "truncated")) if key in text),
                "corrupt")


def check_video(row: int, path: str, where: str, skip_bad: bool, counters: dict[str, int], decode: bool = True,
                max_pixels: int = VideoSampling.max_pixels) -> bool:
    """True when ``path`` is a usable video; a bad one is a ``DataError`` naming it and ``row`` of ``where``, or
    with ``skip_bad`` a counted ``skipped_<problem>_videos``."""
    problem = video_problem(path, decode, max_pixels)
    if problem is None:
        return True
    if not skip_bad:
        raise DataError(f"{where}: row {row}: {problem.replace('_', ' ')} video file {path} "
                        f"(set data.skip_bad_samples=true to skip such rows)")
    counters[f"skipped_{problem}_videos"] = counters.get(f"skipped_{problem}_videos", 0) + 1
    return False


# ---------------------------------------------------------------------------------------- sampling
def _randint(high: int, train: bool, default: int) -> int:
    """A draw in [0, high] from torch's generator in training, ``default`` in evaluation."""
    return int(torch.randint(0, high + 1, ()).item()) if train and high > 0 else default


def sample_positions(n: int, s: VideoSampling, train: bool) -> tuple[list[int], int]:
    """(positions in [0, n) of the frames to take, how many of ``num_frames`` are real): the rest is padding."""
    t = s.num_frames
    if s.mode == "segments":
        if n < t and s.short == "pad":
            return list(range(n)), n
        edges = [k * n / t for k in range(t + 1)]  # segment k is [edges[k], edges[k+1])
        picks = []
        for k in range(t):
            lo, hi = int(edges[k]), max(int(edges[k]), int(np.ceil(edges[k + 1])) - 1)
            picks.append(min(lo + _randint(hi - lo, train, (hi - lo) // 2), n - 1))
        return picks, t
    span = (t - 1) * s.frame_stride + 1
    if n >= span:
        start = _randint(n - span, train, (n - span) // 2)
        return [start + k * s.frame_stride for k in range(t)], t
    if s.short == "loop":
        start = _randint(n - 1, train, 0)
        return [(start + k * s.frame_stride) % n for k in range(t)], t
    real = [k * s.frame_stride for k in range(t) if k * s.frame_stride < n]
    return real, len(real)


def resampled(times: Sequence[float], fps: float) -> list[int]:
    """Frame index showing at each instant ``times[0] + k / fps`` up to the last frame: the clip at ``fps``."""
    count = int(np.floor((times[-1] - times[0]) * fps + 1e-6)) + 1
    return [max(0, bisect.bisect_right(times, times[0] + k / fps + 1e-9) - 1) for k in range(count)]


def sample_clip(path: Source, s: VideoSampling, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(frames (T', 3, H, W) uint8, mask (num_frames,) bool) of ``path`` sampled by ``s`` (T' real frames)."""
    info = probe_video(path, s.max_pixels)
    frames = resampled(info.times, s.fps) if s.fps > 0 else list(range(info.num_frames))
    positions, real = sample_positions(len(frames), s, train)
    clip = decode_frames(path, [frames[p] for p in positions], s.max_pixels)  # (T', 3, H, W)
    mask = torch.arange(s.num_frames) < real  # (T,)
    return clip, mask


# ---------------------------------------------------------------------------------------- transforms
def video_transforms(pre: Any, aug: Any, train: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 clip (T, 3, H, W) → float (T, 3, h, w) at the encoder's ``preprocess`` size and normalisation: the
    image pipeline (``data.image.classification_ops``) on a ``tv_tensors.Video``, so one crop, flip and colour
    draw applies to every frame of the clip."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    from mm_ptft.data.image import classification_ops

    ops = classification_ops(pre, aug, train)
    pipe = v2.Compose([*ops.pixel, *ops.batch, *ops.tail])
    return lambda clip: pipe(tv_tensors.Video(clip)).as_subclass(torch.Tensor)


def pad_clip(clip: torch.Tensor, num_frames: int) -> torch.Tensor:
    """``clip`` (T', C, H, W) followed by zero frames up to ``num_frames``: (num_frames, C, H, W)."""
    if clip.shape[0] >= num_frames:
        return clip
    return torch.cat([clip, clip.new_zeros((num_frames - clip.shape[0], *clip.shape[1:]))])


def make_clip(path: Source, s: VideoSampling, transform: Callable, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(video (T, 3, h, w) float, video_mask (T,)) of one file: sampled, transformed, padded."""
    clip, mask = sample_clip(path, s, train)
    return pad_clip(transform(clip), s.num_frames), mask


# ------------------------------------------------------------------------------------------- tables
def video_table(source: str, key: str, path_column: str, label_column: str,
                counters: Optional[dict[str, int]] = None) -> tuple[list[str], list[Any]]:
    """(absolute video paths, raw labels) from a CSV/TSV/JSON/JSONL/parquet table (paths relative to its folder)
    or a folder with one sub-folder of videos per class (``VIDEO_EXTS``): ``image_table``'s rules."""
    from mm_ptft.data.image import image_table

    return image_table(source, key, path_column, label_column, counters, kind="video")


# ------------------------------------------------------------------------------------ dataset/collate
class VideoDataset(Dataset):
    """(path, label) pairs sampled, decoded and transformed on access; a file that became unreadable after the
    scan is an error naming it, or (``skip_bad``) an item the collator drops. In training the frame draws and
    the crop are seeded by (seed, epoch, index), so a resumed run (which replays an epoch's remaining indices in
    fresh workers) takes exactly the clips the uninterrupted one took; the epoch is read from
    ``epoch_source.epoch`` (the trainer's batch sampler, attached by ``data.text.FollowEpoch``)."""

    def __init__(self, paths: Sequence[str], labels: Optional[Sequence[int]], transform: Callable,
                 sampling: VideoSampling, train: bool, skip_bad: bool = False, seed: int = 0) -> None:
        self.paths, self.labels, self.transform = paths, labels, transform  # a table column: read per index
        self.sampling, self.train, self.skip_bad, self.seed = sampling, train, skip_bad, seed
        self.epoch_source: Any = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Optional[dict[str, Any]]:
        from mm_ptft.data.stream import sample_seed

        try:
            with sample_seed(self.seed, int(getattr(self.epoch_source, "epoch", 0)), i):
                video, mask = make_clip(self.paths[i], self.sampling, self.transform, self.train)
        except DataError:
            if not self.skip_bad:
                raise
            log.warning("skipping unreadable video %s", self.paths[i])
            return None
        item: dict[str, Any] = {VIDEO: video, VIDEO_MASK: mask}  # (T, 3, H, W), (T,)
        if self.labels is not None:
            item[LABELS] = self.labels[i]
        return item


class VideoCollator:
    """Stacks clips to (B, T, 3, H, W), masks to (B, T) and labels to (B,); drops items the dataset skipped."""

    def __call__(self, items: list[Optional[dict[str, Any]]]) -> dict[str, Any]:
        items = [it for it in items if it is not None]
        if not items:
            raise DataError("every video in a batch was unreadable")
        batch: dict[str, Any] = {VIDEO: torch.stack([it[VIDEO] for it in items]),  # (B, T, 3, H, W)
                                 VIDEO_MASK: torch.stack([it[VIDEO_MASK] for it in items])}  # (B, T)
        if LABELS in items[0]:
            batch[LABELS] = torch.as_tensor([it[LABELS] for it in items])  # (B,)
        return batch
