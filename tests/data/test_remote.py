"""``data.remote`` against a real S3 server on 127.0.0.1 (moto in server mode): brace ranges and globs of URLs as
shards, records identical to the local files', a connection cut mid-shard (by a TCP proxy) retried from the byte it
stopped at and counted, a missing object named, the local copy cache of map-style files (hit, a changed object
fetched again, LRU eviction), a missing backend naming the extra, URLs redacted. Servers: tests/remote_fixtures.py."""
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from mm_ptft.config import redacted
from mm_ptft.data import remote
from mm_ptft.data.shards import expand_sources, read_records
from mm_ptft.data.stream import ShardStream
from mm_ptft.data.tables import DataError, load_table
from mm_ptft.types import COUNTS


@pytest.fixture
def quick(monkeypatch, tmp_path):
    """Fast backoff and a cache directory of this test's own."""
    monkeypatch.setattr(remote, "SETTINGS", remote.RemoteSettings(cache_dir=str(tmp_path / "rc"), backoff_s=0.01))
    remote.take_retries()


def write_tars(root, n=4, per=40):
    paths = []
    for k in range(n):
        path = root / f"{k}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(per):
                sink.write({"__key__": f"{k}_{i}", "txt": os.urandom(600).hex(), "cls": str(i % 3)})
        paths.append(path)
    return paths


def local_rows(path):
    from mm_ptft.data.shards import Shard

    return list(read_records(Shard(str(path), "tar")))


def test_brace_range_and_glob_of_urls_read_the_same_records_as_the_files(s3, quick, tmp_path):
    tars = write_tars(tmp_path)
    for k, p in enumerate(tars):
        s3.put(f"braces/{k}.tar", p)
    s3.put("braces/notes.txt", b"not a shard")
    shards = expand_sources("s3://bucket/braces/{0..3}.tar")
    assert [s.path for s in shards] == [f"s3://bucket/braces/{k}.tar" for k in range(4)]
    assert [s.path for s in expand_sources("s3://bucket/braces/*.tar")] == [s.path for s in shards]
    assert [s.path for s in expand_sources("s3://bucket/braces/")] == [s.path for s in shards]  # txt: not a kind
    assert list(read_records(shards[2], start=5)) == local_rows(tars[2])[5:]
    pq.write_table(pa.table({"text": ["a", "b", "c"], "label": [1, 2, 3]}), tmp_path / "t.parquet")
    (tmp_path / "t.csv").write_text("text,label\nx,1\n\"y\nz\",2\n")
    parquet, csv = expand_sources([s3.put("t/t.parquet", tmp_path / "t.parquet"), s3.put("t/t.csv", tmp_path / "t.csv")])
    assert [r for _, r in read_records(parquet)] == [{"text": t, "label": n} for t, n in zip("abc", (1, 2, 3))]
    assert [r for _, r in read_records(csv)] == [{"text": "x", "label": "1"}, {"text": "y\nz", "label": "2"}]


def test_a_connection_cut_mid_shard_is_retried_from_where_it_stopped_and_counted(s3, s3_proxy, quick, tmp_path):
    (tar,) = write_tars(tmp_path, n=1, per=60)  # ~80 kB
    url = s3.put("cut/0.tar", tar)
    (shard,) = expand_sources(url)
    s3_proxy.arm(b"GET /bucket/cut/0.tar", after=30_000)  # the answer's first 30 kB, then the socket closes
    assert list(read_records(shard)) == local_rows(tar)
    assert s3_proxy.cuts == 1 and remote.take_retries() == 1
    # in a stream, the retry travels to the trainer with the next sample, as a count
    s3_proxy.arm(b"GET /bucket/cut/0.tar", after=30_000)
    stream = ShardStream([shard], lambda s, r, rec, c: {"key": rec["__key__"]}, shuffle=False, passes=1, block=8)
    samples = list(stream)
    assert [s["key"] for s in samples] == [r["__key__"] for _, r in local_rows(tar)]
    assert sum(s.get(COUNTS, {}).get("remote_retries", 0) for s in samples) == 1 and s3_proxy.cuts == 2


def test_a_missing_object_is_an_error_naming_the_url(s3, quick, tmp_path):
    (tar,) = write_tars(tmp_path, n=1, per=2)
    s3.put("gone/0.tar", tar)
    with pytest.raises(DataError, match=r"data.train_file=s3://bucket/gone/1.tar: no such object"):
        expand_sources("s3://bucket/gone/{0..1}.tar")
    with pytest.raises(DataError, match=r"s3://bucket/gone/\*.csv: no object matches"):
        expand_sources("s3://bucket/gone/*.csv")
    (shard,) = expand_sources("s3://bucket/gone/0.tar")
    s3.client.delete_object(Bucket="bucket", Key="gone/0.tar")  # deleted after listing, before reading
    with pytest.raises(DataError, match=r"s3://bucket/gone/0.tar: no such object"):
        list(read_records(shard))
    with pytest.raises(DataError, match=r"data.eval_file=s3://bucket/gone/x.csv: no such object"):
        load_table("s3://bucket/gone/x.csv", "data.eval_file")


def test_map_style_files_are_fetched_once_refetched_when_changed_and_evicted_lru(s3, quick, tmp_path):
    url = s3.put("maps/a.csv", b"text,label\nx,1\ny,2\n")
    before = dict(remote.STATS)
    first = load_table(url)
    assert list(first["text"]) == ["x", "y"]
    path = remote.local_copy(url)
    assert remote.STATS["downloads"] - before["downloads"] == 1 and remote.STATS["hits"] - before["hits"] == 1
    assert path.startswith(str(tmp_path / "rc")) and path.endswith("a.csv")
    s3.put("maps/a.csv", b"text,label\nx,1\ny,2\nz,3\n")  # a new version: another identity
    assert list(load_table(url)["text"]) == ["x", "y", "z"]
    assert remote.STATS["downloads"] - before["downloads"] == 2
    # a limit below two files' sizes keeps the one used last
    remote.SETTINGS.cache_gb = 40 / 2 ** 30
    other = remote.local_copy(s3.put("maps/b.csv", b"text,label\nw,4\n"))
    left = sorted(p.name for p in (tmp_path / "rc").iterdir() if p.is_dir())
    assert left == [os.path.basename(os.path.dirname(other))]


def test_https_file_with_a_query_string_loads_and_is_named_without_it(http_root, quick):
    root, base = http_root
    (root / "t.csv").write_text("text,label\nx,1\n")
    table = load_table(f"{base}/t.csv?X-Amz-Signature=SECRET123")
    assert list(table["text"]) == ["x"]
    with pytest.raises(DataError) as err:
        load_table(f"{base}/missing.csv?X-Amz-Signature=SECRET123")
    assert f"{base}/missing.csv" in str(err.value) and "SECRET123" not in str(err.value)


@pytest.mark.parametrize("url,package", [("gs://b/x.tar", "gcsfs"), ("az://container/x.csv", "adlfs"),
                                         ("abfs://container/x.csv", "adlfs")])
def test_a_missing_backend_names_the_extra(quick, url, package):
    """GCS and Azure cannot be reached here: what is checked offline is that their URLs take the one fsspec path
    (the scheme's backend looked up by fsspec) and that a missing backend names the package and the extra."""
    pytest.importorskip("fsspec")
    try:
        __import__(package)
        pytest.skip(f"{package} is installed")
    except ImportError:
        pass
    scheme = url.split("://")[0]
    need = rf"{url}: reading {scheme}:// needs {package}: pip install 'mm_ptft\[remote\]'"
    with pytest.raises(DataError, match=need):
        expand_sources(url)
    with pytest.raises(DataError, match=rf"data.eval_file={url}: reading {scheme}:// needs {package}"):
        load_table(url, "data.eval_file")


def test_a_generic_fsspec_filesystem_takes_the_same_path(quick):
    """memory:// (any fsspec filesystem, no S3 specifics): a table loads through its local copy, keyed by the
    object's identity, and a missing object is named."""
    import fsspec

    fs = fsspec.filesystem("memory")
    body = b"text,label\nx,1\ny,2\n"
    fs.pipe("/generic/t.csv", body)
    try:
        assert list(load_table("memory://generic/t.csv")["text"]) == ["x", "y"]
        assert remote.identity("memory://generic/t.csv")["size"] == len(body)
        with pytest.raises(DataError, match=r"memory://generic/gone.csv: no such object"):
            load_table("memory://generic/gone.csv")
    finally:
        fs.rm("/generic", recursive=True)


def test_transient_errors_are_told_from_the_rest():
    class ClientPayloadError(Exception):  # aiohttp's name, as the backends raise it
        pass

    class Status(Exception):
        def __init__(self, status):
            self.status = status

    assert remote.transient(ClientPayloadError()) and remote.transient(ConnectionResetError())
    assert remote.transient(Status(503)) and not remote.transient(Status(403))
    assert not remote.transient(PermissionError("denied")) and not remote.transient(ValueError())
    try:
        try:
            raise TimeoutError()
        except TimeoutError as inner:
            raise OSError("read failed") from inner
    except OSError as outer:
        assert remote.transient(outer)  # found in the cause chain


def test_redacted_drops_credentials_and_query_strings():
    assert redacted("https://u:pw@h.example/a.csv?X-Amz-Signature=s#f") == "https://h.example/a.csv"
    assert redacted("s3://bucket/shards/{0..3}.tar") == "s3://bucket/shards/{0..3}.tar"
    assert redacted("/local/path?x") == "/local/path?x"


def test_the_streaming_eval_split_ignores_a_urls_signature():
    from mm_ptft.data.shards import Shard
    from mm_ptft.data.stream import hash_split

    in_eval = hash_split(seed=3, fraction=0.3)
    a, b = (Shard(f"https://h.example/d/train-0.tar?X-Amz-Signature={s}", "tar") for s in ("one", "two"))
    local = Shard("/data/train-0.tar", "tar")
    assert [in_eval(a, r) for r in range(200)] == [in_eval(b, r) for r in range(200)] == \
        [in_eval(local, r) for r in range(200)]
    assert 20 < sum(in_eval(a, r) for r in range(200)) < 100  # a split, not all or nothing
