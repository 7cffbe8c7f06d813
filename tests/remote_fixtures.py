"""Real servers on 127.0.0.1 for the remote-data tests: an S3 server (``moto`` in server mode), a TCP proxy in front
of it that cuts one connection mid-response (a real dropped connection, not a mocked exception), and a static HTTP
server. Import the fixtures into a test module (``from remote_fixtures import s3, ...``)."""
from __future__ import annotations

import functools
import logging
import http.server
import os
import socket
import threading

import pytest

SECRET = "mm-ptft-test-secret-do-not-write"  # the S3 secret key: must appear nowhere in a run directory
BUCKET = "bucket"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clear_fs_cache() -> None:
    """Forget fsspec's cached S3 filesystems (they keep the endpoint and listings they were made with)."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


class S3:
    """A running moto S3 server: ``url`` (its endpoint), ``env`` (what a client needs), ``client`` (boto3)."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request lines on stderr
        self.server.start()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_ENDPOINT_URL": self.url}
        import boto3

        self.client = boto3.client("s3", endpoint_url=self.url, aws_access_key_id="testing",
                                   aws_secret_access_key=SECRET, region_name="us-east-1")
        self.client.create_bucket(Bucket=BUCKET)

    def put(self, key: str, path_or_bytes) -> str:
        body = path_or_bytes if isinstance(path_or_bytes, bytes) else open(path_or_bytes, "rb").read()
        self.client.put_object(Bucket=BUCKET, Key=key, Body=body)
        return f"s3://{BUCKET}/{key}"


@pytest.fixture(scope="session")
def s3_server():
    server = S3()
    yield server
    server.server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """The S3 server, with this test's environment pointing every S3 client at it."""
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    clear_fs_cache()
    yield s3_server
    clear_fs_cache()


class CuttingProxy(threading.Thread):
    """A TCP proxy to ``upstream``; ``arm(marker, after)``: the next connection whose request contains ``marker``
    is closed once ``after`` bytes of the answer have been passed on (once; later connections pass untouched)."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__(daemon=True)
        self.upstream, self.port = upstream_port, free_port()
        self.sock = socket.create_server(("127.0.0.1", self.port))
        self.marker, self.after, self.cuts = b"", 0, 0

    def arm(self, marker: bytes, after: int) -> None:
        self.marker, self.after = marker, after

    def run(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        server = socket.create_connection(("127.0.0.1", self.upstream))
        state = {"armed": False, "passed": 0}

        def up() -> None:
            while data := _recv(client):
                if self.marker and self.marker in data:
                    state["armed"], self.marker = True, b""
                server.sendall(data)
            _close(server)

        threading.Thread(target=up, daemon=True).start()
        while data := _recv(server):
            if state["armed"] and state["passed"] + len(data) > self.after:
                client.sendall(data[: self.after - state["passed"]])
                self.cuts += 1
                break
            state["passed"] += len(data) if state["armed"] else 0
            client.sendall(data)
        _close(client)
        _close(server)

    def stop(self) -> None:
        self.sock.close()


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


@pytest.fixture
def s3_proxy(s3, monkeypatch):
    """A ``CuttingProxy`` in front of the S3 server, the S3 clients pointed at it."""
    proxy = CuttingProxy(s3.port)
    proxy.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
    clear_fs_cache()
    yield proxy
    proxy.stop()
    clear_fs_cache()


@pytest.fixture
def http_root(tmp_path):
    """(directory, base URL): a static ``http.server`` serving the directory."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # no request lines on stderr
        pass


def run_dir_text(root) -> str:
    """Every file under ``root`` as text (binary files decoded leniently), for secrets searches."""
    out = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                out.append(fh.read().decode("utf-8", "replace"))
    return "\n".join(out)
