"""Data sources bigger than memory: local shards (CSV/TSV/JSONL/parquet), WebDataset tar shards and
Hugging Face datasets (by name, ``streaming=True``, or a ``save_to_disk`` directory), read record by record.

``expand_sources`` turns a config value — a file, a glob (``shards/*.parquet``), a brace range
(``train-{000..099}.tar``), a list of those, a directory of shards, or ``hf:<name>[:<split>]`` — into
``Shard``s; ``read_records(shard)`` yields ``(row, record)`` in the shard's own row order (0-based, a
CSV header excluded), from a given row on. Records are plain dicts: table columns, or a WebDataset
sample's ``{"__key__": ..., "<ext>": bytes}`` (the open_clip / img2dataset layout). Tables are parsed by
pyarrow, tars by ``webdataset``'s tar iterators, HF sources by ``datasets``: nothing is read up front.
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence, Union

from mm_ptft.config import redacted
from mm_ptft.data.remote import SETTINGS, expand as expand_urls, identity, is_url, local_copy, open_file
from mm_ptft.data.tables import BUILDERS, HF_PREFIX, DataError, csv_header, hf_name_split

#: shard kinds by extension; ``hf`` for a Hugging Face source
KINDS = {**{ext: kind for ext, kind in BUILDERS.items() if ext != ".json"}, ".json": "json", ".tar": "tar"}


@dataclass(frozen=True)
class Shard:
    """One readable unit: a local file or a URL, or one shard of a Hugging Face dataset (``index`` of ``count``)."""

    path: str
    kind: str  # csv | json | parquet | tar | hf
    index: int = 0
    count: int = 1
    split: str = "train"

    @property
    def name(self) -> str:
        return f"{self.path}[{self.index}/{self.count}]" if self.kind == "hf" else redacted(self.path)


def expand_sources(spec: Union[str, Sequence[str]], key: str = "data.train_file") -> list[Shard]:
    """The shards a config value names (sorted within each pattern); an error naming ``key`` when none exist."""
    from braceexpand import braceexpand

    values = [spec] if isinstance(spec, str) else list(spec)
    if not values or not all(isinstance(v, str) and v.strip() for v in values):
        raise DataError(f"{key}={spec!r}: give a file, a glob, a brace range, a list of them, or hf:<dataset>")
    shards: list[Shard] = []
    for value in values:
        if value.startswith(HF_PREFIX):
            shards += _hf_shards(value[len(HF_PREFIX):], key)
            continue
        for pattern in braceexpand(value):
            shards += _remote_shards(pattern, key) if is_url(pattern) else _local_shards(pattern, key)
    return shards


def _local_shards(pattern: str, key: str) -> list[Shard]:
    if os.path.isdir(pattern):
        if any(os.path.isfile(os.path.join(pattern, f)) for f in ("dataset_info.json", "dataset_dict.json")):
            # datasets' save_to_disk directory (a Dataset, or a DatasetDict whose "train" split is read)
            return _hf_shards(pattern, key)
        paths = sorted(p for p in glob.glob(os.path.join(pattern, "*")) if _kind(p))
    else:
        paths = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    if not paths:
        raise DataError(f"{key}={pattern}: no shard matches (supported: {sorted(KINDS)} files, hf:<dataset>)")
    out = []
    for p in paths:
        if not os.path.isfile(p):
            raise DataError(f"{key}={p}: file not found")
        if not _kind(p):
            raise DataError(f"{key}={p}: unsupported extension {os.path.splitext(p)[1]!r}; use one of {sorted(KINDS)}")
        out.append(Shard(p, _kind(p)))
    return out


def _remote_shards(pattern: str, key: str) -> list[Shard]:
    """The objects a URL pattern names (``data.remote.expand``), each of a known kind."""
    out = []
    for url in expand_urls(pattern, key, _kind):
        if not _kind(url):
            raise DataError(f"{key}={redacted(url)}: unsupported extension "
                            f"{os.path.splitext(redacted(url))[1]!r}; use one of {sorted(KINDS)}")
        out.append(Shard(url, _kind(url)))
    return out


def _kind(path: str) -> str:
    return KINDS.get(os.path.splitext(redacted(path))[1].lower(), "")


def _hf_shards(spec: str, key: str) -> list[Shard]:
    """``name[:split]`` on the hub (streamed) or a local ``save_to_disk`` directory → one Shard per data shard."""
    name, split = hf_name_split(spec)
    ds = _hf_stream(Shard(name, "hf", 0, 1, split), key)
    return [Shard(name, "hf", i, ds.num_shards, split) for i in range(ds.num_shards)]


def _hf_stream(shard: Shard, key: str = "data.train_file") -> Any:
    import datasets

    datasets.disable_progress_bars()
    try:
        if os.path.isdir(shard.path):
            ds = datasets.load_from_disk(shard.path)
            ds = ds[shard.split] if isinstance(ds, datasets.DatasetDict) else ds
            return ds.to_iterable_dataset(num_shards=min(len(ds), 64) or 1)
        return datasets.load_dataset(shard.path, split=shard.split, streaming=True)
    except Exception as err:  # hub/network/format errors come in many types
        raise DataError(f"{key}={HF_PREFIX}{shard.path}: could not open ({type(err).__name__}: {err})") from err


def read_records(shard: Shard, start: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(row, record)`` of ``shard`` from row ``start`` on (earlier rows are read and dropped, never decoded)."""
    reader = {"csv": _csv, "tsv": _csv, "json": _jsonl, "parquet": _parquet, "tar": _tar, "hf": _hf}[shard.kind]
    for row, record in enumerate(reader(shard)):
        if row >= start:
            yield row, record


def _source(shard: Shard, key: str = "") -> Any:
    """What pyarrow reads: a local file's path, a URL's retrying file object (``data.remote.open_file``)."""
    return open_file(shard.path, "rb", key or "data.train_file") if is_url(shard.path) else shard.path


def _csv(shard: Shard) -> Iterator[dict[str, Any]]:
    for batch in _csv_blocks(shard, None, ""):  # cells as strings: one block's inferred types
        yield from batch.to_pylist()  # could differ from the next one's


def _csv_blocks(shard: Shard, column: Optional[str], key: str) -> Iterator[Any]:
    """pyarrow record batches of a CSV/TSV, every cell a string; only ``column`` when given (pyarrow parses the
    others but keeps none of them). Header checks as ``tables.csv_header``."""
    import pyarrow as pa
    from pyarrow import csv as pacsv

    delimiter = "\t" if redacted(shard.path).lower().endswith(".tsv") else ","
    names = csv_header(shard.path, key, delimiter, lenient=False)
    if not names:  # an empty file: no records
        return
    if column is not None and column not in names:
        raise DataError(f"{key}={shard.name}: missing column {column!r}; the file has {names}")
    keep = [column] if column is not None else names
    yield from pacsv.open_csv(
        _source(shard, key), read_options=pacsv.ReadOptions(column_names=names, skip_rows=1, block_size=1 << 22),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in keep}, include_columns=keep,
                                             strings_can_be_null=True))


def _jsonl(shard: Shard) -> Iterator[dict[str, Any]]:
    with open_file(shard.path, "rb") as f:  # decoded line by line, so a line that is not UTF-8 is named
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{shard.name}: line {n} is not UTF-8 text ({err.reason} at byte {err.start})") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as err:
                raise DataError(f"{shard.name}: line {n} is not JSON ({err})") from None
            if not isinstance(record, dict):
                raise DataError(f"{shard.name}: line {n} is not a JSON object")
            yield record


def _parquet(shard: Shard) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(_source(shard)).iter_batches(batch_size=1024):
        yield from batch.to_pylist()


def _tar(shard: Shard) -> Iterator[dict[str, Any]]:
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    with open_file(shard.path, "rb") as f:
        files = ({**member, "__url__": shard.name} for member in tar_file_iterator(f))
        for sample in group_by_keys(files):
            yield {k: v for k, v in sample.items() if k != "__url__"}


def _hf(shard: Shard) -> Iterator[dict[str, Any]]:
    ds = _hf_stream(shard)
    yield from (ds.shard(num_shards=shard.count, index=shard.index) if shard.count > 1 else ds)


def count_records(shard: Shard) -> int:
    """Records in one shard (parquet from its metadata; others by reading it)."""
    if shard.kind == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(_source(shard)).metadata.num_rows
    return sum(1 for _ in read_records(shard))


def column_values(shards: Sequence[Shard], column: str, key: str = "data.train_file") -> set[Any]:
    """The distinct values of one column over all shards (a label set), reading that column alone where the
    format allows (pyarrow for CSV/parquet), so memory stays bounded by the number of distinct values."""
    values: set[Any] = set()
    for batch in column_batches(shards, column, key):
        values.update(batch)
    return values


def column_batches(shards: Sequence[Shard], column: str, key: str = "data.train_file") -> Iterator[list[Any]]:
    """One column over all shards, in bounded lists (e.g. for a running mean)."""
    for shard in shards:
        yield from _column_batches(shard, column, key)


def _column_batches(shard: Shard, column: str, key: str) -> Iterator[list[Any]]:
    if shard.kind == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(_source(shard, key))
        if column not in pf.schema_arrow.names:
            raise DataError(f"{key}={shard.name}: missing column {column!r}; the file has {pf.schema_arrow.names}")
        for batch in pf.iter_batches(batch_size=65536, columns=[column]):
            yield batch.column(0).to_pylist()
        return
    if shard.kind == "csv":
        yield from (batch.column(0).to_pylist() for batch in _csv_blocks(shard, column, key))
        return
    rows = (record for _, record in read_records(shard))
    first = next(rows, None)
    if first is not None and column not in first:
        raise DataError(f"{key}={shard.name}: missing column {column!r}; the records have {sorted(first)}")
    if first is not None:
        yield [first[column]]
    chunk: list[Any] = []
    for record in rows:
        chunk.append(record.get(column))
        if len(chunk) >= 65536:
            yield chunk
            chunk = []
    yield chunk


def remote_plan(spec: Union[str, Sequence[str]], key: str, streaming: bool) -> Optional[dict[str, Any]]:
    """What a config value naming URLs reads (None when it names none): its objects (count, bytes), and how —
    streamed through fsspec with ``data.remote_retries`` retries, or (map-style) from a local copy in the remote
    cache (fetched now when missing). ``mm-ptft check-data`` reports it."""
    values = [spec] if isinstance(spec, str) else list(spec)
    if not any(is_url(v) for v in values):
        return None
    shards = expand_sources(spec, key)
    sizes = [identity(s.path, key)["size"] or 0 for s in shards if is_url(s.path)]
    shown = [redacted(v) for v in values]
    plan = {"key": key, "value": shown if len(shown) > 1 else shown[0], "objects": len(sizes), "bytes": sum(sizes)}
    if streaming:
        return {**plan, "read": f"streamed through fsspec (data.remote_retries={SETTINGS.retries})"}
    copies = [local_copy(s.path, key) for s in shards if is_url(s.path)]
    return {**plan, "read": f"local copy in {SETTINGS.root()} (data.remote_cache_gb={SETTINGS.cache_gb:g})",
            "local": copies}


def head_records(shards: Sequence[Shard], n: int) -> list[dict[str, Any]]:
    """The first ``n`` records across the shards (e.g. a corpus to learn a tokenizer from)."""
    out: list[dict[str, Any]] = []
    for shard in shards:
        for _, record in read_records(shard):
            if len(out) >= n:
                return out
            out.append(record)
    return out
