"""Shared data contracts: batch keys and encoder outputs."""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch

# Batch keys (DESIGN.md § Contracts). A batch is a plain dict keyed by these names.
TEXT, TEXT_MASK = "text", "text_mask"
TEXT_SEGMENTS = "text_segments"  # optional (B, L) segment ids of a sentence pair (BERT's token_type_ids)
IMAGE = "image"
AUDIO, AUDIO_LENGTHS = "audio", "audio_lengths"
VIDEO, VIDEO_MASK = "video", "video_mask"  # (B, T, C, H, W) clips, (B, T) True where a frame is real
LABELS, TARGETS = "labels", "targets"
LABEL_LENGTHS, TRANSCRIPTS = "label_lengths", "transcripts"  # CTC targets
#: generative batches (data/sft.py, heads/causal_lm.py): packed rows' per-sample positions, the left-padded prompts a
#: model generates from, the reference texts generation metrics compare with; IGNORE_INDEX labels no loss counts
POSITIONS, PROMPT, PROMPT_MASK, REFERENCE = "position_ids", "prompt", "prompt_mask", "reference"
IGNORE_INDEX = -100
#: skip counts a streamed batch carries from the loader workers ({counter: n}); the trainer takes them off
COUNTS = "_data_counts"
#: modality → the batch keys its encoders read, in input order
INPUT_KEYS = {"text": (TEXT, TEXT_MASK), "image": (IMAGE,), "audio": (AUDIO, AUDIO_LENGTHS),
              "video": (VIDEO, VIDEO_MASK)}


class DataError(ValueError):
    """Bad input data; the message names the file, row or column (``data.tables`` re-exports it)."""


class EncoderOutput(NamedTuple):
    """What every encoder returns."""

    pooled: torch.Tensor  # (B, D)
    tokens: Optional[torch.Tensor] = None  # (B, N, D)
    mask: Optional[torch.Tensor] = None  # (B, N) True where a token is real


def take_counts(item: Any, into: dict[str, int]) -> bool:
    """Move the skip counts a streamed sample or batch carries (``COUNTS``) into ``into``; whether it had any."""
    counts = item.pop(COUNTS, None) if isinstance(item, dict) else None
    for k, v in (counts or {}).items():
        into[k] = into.get(k, 0) + v
    return bool(counts)
