"""Local tabular files (CSV/TSV/JSON/JSONL/parquet) through HF ``datasets``, label maps, splits."""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence

ROW = "__row__"
BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


class DataError(ValueError):
    """Bad input data; the message names the file, row or column."""


def load_table(path: str, key: str = "data.train_file"):
    """Load one local file as a ``datasets.Dataset``."""
    import datasets

    if not path:
        raise DataError(f"{key} is empty: give a CSV/TSV/JSON/JSONL/parquet file")
    if not os.path.isfile(path):
        raise DataError(f"{key}={path}: file not found")
    ext = os.path.splitext(path)[1].lower()
    if ext not in BUILDERS:
        raise DataError(f"{key}={path}: unsupported extension {ext!r}; use one of {sorted(BUILDERS)}")
    kwargs: dict[str, Any] = {"delimiter": "\t"} if ext == ".tsv" else {}
    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(BUILDERS[ext], data_files=path, split="train", **kwargs)
    except Exception as err:  # datasets wraps parser errors in many types
        raise DataError(f"{key}={path}: could not be read ({type(err).__name__}: {err})") from err
    # The file's own row numbers (0-based, header excluded) survive shuffles and splits, so errors
    # can point at the row a user can find.
    return ds.add_column(ROW, list(range(len(ds))))


def require_columns(ds: Any, columns: Sequence[str], path: str) -> None:
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; the file has {ds.column_names} "
                        f"(set data.*_column to the right names)")


def _check_fraction(fraction: float) -> None:
    if not 0 < fraction < 1:
        raise DataError(f"data.eval_fraction must be in (0, 1), got {fraction}")


def split_off(ds: Any, fraction: float, seed: int) -> tuple[Any, Any]:
    """Seeded train/eval split of an HF dataset when no eval file is given."""
    _check_fraction(fraction)
    parts = ds.train_test_split(test_size=fraction, seed=seed)
    return parts["train"], parts["test"]


def seeded_split(items: Sequence[Any], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, eval indices) of a list split by a seeded permutation; eval gets ``fraction`` (at least 1)."""
    import torch

    _check_fraction(fraction)
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    n_eval = max(1, round(fraction * len(order)))
    return sorted(order[n_eval:]), sorted(order[:n_eval])


class LabelMap:
    """Label values ↔ class indices. Built from the training data (sorted), saved with the run."""

    def __init__(self, names: Sequence[Any]) -> None:
        self.names = list(names)
        self.index = {self._key(n): i for i, n in enumerate(self.names)}
        if len(self.index) != len(self.names):
            raise DataError(f"duplicate labels in {self.names}")

    @staticmethod
    def _key(value: Any) -> str:
        return str(value).strip()

    @classmethod
    def from_values(cls, values: Sequence[Any]) -> "LabelMap":
        uniq = {cls._key(v): v for v in values if v is not None}
        try:  # numeric labels keep numeric order
            order = sorted(uniq, key=float)
        except ValueError:
            order = sorted(uniq)
        return cls(order)

    def encode(self, values: Sequence[Any], where: str, rows: Optional[Sequence[int]] = None) -> list[int]:
        """Class indices; a value outside the label set is an error naming its file row."""
        out = []
        for k, v in enumerate(values):
            i = self.index.get(self._key(v)) if v is not None else None
            if i is None:
                row = rows[k] if rows is not None else k
                raise DataError(f"{where}: row {row}: label {v!r} is not in the label set {self.names}")
            out.append(i)
        return out

    def __len__(self) -> int:
        return len(self.names)


def resolve_eval(train_ds: Any, eval_path: Optional[str], fraction: float, seed: int):
    """(train, eval) from an eval file or a seeded split of the training file."""
    if eval_path:
        return train_ds, load_table(eval_path, "data.eval_file")
    return split_off(train_ds, fraction, seed)
