"""Labeled rows with any subset of modalities (multimodal classification): a row may lack a modality (an empty
cell), which is flagged as ``<modality>_present`` in the batch; a path that is given but unreadable is bad input,
not a missing modality: an error naming the row, or a counted skip."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

from mm_ptft.data.multimodal import MediaConfig, MultimodalCollator, load_audio, load_image, load_video, media_path, \
    usable_media
from mm_ptft.data.tables import ROW, DataError, LabelMap, require_columns
from mm_ptft.data.text import tokenize
from mm_ptft.types import AUDIO, IMAGE, LABELS, TEXT, VIDEO, VIDEO_MASK


class MultimodalRows(Dataset):
    """Rows with any subset of modalities; absent ones are filled with placeholders and flagged."""

    def __init__(self, rows: list[dict[str, Any]], modalities: Sequence[str], media: MediaConfig, blank_text: list[int],
                 where: str) -> None:
        self.rows, self.modalities, self.media, self.blank_text, self.where = rows, list(modalities), media, blank_text, where

    def __len__(self) -> int:
        return len(self.rows)

    def export_preprocessing(self, info: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """How these rows decode media, replacing the encoders' own steps in an export description."""
        out: dict[str, dict[str, Any]] = {}
        if "image" in info:  # a plain resize to image_size, media mean/std
            m = self.media
            out["image"] = {"size": [m.image_size, m.image_size], "mean": m.image_mean, "std": m.image_std,
                            "steps": "decode RGB, resize to size, scale to [0, 1], subtract mean, divide by std"}
        if "audio" in info:
            feats = info["audio"].get("input_kind") == "features"
            out["audio"] = {"max_seconds": self.media.max_audio_seconds,
                            "steps": "as mm_ptft.data.multimodal.load_audio: mono, resample to sample_rate, crop to "
                                     "max_seconds; " + ("log-mel normalised per bin" if feats else
                                                        "raw waveform (the encoder normalises); shape (B, samples)")}
        return out

    def _blank_video(self) -> tuple[torch.Tensor, torch.Tensor]:
        """An absent video's placeholder: zero frames (T, 3, S, S), every frame marked padding."""
        t, s = self.media.video_sampling.num_frames, self.media.video_size
        return torch.zeros(t, 3, s, s), torch.zeros(t, dtype=torch.bool)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.rows[i]
        item: dict[str, Any] = {LABELS: row[LABELS]} if LABELS in row else {}
        for m in self.modalities:
            value = row.get(m)
            item[f"{m}_present"] = value is not None
            if m == "text":
                item[TEXT] = value if value is not None else self.blank_text
                continue
            try:
                if m == "image":
                    item[IMAGE] = load_image(value, self.media) if value else torch.zeros(3, self.media.image_size,
                                                                                         self.media.image_size)
                elif m == "video":
                    item[VIDEO], item[VIDEO_MASK] = load_video(value, self.media) if value else self._blank_video()
                else:
                    item[AUDIO] = load_audio(value, self.media) if value else torch.zeros(self.media.sample_rate // 10)
            except Exception as err:  # PIL / soundfile raise many types: name the file and row
                raise DataError(f"{self.where}: row {row[ROW]}: could not decode {value} ({type(err).__name__}: {err})")
        return item


class PresenceCollator(MultimodalCollator):
    """The multimodal collator plus ``<modality>_present`` (B,) flags."""

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = super().__call__(items)
        for key in [k for k in items[0] if k.endswith("_present")]:
            batch[key] = torch.tensor([it[key] for it in items])  # (B,)
        return batch


def labeled_rows(ds: Any, path: str, d: Any, labels: LabelMap, tokenizer: Any, max_len: int, media: MediaConfig,
                 counters: dict[str, int]) -> list[dict[str, Any]]:
    """One dict per usable row: token ids / absolute media paths (None where absent), label. ``d`` is the
    recipe's data section (``modalities``, ``<modality>_column``, ``label_column``, ``skip_bad_samples``).
    Media files get the unimodal recipes' checks (``usable_media``): an error naming the row, or a counted skip."""
    cols = {m: getattr(d, f"{m}_column") for m in d.modalities}
    require_columns(ds, [*cols.values(), d.label_column], path)
    out, raw_labels = [], []
    for k, r in enumerate(ds):
        row: dict[str, Any] = {ROW: r.get(ROW, k)}
        for m, col in cols.items():
            v = r[col]
            if v is None or not str(v).strip():
                row[m] = None
                counters[f"missing_{m}"] = counters.get(f"missing_{m}", 0) + 1
            elif m == "text":
                row[m] = v  # tokenised below, in one batch
            else:
                p = media_path(path, v)
                if not usable_media(m, row[ROW], p, path, media, d.skip_bad_samples, counters):
                    break
                row[m] = p
        else:
            if all(row[m] is None for m in cols):
                raise DataError(f"{path}: row {row[ROW]}: every modality {sorted(cols)} is empty")
            out.append(row)
            raw_labels.append(r[d.label_column])
    with_text = [row for row in out if row.get("text") is not None]
    if with_text:
        ids, _ = tokenize(tokenizer, [row["text"] for row in with_text], max_len, path, False, counters)
        for row, i in zip(with_text, ids):
            row["text"] = i
    for row, y in zip(out, labels.encode(raw_labels, path, [row[ROW] for row in out])):
        row[LABELS] = y
    return out
