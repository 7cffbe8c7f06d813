"""Remote data files (``s3://``, ``gs://``, ``az://``, ``https://`` ...) through ``fsspec``.

**Opening.** ``is_url`` tells a URL from a local path; ``filesystem`` imports the scheme's fsspec backend only when
such a URL is used (s3fs, gcsfs, adlfs: the ``remote`` extra), with an error naming the extra when it is missing.
Credentials come from the backend's own environment and config files (``AWS_*``, ``GOOGLE_APPLICATION_CREDENTIALS``,
``AZURE_STORAGE_*``, ``~/.aws``, fsspec's ``FSSPEC_<PROTOCOL>_<KEY>``): nothing here reads or stores them, and a URL is
shown ``config.redacted`` (no ``user:password@``, no query string) in messages and logs.

**Streaming.** ``open_file`` reads a URL through ``RetryingFile``: a transient failure (connection reset or dropped,
timeout, a 5xx answer) is retried ``data.remote_retries`` times with exponential backoff, reopening the object at the
byte where the read stopped, so the records read are the same as without the fault; each retry is logged and counted
(``take_retries``, the stream's ``remote_retries`` count in the run's metrics).

**Map-style files.** ``local_copy`` fetches a remote file once into a bounded local cache (``data.remote_cache_dir``,
``data.remote_cache_gb``; least recently used copies evicted first), keyed by the URL and the object's identity
(``identity``: size plus ETag / generation / modification time from ``fs.info``): a changed object is fetched again.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Optional, TypeVar

from mm_ptft.config import redacted
from mm_ptft.types import DataError

log = logging.getLogger(__name__)
T = TypeVar("T")

#: scheme → the package that reads it (installed by ``pip install 'mm_ptft[remote]'``)
BACKENDS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
            "abfss": "adlfs", "http": "aiohttp", "https": "aiohttp"}
#: ``fs.info`` fields that change when an object changes (backends name them differently)
VERSION_FIELDS = ("etag", "generation", "version_id", "md5hash", "content-md5", "digest", "last-modified",
                  "lastmodified", "last_modified", "mtime", "crc32c")
#: exception class names (anywhere in the cause chain) of failures worth retrying: dropped or reset connections,
#: timeouts, truncated bodies (aiohttp, botocore, fsspec, the standard library)
TRANSIENT = {"ConnectionError", "TimeoutError", "FSTimeoutError", "ClientPayloadError", "ClientConnectionError",
             "ClientOSError", "ServerDisconnectedError", "ServerTimeoutError", "IncompleteRead", "IncompleteReadError",
             "ReadTimeoutError", "ConnectTimeoutError", "EndpointConnectionError", "ConnectionClosedError",
             "ResponseStreamingError", "HTTPClientError", "ProtocolError", "ContentLengthError"}


@dataclass
class RemoteSettings:
    """The ``data.remote_*`` keys of the running config (``configure``)."""

    cache_dir: str = ""
    cache_gb: float = 20.0
    retries: int = 5
    backoff_s: float = 0.5  # the first retry waits this long, each next one twice as long (at most 30 s)

    def root(self) -> Path:
        default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mm_ptft" / "remote"
        return Path(self.cache_dir or os.environ.get("MM_PTFT_REMOTE_CACHE", "") or default)


SETTINGS = RemoteSettings()
_RETRIES = {"pid": os.getpid(), "n": 0}  # this process's retries not yet taken by a stream (take_retries)
STATS = {"downloads": 0, "hits": 0}  # local_copy's fetches and cache hits in this process


def configure(data: Any) -> None:
    """Use ``data``'s ``remote_cache_dir`` / ``remote_cache_gb`` / ``remote_retries`` (a config's data section)."""
    SETTINGS.cache_dir = getattr(data, "remote_cache_dir", "") or ""
    SETTINGS.cache_gb = float(getattr(data, "remote_cache_gb", 20.0))
    SETTINGS.retries = int(getattr(data, "remote_retries", 5))


def is_url(path: Any) -> bool:
    """Whether ``path`` is a remote URL (``scheme://...``, a ``file://`` URL excepted)."""
    return isinstance(path, str) and "://" in path and not path.startswith("file://")


def scheme(url: str) -> str:
    return url.split("://", 1)[0].lower()


def filesystem(url: str, key: str = "data.train_file") -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) of ``url``; the backend imported now. A missing backend is an error naming
    the extra to install."""
    import fsspec

    proto = scheme(url)
    try:
        cls = fsspec.get_filesystem_class(proto)
    except ImportError as err:
        need = BACKENDS.get(proto, "its fsspec backend")
        raise DataError(f"{key}={redacted(url)}: reading {proto}:// needs {need}: pip install 'mm_ptft[remote]' "
                        f"({err})") from None
    except ValueError as err:
        raise DataError(f"{key}={redacted(url)}: no fsspec filesystem reads {proto}:// ({err})") from None
    fs = cls()  # storage options from fsspec's own config (FSSPEC_S3_*, ~/.config/fsspec), credentials the backend's
    if proto in ("s3", "s3a"):
        fs.retries = 1  # s3fs would retry a dropped read silently: with_retries does it, and counts it
    return fs, fs._strip_protocol(url) if proto not in ("http", "https") else url


def transient(err: BaseException) -> bool:
    """Whether ``err`` (or an exception it was raised from) is a failure a retry may get past."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        names = {k.__name__ for k in type(err).__mro__}
        status = getattr(err, "status", None) or getattr(err, "code", None)
        meta = getattr(err, "response", None)
        if isinstance(meta, dict):
            status = meta.get("ResponseMetadata", {}).get("HTTPStatusCode", status)
        if names & TRANSIENT or (isinstance(status, int) and 500 <= status < 600):
            return True
        err = err.__cause__ or err.__context__
    return False


def with_retries(url: str, call: Callable[[], T], what: str, key: str = "data.train_file") -> T:
    """``call()``, retried with exponential backoff while it fails transiently (``data.remote_retries`` times); a
    missing object is an error naming the URL."""
    for attempt in range(SETTINGS.retries + 1):
        try:
            return call()
        except FileNotFoundError:
            raise DataError(f"{key}={redacted(url)}: no such object") from None
        except Exception as err:  # backends raise many types; transient() decides
            if not transient(err) or attempt == SETTINGS.retries:
                raise DataError(f"{key}={redacted(url)}: {what} failed ({type(err).__name__}: {err})") from err
            wait = min(SETTINGS.backoff_s * 2 ** attempt, 30.0)
            _count_retry()
            log.warning("%s: %s failed (%s); retry %d of %d in %.1f s", redacted(url), what, type(err).__name__,
                        attempt + 1, SETTINGS.retries, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def _own_retries() -> dict[str, int]:
    """The counter of this process: a loader worker forked from the main process starts from 0, not from the
    parent's count (which each worker would report again)."""
    if _RETRIES["pid"] != os.getpid():
        _RETRIES.update(pid=os.getpid(), n=0)
    return _RETRIES


def _count_retry() -> None:
    _own_retries()["n"] += 1


def take_retries() -> int:
    """Retries made in this process since the last call (a stream adds them to its counts)."""
    own = _own_retries()
    n, own["n"] = own["n"], 0
    return n


class RetryingFile(io.RawIOBase):
    """A remote object read sequentially or by seeks; a transient failure reopens it at the current byte and reads
    on (``with_retries``), so the bytes returned are the object's whatever failed on the way."""

    def __init__(self, url: str, key: str = "data.train_file") -> None:
        super().__init__()
        self.url, self.key, self.pos = url, key, 0
        self.fs, self.path = filesystem(url, key)
        self._file: Optional[Any] = None
        self.size = self._retry(lambda: self._open().size, "open")

    def _open(self) -> Any:
        if self._file is None:
            self._file = self.fs.open(self.path, "rb")
            self._file.seek(self.pos)
        return self._file

    def _retry(self, call: Callable[[], T], what: str) -> T:
        def once() -> T:
            try:
                return call()
            except Exception:
                self._drop()  # the next attempt reopens at self.pos
                raise

        return with_retries(self.url, once, what, self.key)

    def _drop(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            try:
                f.close()
            except Exception:  # closing a broken connection may fail as well
                pass

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        want = len(buffer)
        data = self._retry(lambda: self._open().read(want), f"reading at byte {self.pos}")
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        if self._file is not None:
            self._file.seek(self.pos)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def close(self) -> None:
        self._drop()
        super().close()


def open_file(path: str, mode: str = "rb", key: str = "data.train_file", **text: Any) -> IO[Any]:
    """``open(path, mode, **text)`` for a local path; for a URL a buffered ``RetryingFile`` (text modes decoded with
    ``text``'s encoding/newline)."""
    if not is_url(path):
        return open(path, mode, **text)
    raw = io.BufferedReader(RetryingFile(path, key), buffer_size=1 << 20)
    return raw if "b" in mode else io.TextIOWrapper(raw, **text)


def identity(url: str, key: str = "data.train_file") -> dict[str, Any]:
    """What names one version of a remote object: its URL (``redacted``), size and the version fields ``fs.info``
    gives (ETag, generation, modification time ...)."""
    fs, path = filesystem(url, key)
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache(path)  # a listing cached earlier must not hide a changed object
    info = with_retries(url, lambda: fs.info(path), "fs.info", key)
    if info.get("type") == "directory":
        raise DataError(f"{key}={redacted(url)}: a directory, not a file")
    found = {k.lower(): v for k, v in info.items()}
    version = {k: str(found[k]) for k in VERSION_FIELDS if found.get(k) not in (None, "")}
    return {"url": redacted(url), "size": found.get("size"), **version}


def expand(pattern: str, key: str, kinds: Callable[[str], str]) -> list[str]:
    """The URLs one pattern names: a glob (``s3://b/shards/*.tar``), a "directory" (its files of a known kind,
    ``kinds(name)`` non-empty), or one object (which must exist); sorted."""
    fs, path = filesystem(pattern, key)
    proto = scheme(pattern)
    magic = proto not in ("http", "https") and any(c in path for c in "*?[")
    if magic:
        found = with_retries(pattern, lambda: fs.glob(path), "listing", key)
        urls = sorted(fs.unstrip_protocol(p) for p in found)
        if not urls:
            raise DataError(f"{key}={redacted(pattern)}: no object matches")
        return urls
    info = with_retries(pattern, lambda: fs.info(path), "fs.info", key)
    if info.get("type") != "directory":
        return [pattern]
    listed = with_retries(pattern, lambda: fs.ls(path, detail=False), "listing", key)
    urls = sorted(fs.unstrip_protocol(p) for p in listed if kinds(p))
    if not urls:
        raise DataError(f"{key}={redacted(pattern)}: no shard of a known kind in this directory")
    return urls


# ---- media files that tables name ----------------------------------------------------------------------------------
def resolve(value: str, table: str) -> str:
    """Where a table's media cell points: a URL or an absolute path as it is; a relative path against the table's
    folder, which for a remote table is its URL's "folder" (``s3://b/data/t.csv`` + ``a/x.wav`` →
    ``s3://b/data/a/x.wav``; the table URL's query string is not carried over)."""
    if is_url(value) or os.path.isabs(value):
        return value
    if is_url(table):
        return table.split("?", 1)[0].rsplit("/", 1)[0] + "/" + value
    return os.path.join(os.path.dirname(os.path.abspath(table)), value)


_MEDIA: dict[str, str] = {}  # URL → its local copy, in this process


def media_file(path: str, key: str = "media") -> str:
    """A local path to decode a media file from: ``path`` itself, or for a URL its local copy (``local_copy``: fetched
    once into the bounded remote cache, transient failures retried and counted, a missing object a ``DataError``
    naming the URL), remembered in this process while the copy is there."""
    if not is_url(path):
        return path
    found = _MEDIA.get(path)
    if found is None or not os.path.isfile(found):
        found = _MEDIA[path] = local_copy(path, key)
    return found


def local_media(path: str) -> Optional[str]:
    """``media_file(path)``, or None when a URL names no object (a check counts it as a missing file; other failures
    are errors naming the URL)."""
    try:
        return media_file(path)
    except DataError as err:
        if str(err).endswith("no such object"):
            return None
        raise


# ---- the local copies of map-style files ---------------------------------------------------------------------------
def local_copy(url: str, key: str = "data.train_file") -> str:
    """A local copy of ``url`` (a map-style data file), fetched once into the cache and then reused while the object's
    ``identity`` is the same; the file keeps its name (its extension says its format)."""
    from filelock import FileLock

    ident = identity(url, key)
    digest = hashlib.blake2b(json.dumps(ident, sort_keys=True, default=str).encode(), digest_size=12).hexdigest()
    root = SETTINGS.root()
    entry = root / digest
    name = os.path.basename(redacted(url).rstrip("/")) or "data"
    target = entry / name
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{digest}.lock")):
        if target.is_file() and target.stat().st_size == (ident["size"] if ident["size"] is not None
                                                           else target.stat().st_size):
            os.utime(entry)  # most recently used
            STATS["hits"] += 1
            log.info("remote cache: hit %s -> %s", ident["url"], target)
            return str(target)
        shutil.rmtree(entry, ignore_errors=True)
        entry.mkdir(parents=True)
        _download(url, target, key)
        (entry / "identity.json").write_text(json.dumps(ident, indent=1, default=str))
        STATS["downloads"] += 1
        log.info("remote cache: fetched %s -> %s (%.1f MiB)", ident["url"], target, target.stat().st_size / 2 ** 20)
    evict(root, keep=entry)
    return str(target)


def _download(url: str, target: Path, key: str) -> None:
    part = target.with_name(target.name + ".part")
    with open_file(url, "rb", key) as src, open(part, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 22)
    os.replace(part, target)


def evict(root: Path, keep: Optional[Path] = None) -> list[Path]:
    """Remove the least recently used copies until the cache is within ``data.remote_cache_gb`` (``keep``, the one
    just used, stays even when it alone is larger); the removed entries."""
    limit = SETTINGS.cache_gb * 2 ** 30
    entries = [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    sizes = {p: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) for p in entries}
    total, removed = sum(sizes.values()), []
    for p in sorted(entries, key=lambda e: e.stat().st_mtime):
        if total <= limit:
            break
        if keep is not None and p == keep:
            continue
        shutil.rmtree(p, ignore_errors=True)
        total -= sizes[p]
        removed.append(p)
        log.info("remote cache: evicted %s (%.1f MiB; limit data.remote_cache_gb=%g)", p, sizes[p] / 2 ** 20,
                 SETTINGS.cache_gb)
    return removed


__all__ = ["RemoteSettings", "RetryingFile", "configure", "evict", "expand", "filesystem", "identity", "is_url",
           "local_copy", "local_media", "media_file", "open_file", "resolve", "take_retries", "transient",
           "with_retries"]
