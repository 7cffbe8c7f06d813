"""Preprocessed tables as memory-mapped Arrow files, cached by the data's identity and the preprocessing settings.

A map-style recipe tokenises (or checks) its table once, through ``datasets.Dataset.map``, into Arrow files of one
cache entry; a later run with the same data files (path, size, modification time; a URL's size and ETag) and the same settings (tokenizer
identity, ``max_length``, columns, labels, seed ...) opens those files memory-mapped instead: nothing is parsed or
tokenised again, and samples are read from the page cache, not held as Python objects. Any change of data or
settings gives another key, hence a new entry.

An entry is a directory ``<root>/<key>/`` holding one ``<split>.arrow`` per split and ``meta.json``, written last
(after the Arrow files are complete and renamed), with each file's size and BLAKE2 digest and what preparing learned
(labels, counts, target scale). An entry whose ``meta.json`` is missing (a build that died) or whose files do not
match it (truncated, edited) is removed and rebuilt, never read. One process builds an entry under a file lock
(``<root>/<key>.lock``); other processes (ranks of a ``torchrun`` job, a second run) wait for the lock and then read
what it wrote.
"""
from __future__ import annotations

import collections.abc
import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np
from torch.utils.data import Dataset

from mm_ptft.data.folders import tree_identity
from mm_ptft.data.remote import SETTINGS, identity, is_url

FORMAT_VERSION = 1  # part of every key: a change of what an entry holds invalidates old entries
DEFAULT_DIR = ".mm_ptft_cache"  # beside the (first) data file unless data.cache_dir names a directory
META = "meta.json"


@dataclass
class CacheFields:
    """Config fields of a recipe whose map-style tables go through the cache (mixed into its ``data`` section)."""

    cache: bool = True  # false: preprocess in memory every run (nothing written)
    cache_dir: str = ""  # empty: ``.mm_ptft_cache/`` beside data.train_file (or data.eval_file)


@dataclass
class CacheStatus:
    """How a run got its tables: ``hit`` (read an entry), ``miss`` (built and wrote one), ``rebuilt`` (an entry
    was there but incomplete or corrupt: removed and built again) or ``off`` (``data.cache=false``)."""

    state: str
    path: str = ""
    size_bytes: int = 0
    key: str = ""
    reason: str = "data.cache=false"  # why it is off

    def describe(self) -> str:
        if self.state == "off":
            return f"cache: off ({self.reason})"
        return f"cache: {self.state} {self.path} ({self.size_bytes / 2 ** 20:.1f} MiB)"


def file_identity(path: str) -> dict[str, Any]:
    """What names one version of a data file: its absolute path, size and modification time (ns); of a remote file
    (a URL), ``remote.identity``: its URL, size and ETag / generation / modification time; of a folder
    (``data/folders.py``), a digest of every file under it (``tree_identity``)."""
    if is_url(path):
        return identity(path)
    if os.path.isdir(path):
        return {"path": os.path.abspath(path), "tree": tree_identity(path)}
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def tokenizer_identity(tokenizer: Any) -> str:
    """A digest of everything a tokenizer's output depends on: a fast tokenizer's full serialisation (vocabulary,
    normaliser, pre-tokeniser, post-processor), else its class, vocabulary and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    elif not hasattr(tokenizer, "get_vocab"):  # open_clip's tokenizers: fixed per model name and context length
        text = json.dumps([type(tokenizer).__name__, getattr(tokenizer, "model_name", None),
                           getattr(tokenizer, "context_length", None)])
    else:
        text = json.dumps([type(tokenizer).__name__, sorted(tokenizer.get_vocab().items()),
                           sorted(map(str, tokenizer.all_special_tokens))])
    extra = json.dumps([type(tokenizer).__name__, getattr(tokenizer, "sep_token_id", None)])
    return hashlib.blake2b((text + extra).encode(), digest_size=16).hexdigest()


def cache_key(files: Sequence[str], settings: Mapping[str, Any]) -> str:
    """The entry name of ``files`` (their identities) preprocessed with ``settings`` (JSON-serialisable)."""
    blob = json.dumps({"version": FORMAT_VERSION, "files": [file_identity(f) for f in files], "settings": settings},
                      sort_keys=True, default=str)
    return hashlib.blake2b(blob.encode(), digest_size=12).hexdigest()


def _digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


class TableCache:
    """One cache entry (``root/key``); ``enabled=False`` keeps everything in memory and writes nothing."""

    def __init__(self, root: Optional[str], key: str, enabled: bool = True, reason: str = "data.cache=false") -> None:
        self.enabled, self.reason = enabled and root is not None, reason if root is not None else "no data file"
        self.root, self.key, self.broken = Path(root or "."), key, ""
        self.dir = self.root / key

    def file_for(self, split: str) -> Optional[str]:
        """Where ``datasets.map`` writes ``split`` (None: keep it in memory)."""
        return str(self.dir / f"{split}.arrow") if self.enabled else None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Held while one process checks, builds or reads the entry; the others wait (``filelock``)."""
        if not self.enabled:
            yield
            return
        from filelock import FileLock

        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / f"{self.key}.lock")):
            yield

    def status(self, state: str) -> CacheStatus:
        if not self.enabled:
            return CacheStatus("off", reason=self.reason)
        size = sum(p.stat().st_size for p in self.dir.iterdir()) if self.dir.is_dir() else 0
        return CacheStatus(state, str(self.dir), size, self.key)

    def load(self) -> Optional[tuple[dict[str, Any], dict[str, Any]]]:
        """({split: memory-mapped Dataset}, info) of a complete, intact entry; None when there is none (a broken one
        is removed, so the caller rebuilds it)."""
        import datasets

        meta_path = self.dir / META
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            for split, want in meta["files"].items():
                path = self.dir / f"{split}.arrow"
                if path.stat().st_size != want["size"] or _digest(path) != want["digest"]:
                    raise ValueError(f"{path} does not match {META}")
            tables = {split: datasets.Dataset.from_file(str(self.dir / f"{split}.arrow"))
                      for split in meta["files"]}
            if any(len(tables[s]) != meta["files"][s]["rows"] for s in tables):
                raise ValueError("row counts differ from meta.json")
        except (OSError, ValueError, KeyError, TypeError) as err:
            self.broken = str(err)
            return None
        return tables, meta["info"]

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def commit(self, tables: Mapping[str, Any], info: Mapping[str, Any]) -> dict[str, Any]:
        """Seal the entry the ``datasets.map`` calls wrote (``meta.json`` last) and reopen its files memory-mapped."""
        if not self.enabled:
            return dict(tables)
        files = {s: {"rows": len(t), "size": (self.dir / f"{s}.arrow").stat().st_size,
                     "digest": _digest(self.dir / f"{s}.arrow")} for s, t in tables.items()}
        tmp = self.dir / f"{META}.tmp"
        tmp.write_text(json.dumps({"files": files, "info": dict(info)}, indent=1, default=str))
        os.replace(tmp, self.dir / META)
        found = self.load()
        if found is None:
            raise OSError(f"{self.dir}: the cache entry just written cannot be read back ({self.broken})")
        return found[0]


Build = Callable[[TableCache], tuple[dict[str, Any], dict[str, Any]]]


def cached(cache: TableCache, build: Build) -> tuple[dict[str, Any], dict[str, Any], CacheStatus]:
    """({split: Dataset}, info, status): the entry's tables when it is complete and intact, else ``build(cache)``
    (which writes each split with ``datasets.map(cache_file_name=cache.file_for(split))``), sealed and reopened."""
    with cache.lock():
        if cache.enabled:
            found = cache.load()
            if found is not None:
                return found[0], found[1], cache.status("hit")
            state = "rebuilt" if cache.dir.exists() else "miss"
            cache.discard()
            cache.dir.mkdir(parents=True)
        tables, info = build(cache)
        return cache.commit(tables, info), info, cache.status(state if cache.enabled else "off")


# ---- reading ------------------------------------------------------------------------------------------------------
class ArrowRecords(Dataset):
    """Samples of a preprocessed ``datasets.Dataset`` (memory-mapped when it came from the cache), one dict per row;
    the loader's batch is read in one call (``__getitems__``), not row by row."""

    def __init__(self, table: Any, status: Optional[CacheStatus] = None) -> None:
        self.table, self.cache = table.with_format(None), status

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.table[int(i)]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        cols = self.table[[int(i) for i in indices]]
        names = list(cols)
        return [dict(zip(names, vals)) for vals in zip(*(cols[n] for n in names))]

    def column(self, name: str) -> np.ndarray:
        """One numeric column as a NumPy array (no Python objects per row)."""
        return self.table.data.column(name).to_numpy()

    def view(self, name: str) -> "ArrowColumn":
        """One column as a read-only sequence, each value read when indexed (e.g. image paths, never all held)."""
        return ArrowColumn(self.table.data.column(name))

    def list_lengths(self, name: str) -> np.ndarray:
        """Lengths of a list column (e.g. token counts) as a NumPy array."""
        import pyarrow.compute as pc

        return pc.list_value_length(self.table.data.column(name)).to_numpy()

    @property
    def items(self) -> list[dict[str, Any]]:
        """Every sample in order, as a list (``Records.items``; small tables: prefer ``iter_items``)."""
        return list(self.iter_items())

    def iter_items(self) -> Iterator[dict[str, Any]]:
        """Every sample in order, read in batches of 1,000 (never all held)."""
        for batch in self.table.iter(batch_size=1000):
            names = list(batch)
            yield from (dict(zip(names, vals)) for vals in zip(*(batch[n] for n in names)))


class ArrowColumn(collections.abc.Sequence):
    """A column of an Arrow table as a Python sequence: ``col[i]`` reads one value; equal to any sequence of the same
    values."""

    def __init__(self, column: Any) -> None:
        self.data = column

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self.data[j].as_py() for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return self.data[int(i)].as_py()

    def __iter__(self) -> Iterator[Any]:
        return iter(self.data.to_pylist())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, collections.abc.Sequence) and list(self) == list(other)


def default_root(files: Sequence[str], cache_dir: str) -> Optional[str]:
    """``cache_dir`` if given, else ``.mm_ptft_cache`` beside the first data file (None without files); for a remote
    file, ``tables/`` in the remote cache (``data.remote_cache_dir``)."""
    if cache_dir:
        return cache_dir
    files = [f for f in files if f]
    if files and is_url(files[0]):
        return str(SETTINGS.root() / "tables")
    return os.path.join(os.path.dirname(os.path.abspath(files[0])), DEFAULT_DIR) if files else None


def features(spec: Mapping[str, str]) -> Any:
    """``{"text": "int32[]", "labels": "int64"}`` → ``datasets.Features`` (``[]``: a list of that type; ``[][]``: a list
    of such lists)."""
    import datasets

    listed = getattr(datasets, "List", None) or datasets.Sequence  # List from datasets 4; Sequence before

    def one(kind: str) -> Any:
        return listed(one(kind[:-2])) if kind.endswith("[]") else datasets.Value(kind)

    return datasets.Features({name: one(kind) for name, kind in spec.items()})


def unique_values(table: Any, name: str, batch_size: int = 10_000) -> list[Any]:
    """The distinct values of one column of a ``datasets.Dataset``, read in batches (never the whole column as Python
    objects); of any other mapping of columns, its column's values."""
    if not hasattr(table, "select_columns"):
        return list(table[name])
    seen: dict[Any, None] = {}
    for batch in table.select_columns([name]).iter(batch_size=batch_size):
        seen.update(dict.fromkeys(v for v in batch[name] if v is not None and v == v))  # None and NaN: empty cells
    return list(seen)


__all__ = ["ArrowColumn", "ArrowRecords", "CacheFields", "CacheStatus", "TableCache", "cache_key", "cached",
           "default_root", "features", "file_identity", "tokenizer_identity", "unique_values"]
