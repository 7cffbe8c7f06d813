"""Paired multimodal manifests → batches, and weighted mixing of several datasets in one run.

A manifest is a CSV/JSONL/parquet table with one row per sample: a caption column, media
columns holding image/audio/video file paths (relative to the manifest's folder or absolute) and an
optional label column. ``PairedDataset`` reads only the modalities it is asked for, so one
paired manifest also serves as an unpaired text-, image- or audio-only source. Media are
decoded lazily in ``__getitem__`` (DataLoader workers parallelise it).

Batches carry the contract keys ``text``/``text_mask`` (B, L), ``image`` (B, 3, H, W),
``audio`` (B, T) waveform or (B, F, N) log-mel, ``audio_lengths`` (B,), ``video`` (B, T, 3, H, W) with
``video_mask`` (B, T), ``labels`` (B,). A video is sampled by ``MediaConfig.video_sampling``
(``data.video.VideoSampling``): the fixed, centred clip unless the dataset is a training one
(``PairedDataset.train_clips``), whose draws are seeded by (seed, epoch, index) so a resume is exact.
A ``MixtureDataset`` batch is a dict ``{source name: sub-batch}``: each sub-batch comes from one
source, so it carries that source's keys only.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch.utils.data import Dataset

from mm_ptft.data.audio import check_clip, load_waveform
from mm_ptft.contracts import on_device
from mm_ptft.data.image import ImagePipeline, check_image, interpolation_mode
from mm_ptft.data.image import load_image as decode_image
from mm_ptft.data.image_device import read_encoded
from mm_ptft.data.remote import resolve
from mm_ptft.data.tables import ROW, DataError, LabelMap, column, require_columns, rows_of
from mm_ptft.data.text import tokenize
from mm_ptft.data.video import VideoSampling, check_video, pad_clip, sample_clip
from mm_ptft.types import AUDIO, AUDIO_LENGTHS, COUNTS, IMAGE, LABELS, REFERENCE, TEXT, TEXT_MASK, VIDEO, VIDEO_MASK

MODALITIES = ("audio", "image", "text", "video")
#: default shortest clip: one 25 ms analysis window (a log-mel frame, wav2vec2's receptive field)
MIN_AUDIO_SECONDS = 0.025


@dataclass
class MediaConfig:
    """How media are decoded: image side and normalisation, audio rate, length and features."""

    image_size: int = 32
    image_mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    image_std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    image_interpolation: str = "bilinear"  # set from the image encoder (open_clip's: bicubic)
    sample_rate: int = 16000  # set from the audio encoder
    max_audio_seconds: float = 10.0  # longer clips are cropped
    min_audio_seconds: float = MIN_AUDIO_SECONDS  # shorter clips are dropped and counted (dropped_too_short)
    n_mels: int = 0  # > 0: the pipeline gives normalised log-mel (features-kind audio encoders)
    decode_on: str = "worker"  # worker | device: images reach the collate encoded (data.image_device)
    video_size: int = 32  # set from the video encoder, as the image fields from the image encoder
    video_mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    video_std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    video_sampling: VideoSampling = field(default_factory=VideoSampling)  # data.sampling


def paired_ops(media: MediaConfig) -> ImagePipeline:
    """The paired recipes' image pipeline (no augmentation): the shorter edge resized to S with the encoder's
    resampling (the aspect ratio kept), a centre crop to (S, S), float in [0, 1], normalise — open_clip's
    evaluation preprocessing."""
    from torchvision.transforms import v2

    s, interp = media.image_size, interpolation_mode(media.image_interpolation)
    resize = [v2.Resize(s, interpolation=interp, antialias=True), v2.CenterCrop([s, s])]
    normalise = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(media.image_mean), list(media.image_std))]
    return ImagePipeline(resize, normalise, [])


def load_image(path: Any, media: MediaConfig) -> torch.Tensor:
    """An image file (decoded as the image recipe does: ``data.image.load_image``) → normalised
    float tensor (3, S, S)."""
    return paired_ops(media).compose()(decode_image(path)).as_subclass(torch.Tensor)  # (3, S, S)


def image_input(source: Any, name: str, media: MediaConfig) -> Any:
    """What a paired item carries for its image: ``load_image``'s tensor (3, S, S), or with ``media.decode_on`` =
    device the ``EncodedImage`` the collate's device stage decodes (``data.image_device``)."""
    return read_encoded(source, name) if media.decode_on == "device" else load_image(source, media)


def load_video(path: str, media: MediaConfig, train: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """A video file sampled by ``media.video_sampling`` (random in ``train``, from torch's generator) → the
    paired image pipeline on every frame at the video encoder's size: (video (T, 3, S, S) float, mask (T,))."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    clip, mask = sample_clip(path, media.video_sampling, train)  # (T', 3, H, W) uint8, (T,)
    ops = paired_ops(replace(media, image_size=media.video_size, image_mean=media.video_mean,
                             image_std=media.video_std))
    video = v2.Compose([*ops.pixel, *ops.batch])(tv_tensors.Video(clip)).as_subclass(torch.Tensor)  # (T', 3, S, S)
    return pad_clip(video, media.video_sampling.num_frames), mask


def load_audio(path: str, media: MediaConfig) -> torch.Tensor:
    """An audio file (decoded and checked as the speech recipe does: ``data.audio.load_waveform``) →
    mono float waveform (T,) at ``media.sample_rate``, cropped to the max length; or normalised
    log-mel (F, N) when ``media.n_mels`` > 0."""
    wav = load_waveform(path, media.sample_rate)  # (T,)
    wav = wav[: int(media.max_audio_seconds * media.sample_rate)]
    if media.n_mels <= 0:
        return wav  # (T,)
    from mm_ptft.features.audio import LogMel, masked_normalize

    mel = LogMel(media.sample_rate, media.n_mels)
    feats = mel(wav[None])  # (1, F, N)
    return masked_normalize(feats, torch.tensor([feats.shape[-1]]))[0]  # (F, N)


@dataclass
class Columns:
    """Manifest column per modality ('' where the manifest has none)."""

    text: str = "caption"
    image: str = "image"
    audio: str = "audio"
    label: str = "label"
    video: str = "video"


class PairedDataset(Dataset):
    """Rows of a manifest with the requested modalities: text tokenised up front, media decoded on access."""

    def __init__(self, rows: list[dict[str, Any]], media: MediaConfig, where: str) -> None:
        self.rows, self.media, self.where = rows, media, where
        self.train, self.seed, self.epoch_source = False, 0, None  # video clips: fixed unless train_clips

    def train_clips(self, seed: int) -> "PairedDataset":
        """Random video clips (``data.sampling``'s training draws), seeded by (``seed``, epoch, index); the epoch
        is read from ``epoch_source.epoch`` (the trainer's batch sampler, attached by ``data.text.FollowEpoch``)."""
        self.train, self.seed = True, seed
        return self

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.rows[i]
        item = {k: v for k, v in row.items() if k in (TEXT, LABELS, REFERENCE)}
        try:
            if IMAGE in row:
                item[IMAGE] = image_input(row[IMAGE], row[IMAGE], self.media)
            if AUDIO in row:
                item[AUDIO] = load_audio(row[AUDIO], self.media)
            if VIDEO in row:
                item[VIDEO], item[VIDEO_MASK] = self._video(i, row[VIDEO])  # (T, 3, S, S), (T,)
        except Exception as err:  # PIL/soundfile/PyAV raise many types; name the file and row
            raise DataError(f"{self.where}: row {row[ROW]}: could not decode "
                            f"{row.get(IMAGE) or row.get(AUDIO) or row.get(VIDEO)} ({type(err).__name__}: {err})") from err
        return item

    def _video(self, i: int, path: str) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.train:
            return load_video(path, self.media)
        from mm_ptft.data.stream import sample_seed

        with sample_seed(self.seed, int(getattr(self.epoch_source, "epoch", 0)), i):
            return load_video(path, self.media, True)

    def lengths(self) -> Optional[list[int]]:
        """Token counts for length-grouped batching (text sources only)."""
        if not len(self.rows) or TEXT not in self.rows[0]:
            return None
        if hasattr(self.rows, "list_lengths"):  # a table (the preprocessing cache's rows): one column read
            return self.rows.list_lengths(TEXT).tolist()
        return [len(r[TEXT]) for r in self.rows]


def usable_media(modality: str, row: int, path: Optional[str], where: str, media: MediaConfig, skip_bad: bool,
                 counters: dict[str, int]) -> bool:
    """The unimodal recipes' checks, counts and skip rules on one image/audio/video file of a manifest:
    ``data.image.check_image`` (missing, empty, undecodable), ``data.audio.check_clip`` (missing,
    unreadable, empty, truncated, NaN/Inf; shorter than ``media.min_audio_seconds`` a counted drop) or
    ``data.video.check_video`` (missing, empty, no video stream, zero frames, truncated, too large, corrupt).
    True when usable; else a DataError naming the file and ``row``, or (``skip_bad``) a counted skip."""
    if modality == "image":
        return check_image(row, path or "", where, skip_bad, counters)
    if modality == "video":
        return check_video(row, path or "", where, skip_bad, counters, True, media.video_sampling.max_pixels)
    return check_clip(row, path or "", where, media.sample_rate, media.min_audio_seconds, 0.0, skip_bad, True,
                      counters) is not None


def media_path(table: str, value: Any) -> Optional[str]:
    """A manifest's media cell as a path or URL: relative ones resolve against the manifest's folder, also a remote
    manifest's (``remote.resolve``); empty → None."""
    if value is None or not str(value).strip():
        return None
    return resolve(str(value), table)


def build_paired(ds: Any, path: str, modalities: Sequence[str], cols: Columns, media: MediaConfig,
                 tokenizer: Any = None, max_length: int = 64, labels: Optional[LabelMap] = None,
                 skip_bad: bool = False, counters: Optional[dict[str, int]] = None,
                 references: bool = False, overlong: str = "truncate") -> PairedDataset:
    """Check columns and media files, tokenise captions, encode labels. Bad media (``usable_media``) are
    an error naming the row, or a counted skip with ``skip_bad``. With ``references`` each row also keeps its raw
    caption (``reference``: what caption metrics compare generated text with). ``overlong``: captions over
    ``max_length`` tokens are truncated, skipped or an error (``data.text.tokenize``)."""
    counters = counters if counters is not None else {}
    bad = sorted(set(modalities) - set(MODALITIES))
    if bad:
        raise DataError(f"{path}: unknown modality {bad}; choose from {MODALITIES}")
    need = [getattr(cols, m) for m in modalities] + ([cols.label] if labels is not None else [])
    require_columns(ds, need, path)
    media_cols = {m: column(ds, getattr(cols, m)) for m in ("image", "audio", "video") if m in modalities}
    file_rows = rows_of(ds) or list(range(len(ds)))  # the file's own rows, for messages
    rows: list[dict[str, Any]] = []
    for r in range(len(ds)):
        row: dict[str, Any] = {"_row": r, ROW: file_rows[r]}
        for m, values in media_cols.items():
            p = media_path(path, values[r])
            if not usable_media(m, file_rows[r], p, path, media, skip_bad, counters):
                break
            row[m] = p  # the batch key of each media modality is its name
        else:
            rows.append(row)
    if "text" in modalities:
        texts = column(ds, cols.text)
        ids, kept = tokenize(tokenizer, [texts[r["_row"]] for r in rows], max_length, path, skip_bad, counters,
                             [r[ROW] for r in rows], overlong)
        rows = [dict(rows[k], **{TEXT: i}) for k, i in zip(kept, ids)]
        if references:
            rows = [dict(r, **{REFERENCE: str(texts[r["_row"]])}) for r in rows]
    if labels is not None:
        values = column(ds, cols.label)
        ys = labels.encode([values[r["_row"]] for r in rows], path, [r[ROW] for r in rows])
        rows = [dict(r, **{LABELS: y}) for r, y in zip(rows, ys)]
    return PairedDataset(rows, media, path)


def _pad_last(xs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad tensors along their last axis: (B, ..., T_max) and lengths (B,)."""
    lengths = torch.tensor([x.shape[-1] for x in xs])
    out = xs[0].new_zeros((len(xs), *xs[0].shape[:-1], int(lengths.max())))
    for i, x in enumerate(xs):
        out[i, ..., : x.shape[-1]] = x
    return out, lengths


class MultimodalCollator:
    """Pads text and audio, stacks images, videos and labels: only the keys the items carry."""

    def __init__(self, pad_id: int = 0, multiple_of: int = 1) -> None:
        self.pad_id, self.multiple_of = pad_id, multiple_of

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        first = items[0]
        if TEXT in first:
            longest = max(len(it[TEXT]) for it in items)
            longest = -(-longest // self.multiple_of) * self.multiple_of
            ids = torch.full((len(items), longest), self.pad_id, dtype=torch.long)  # (B, L)
            mask = torch.zeros((len(items), longest), dtype=torch.long)  # (B, L)
            for i, it in enumerate(items):
                ids[i, : len(it[TEXT])] = torch.as_tensor(it[TEXT])
                mask[i, : len(it[TEXT])] = 1
            batch[TEXT], batch[TEXT_MASK] = ids, mask
        if IMAGE in first:
            batch[IMAGE] = torch.stack([it[IMAGE] for it in items])  # (B, 3, H, W)
        if AUDIO in first:
            batch[AUDIO], batch[AUDIO_LENGTHS] = _pad_last([it[AUDIO] for it in items])  # (B, T) | (B, F, N)
        if VIDEO in first:
            batch[VIDEO] = torch.stack([it[VIDEO] for it in items])  # (B, T, 3, H, W)
            batch[VIDEO_MASK] = torch.stack([it[VIDEO_MASK] for it in items])  # (B, T)
        if LABELS in first:
            batch[LABELS] = torch.as_tensor([it[LABELS] for it in items])  # (B,)
        if REFERENCE in first:
            batch[REFERENCE] = [it[REFERENCE] for it in items]  # raw captions (strings)
        return batch


class MixtureDataset(Dataset):
    """Several datasets sampled with weights: index i → (source, item). An epoch has ``size``
    items (default: the sum of the sources' sizes), of which a ``weight`` share comes from each
    source (small sources are repeated, large ones subsampled; seeded, so resumes are exact)."""

    def __init__(self, sources: Mapping[str, Dataset], weights: Mapping[str, float], size: int = 0,
                 seed: int = 0) -> None:
        names = sorted(sources)
        bad = [n for n in names if weights.get(n, 0) < 0] + sorted(set(weights) - set(names))
        if bad or sum(weights.get(n, 0) for n in names) <= 0:
            raise ValueError(f"data.sources weights {dict(weights)}: need non-negative weights for "
                             f"{names} with a positive sum")
        total = size or sum(len(sources[n]) for n in names)
        norm = sum(weights[n] for n in names)
        g = torch.Generator().manual_seed(seed)
        self.sources, self.index = dict(sources), []
        for n in names:
            count, m = round(total * weights[n] / norm), len(sources[n])
            if count and not m:
                raise ValueError(f"data.sources.{n}: has weight {weights[n]} but no samples")
            reps = -(-count // m) if m else 0
            order = torch.cat([torch.randperm(m, generator=g) for _ in range(reps)])[:count] if reps else []
            self.index += [(n, int(i)) for i in order]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[str, dict[str, Any]]:
        name, j = self.index[i]
        return name, self.sources[name][j]

    def counts(self) -> dict[str, int]:
        """Items per source in one epoch."""
        out: dict[str, int] = {}
        for name, _ in self.index:
            out[name] = out.get(name, 0) + 1
        return out


Collate = Callable[[list[Any]], dict[str, Any]]


class MixtureCollator:
    """Groups a mixed list of (source, item) by source: ``{source: collate(items)}`` in sorted order.
    ``collate`` is one function for every source, or source → its own (sources of different recipes)."""

    def __init__(self, collate: Collate | Mapping[str, Collate]) -> None:
        self.collate = collate

    def __call__(self, items: list[tuple[str, Any]]) -> dict[str, dict[str, Any]]:
        groups: dict[str, list[Any]] = {}
        for name, item in items:
            groups.setdefault(name, []).append(item)
        return {name: self.collate_of(name)(groups[name]) for name in sorted(groups)}

    def collate_of(self, source: str) -> Collate:
        return self.collate[source] if isinstance(self.collate, Mapping) else self.collate

    def on_device(self, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        """Each source's sub-batch through its collate's device stage (``contracts.on_device``)."""
        return {name: sub if name == COUNTS else on_device(self.collate_of(name), sub, device)
                for name, sub in batch.items()}


class JointCollator:
    """Mixed (source, item) lists → ``{source: batch}``; plain items (evaluation) → one batch."""

    def __init__(self, collate: MultimodalCollator) -> None:
        self.flat, self.mixed = collate, MixtureCollator(collate)

    def __call__(self, items: list[Any]) -> dict[str, Any]:
        return self.mixed(items) if isinstance(items[0], tuple) else self.flat(items)
