"""Steps shared by recipes: where generated data goes, resolving data files, run-time artifacts."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mm_ptft.data.generated import generate


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def resolve_files(data: Any, output_dir: str) -> None:
    """Fill ``data.train_file``/``data.eval_file`` from ``data.generate`` when those are empty."""
    if getattr(data, "generate", None) and not data.train_file:
        root = os.environ.get("MM_PTFT_DATA", os.path.join(output_dir, "generated_data"))
        paths = generate(data.generate, root)
        data.train_file = paths["train_file"]
        data.eval_file = data.eval_file or paths.get("eval_file", "")


def needs_train_file(data: Any, train: bool, learn: bool = False) -> bool:
    """Whether ``prepare`` must read ``data.train_file``: to train on it, to ``learn`` labels or a
    vocabulary from it, or because the eval set is its seeded split (no ``data.eval_file``) — so
    ``mm-ptft eval`` of a run trained on such a split evaluates the same held-out rows."""
    return bool(data.train_file) and (train or learn or not data.eval_file)


def save_tokenizer(spec: dict[str, Any], tokenizer: Any, output_dir: str) -> None:
    """Save a tokenizer learned at run time and point the resolved config at it."""
    if spec.get("tokenizer") or spec.get("name_or_path"):
        return
    path = Path(output_dir) / "tokenizer"
    if is_main_process():
        tokenizer.save_pretrained(str(path))
    spec["tokenizer"] = str(path.resolve())

