"""Local tabular files (CSV/TSV/JSON/JSONL/parquet) through HF ``datasets``, label maps, splits.

Row numbers in messages are the file's own: 0-based records, a CSV/TSV header excluded (a quoted cell
with newlines is one record), the line number minus one for JSONL. They survive shuffles and splits (the
``ROW`` column). A CSV/TSV may start with a UTF-8 byte-order mark; duplicate column names, a file with no
rows and a JSONL line that is not JSON are errors naming the file (and the line)."""
from __future__ import annotations

import csv
import json
import math
import os
import re
from typing import Any, Optional, Sequence

import numpy as np

from mm_ptft.config import redacted
from mm_ptft.data.remote import is_url, local_copy, open_file
from mm_ptft.types import DataError  # noqa: F401  (defined in the ground: data.remote raises it too)

ROW = "__row__"
_WHOLE_FLOAT = re.compile(r"^(-?\d+)\.0+$")
BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


HF_PREFIX = "hf:"


def load_table(path: str, key: str = "data.train_file"):
    """Load one local file, a remote one (``s3://``, ``https://`` ...: its local copy, ``data.remote.local_copy``), or
    ``hf:name[:split]`` (``load_hf_table``), as a ``datasets.Dataset``."""
    if not path:
        raise DataError(f"{key} is empty: give a CSV/TSV/JSON/JSONL/parquet file")
    if path.startswith(HF_PREFIX):
        return with_rows(load_hf_table(path[len(HF_PREFIX):], key), f"{key}={path}")
    if is_url(path):  # read from its local copy (data.remote_cache_dir), named by its URL
        return _load_file(local_copy(path, key), key, redacted(path))
    return _load_file(path, key, path)


def _load_file(path: str, key: str, shown: str) -> Any:
    """``load_table`` of a local file; messages name ``shown`` (a remote file's URL) for ``path``."""
    import datasets

    if os.path.isdir(path):
        raise DataError(f"{key}={shown}: a folder, but a table file (CSV/TSV/JSON/JSONL/parquet) is read here; folders "
                        f"are read by the image, video and speech recipes, and by cv, fewshot and check-data with them")
    if not os.path.isfile(path):
        raise DataError(f"{key}={shown}: file not found")
    ext = os.path.splitext(path)[1].lower()
    if ext not in BUILDERS:
        raise DataError(f"{key}={shown}: unsupported extension {ext!r}; use one of {sorted(BUILDERS)}")
    kwargs: dict[str, Any] = {"delimiter": "\t"} if ext == ".tsv" else {}
    if BUILDERS[ext] == "csv":
        kwargs["encoding"] = "utf-8-sig"  # a byte-order mark (Excel's "CSV UTF-8") is not part of the first name
        csv_header(path, key, kwargs.get("delimiter", ","))
    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(BUILDERS[ext], data_files=path, split="train", **kwargs)
    except Exception as err:  # datasets wraps parser errors in many types
        if _no_records(path, kwargs.get("delimiter", ",")) if BUILDERS[ext] == "csv" else False:
            raise DataError(f"{key}={shown}: could not be read: the file has no rows") from None
        where = (_bad_json_line(path) if ext == ".jsonl" else "") or non_utf8_line(path)
        raise DataError(f"{key}={shown}: could not be read{where} ({type(err).__name__}: {err})") from err
    check_utf8(ds, f"{key}={shown}")
    return with_rows(ds, f"{key}={shown}")


def _valid(table: Any) -> bool:
    import pyarrow as pa

    try:
        table.validate(full=True)  # full: also the UTF-8 of every string, nested ones (chat messages) included
    except pa.ArrowInvalid:
        return False
    return True


def check_utf8(ds: Any, where: str) -> None:
    """A DataError naming the first row (0-based, as in the file) and its column(s) whose text is not UTF-8: the JSON
    reader stores such bytes as they are, and they would fail later, far from the file, as a raw UnicodeDecodeError."""
    table = ds.data.table
    if _valid(table):
        return
    def rows(a: int, b: int) -> Any:  # a copy (take), not a slice: a sliced list column keeps all its child values
        return table.take(np.arange(a, b))

    lo, hi = 0, len(table)  # the first bad row lies in [lo, hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _valid(rows(lo, mid)) else (lo, mid)
    cols = [n for n in table.column_names if not _valid(rows(lo, lo + 1).select([n]))]
    raise DataError(f"{where}: row {lo}: {cols} not UTF-8 text; write the file as UTF-8 (e.g. iconv -f latin1 -t "
                    f"utf-8), or drop the row")


def non_utf8_line(path: str) -> str:
    """`` at line L: not UTF-8 text`` for the first line of a file that does not decode as UTF-8, else ''."""
    try:
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    return f" at line {n}: not UTF-8 text ({err.reason} at byte {err.start} of the line)"
    except OSError:
        pass
    return ""


def with_rows(ds: Any, where: str) -> Any:
    """``ds`` with the file's own row numbers (0-based, header excluded) in ``ROW``: they survive shuffles and
    splits, so errors can point at the row a user can find. An error naming ``where`` for an empty table."""
    if len(ds) == 0:
        raise DataError(f"{where}: the file has no rows")
    return ds.add_column(ROW, np.arange(len(ds)))


def hf_name_split(spec: str) -> tuple[str, str]:
    """``name[:split]`` (a hub dataset, a local dataset directory) → (name, split); split defaults to ``train``."""
    head, _, tail = spec.rpartition(":")
    name, split = (spec, "") if os.path.isdir(spec) or not head else (head, tail)
    return name, split or "train"


def load_hf_table(spec: str, key: str) -> Any:
    """``hf:name[:split]`` read whole through ``datasets.load_dataset`` (downloaded once, then datasets' cache), or a
    local ``save_to_disk`` directory. ``data.streaming: true`` reads the same source lazily instead."""
    import datasets

    name, split = hf_name_split(spec)
    datasets.disable_progress_bars()
    try:
        if os.path.isfile(os.path.join(name, "dataset_info.json")) or os.path.isfile(os.path.join(name,
                                                                                                "dataset_dict.json")):
            ds = datasets.load_from_disk(name)
            return ds[split] if isinstance(ds, datasets.DatasetDict) else ds
        return datasets.load_dataset(name, split=split)
    except Exception as err:  # hub/network/format errors come in many types
        raise DataError(f"{key}={HF_PREFIX}{spec}: could not load split {split!r} through datasets.load_dataset "
                        f"({type(err).__name__}: {err}); for a dataset too big to download whole set "
                        f"data.streaming: true") from err


def csv_header(path: str, key: str, delimiter: str, lenient: bool = True) -> list[str]:
    """A CSV/TSV's column names (a byte-order mark dropped); duplicate names are an error naming ``key`` (if any)
    and the file (pandas would rename the second one silently). A header that cannot be decoded gives [] when
    ``lenient`` (a parser reads the file next and reports it), else an error."""
    try:
        with open_file(path, "r", encoding="utf-8-sig", newline="") as f:  # a URL: a streamed shard's header
            header = next(csv.reader(f, delimiter=delimiter), [])
    except (UnicodeDecodeError, csv.Error) as err:
        if lenient:
            return []
        raise DataError(f"{key + '=' if key else ''}{path}: not readable as UTF-8 text ({err})") from None
    dupes = sorted({c for c in header if header.count(c) > 1})
    if dupes:
        raise DataError(f"{key + '=' if key else ''}{path}: duplicate column name(s) {dupes} in the header")
    return header


def _no_records(path: str, delimiter: str) -> bool:
    """Whether a CSV/TSV holds no data record (empty, or a header alone)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter=delimiter)
            return sum(1 for rec in reader if rec) <= 1
    except (UnicodeDecodeError, csv.Error):
        return False


def _bad_json_line(path: str) -> str:
    """`` at row R (line L)`` for the first JSONL line that is not a JSON object, else ''."""
    try:
        with open(path, encoding="utf-8") as f:
            row = 0
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    ok = isinstance(json.loads(line), dict)
                except ValueError:
                    ok = False
                if not ok:
                    return f" at row {row} (line {n})"
                row += 1
    except (OSError, UnicodeDecodeError):
        pass
    return ""


def require_columns(ds: Any, columns: Sequence[str], path: str,
                    hint: str = "set data.*_column to the right names") -> None:
    """A DataError naming the missing columns, the file's own and ``hint`` (how to name the right ones)."""
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; the file has {[c for c in ds.column_names if c != ROW]} "
                        f"({hint})")


def column(ds: Any, name: str) -> list[Any]:
    """One column of a ``datasets.Dataset`` as a Python list, read in one go: indexing the lazy ``Column`` that
    ``ds[name]`` returns decodes Arrow per row (~50 µs a row: 0.5 s of start-up for 9,000 reads)."""
    values = ds[name]
    return values if isinstance(values, list) else values[:]


def rows_of(ds: Any) -> Optional[list[int]]:
    """The file's own row numbers (the ``ROW`` column) as a list, None when the table has none."""
    return column(ds, ROW) if ROW in ds.column_names else None


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
        """How a label cell is compared: surrounding whitespace ignored, a whole float as its integer
        (``1.0`` from a column pandas read as floats is the class ``1``), case kept."""
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        key = str(value).strip()
        return _WHOLE_FLOAT.sub(r"\1", key)  # "1.0" (a label list saved from a float column) is "1" too

    @staticmethod
    def missing(value: Any) -> bool:
        """An empty label cell: None, NaN or blank."""
        return value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip()

    @classmethod
    def from_values(cls, values: Sequence[Any], where: str = "the training data") -> "LabelMap":
        """The sorted label set of ``values`` (empty cells ignored; ``encode`` names them). Labels that
        differ only in case are an error: list them in ``data.labels`` when they really are two classes."""
        uniq = {cls._key(v): v for v in values if not cls.missing(v)}
        folded: dict[str, str] = {}
        for k in sorted(uniq):
            other = folded.setdefault(k.casefold(), k)
            if other != k:
                raise DataError(f"{where}: labels {other!r} and {k!r} differ only in case; make them one label, or "
                                f"list both in data.labels if they are two classes")
        try:  # numeric labels keep numeric order
            order = sorted(uniq, key=float)
        except ValueError:
            order = sorted(uniq)
        return cls(order)

    def encode(self, values: Sequence[Any], where: str, rows: Optional[Sequence[int]] = None) -> list[int]:
        """Class indices; an empty cell or a value outside the label set is an error naming its file row."""
        out = []
        for k, v in enumerate(values):
            i = None if self.missing(v) else self.index.get(self._key(v))
            if i is None:
                row = rows[k] if rows is not None else k
                what = "empty label" if self.missing(v) else f"label {v!r} is not in the label set {self.names}"
                raise DataError(f"{where}: row {row}: {what}")
            out.append(i)
        return out

    def encode_one(self, value: Any, where: str, row: int) -> int:
        """``encode`` of one cell (a streamed record's label)."""
        return self.encode([value], where, [row])[0]

    def __len__(self) -> int:
        return len(self.names)


def rows_by_label(values: Sequence[Any]) -> dict[str, list[int]]:
    """Row indices per label, keyed as ``LabelMap`` compares labels, each list in row order."""
    by_label: dict[str, list[int]] = {}
    for i, v in enumerate(values):
        by_label.setdefault(LabelMap._key(v), []).append(i)
    return by_label


def per_class_sample(values: Sequence[Any], k: int, seed: int, labels: LabelMap, where: str) -> list[int]:
    """Sorted indices of ``k`` rows of each class of ``labels``, drawn with a ``seed``-ed RNG class by class in label
    order (stratified few-shot selection). A class with fewer than ``k`` rows is an error naming it and its count
    (a smaller class would silently unbalance the K-shot set); rows whose label is outside ``labels`` are not drawn."""
    import random

    rng, by_label, picked = random.Random(seed), rows_by_label(values), []
    short = [(n, len(by_label.get(LabelMap._key(n), []))) for n in labels.names
             if len(by_label.get(LabelMap._key(n), [])) < k]
    if short:
        listed = ", ".join(f"{n!r} has {c}" for n, c in short)
        raise DataError(f"{where}: {k} rows per class requested, but class {listed} (lower the number or add rows)")
    for name in labels.names:
        picked += rng.sample(by_label[LabelMap._key(name)], k)
    return sorted(picked)
