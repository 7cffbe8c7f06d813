"""Image evaluation geometry shared by the data pipeline (``data.image``) and the encoders' saved processors
(``encoders.image.save_eval_processor``), so both resize alike."""
from __future__ import annotations

import math
from typing import Sequence


def eval_resize(size: Sequence[int], crop_pct: float, mode: str = "shortest") -> int | tuple[int, int]:
    """What the evaluation ``Resize`` gets before the centre crop to ``size`` (H, W): size / crop_pct (size where
    crop_pct >= 1) as the shorter edge's length when ``mode`` is ``shortest`` and the size is square (the aspect
    ratio kept, as timm, open_clip, torchvision and HF ``shortest_edge`` processors do), else exactly (H, W)."""
    h, w = (math.floor(s / crop_pct) for s in size) if crop_pct < 1 else (int(s) for s in size)
    return h if mode == "shortest" and h == w else (h, w)
