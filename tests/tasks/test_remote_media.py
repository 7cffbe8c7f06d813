"""Media files named by remote tables: a speech manifest on a real S3 server (moto, tests/remote_fixtures.py) whose
audio cells are paths relative to the manifest's URL or s3:// URLs; the clips and their decoded audio equal the local
manifest's; a missing object is an error naming its URL (or a counted skip); a connection cut while fetching a clip is
retried and counted. The S3/HTTP fixtures come from conftest.py. The same code path on a generic fsspec filesystem (memory://) for an image table."""
import os
import shutil

import pytest
import torch

from mm_ptft.data import remote
from mm_ptft.data.generated import generate
from mm_ptft.data.tables import DataError
from mm_ptft.tasks import get_recipe, load_config
from mm_ptft.types import AUDIO, IMAGE

from mm_paths import ROOT

SPEECH = os.path.join(ROOT, "recipes", "speech_recognition", "tiny.yaml")
IMAGES = os.path.join(ROOT, "recipes", "image_classification", "tiny.yaml")
TONES = {"name": "tone_speech", "n_train": 4, "n_eval": 3, "sample_rate": 16000, "seed": 5}


@pytest.fixture
def quick(monkeypatch, tmp_path):
    """Fast backoff, a remote cache of this test's own, no copies remembered from another test."""
    monkeypatch.setattr(remote, "SETTINGS", remote.RemoteSettings(cache_dir=str(tmp_path / "rc"), backoff_s=0.01))
    monkeypatch.setattr(remote, "_MEDIA", {})
    remote.take_retries()


@pytest.fixture
def speech(tmp_path):
    return generate(TONES, tmp_path / "data")


def prepared(tmp_path, config, files, run, *extra):
    cfg = load_config(config, [f"output_dir={tmp_path / run}", "data.generate=null", "train.num_workers=0",
                               f"data.train_file={files['train_file']}", f"data.eval_file={files['eval_file']}",
                               f"data.remote_cache_dir={tmp_path / 'rc'}", f"data.cache_dir={tmp_path / 'c'}",
                               *extra])
    return get_recipe(cfg.task).prepare(cfg, train=True)


def upload(s3, files, url_row=None):
    """The generated manifests and clips under s3://bucket/speech/ (same relative keys); the audio cell of eval row
    ``url_row`` rewritten to an absolute s3:// URL."""
    root = os.path.dirname(files["train_file"])
    for dirpath, _, names in os.walk(root):
        for n in names:
            if n.endswith(".wav"):
                rel = os.path.relpath(os.path.join(dirpath, n), root)
                s3.put(f"speech/{rel}", os.path.join(dirpath, n))
    out = {}
    for k in ("train_file", "eval_file"):
        lines = open(files[k]).read().splitlines()
        if k == "eval_file" and url_row is not None:
            lines[url_row + 1] = "s3://bucket/speech/" + lines[url_row + 1]
        out[k] = s3.put(f"speech/{os.path.basename(files[k])}", ("\n".join(lines) + "\n").encode())
    return out


def clips(p):
    return [[(c.text, c.labels, c.samples) for c in ds.clips] for ds in (p.train_data, p.eval_data)]


def test_remote_manifest_reads_relative_and_url_cells_as_the_local_one(tmp_path, s3, quick, speech):
    local = prepared(tmp_path, SPEECH, speech, "local")
    urls = upload(s3, speech, url_row=1)
    before = dict(remote.STATS)
    p = prepared(tmp_path, SPEECH, urls, "remote")
    assert clips(p) == clips(local) and len(p.eval_data) == 3
    paths = [c.path for c in p.eval_data.clips]
    assert paths[0] == "s3://bucket/speech/eval/00000.wav" and paths[1] == "s3://bucket/speech/eval/00001.wav"
    for i in range(len(local.eval_data)):  # the same decoded input (evaluation: no augmentation)
        assert torch.equal(p.eval_data[i][AUDIO], local.eval_data[i][AUDIO])
    assert remote.STATS["downloads"] - before["downloads"] == 2 + 4 + 3  # manifests + clips, each fetched once
    again = prepared(tmp_path, SPEECH, urls, "again")  # a cache hit: the clips' local copies reused
    assert again.train_data.cache.state == "hit" and remote.STATS["downloads"] - before["downloads"] == 9


def test_a_missing_clip_object_is_named_by_its_url_or_counted(tmp_path, s3, quick, speech):
    urls = upload(s3, speech)
    s3.client.delete_object(Bucket="bucket", Key="speech/train/00002.wav")
    with pytest.raises(DataError, match=r"row 2: .*s3://bucket/speech/train/00002\.wav: no such object"):
        prepared(tmp_path, SPEECH, urls, "a")
    p = prepared(tmp_path, SPEECH, urls, "b", "data.skip_bad_samples=true")
    assert len(p.train_data) == 3 and p.counters["skipped_bad_audio"] == 1


def test_a_connection_cut_while_fetching_a_clip_is_retried_and_counted(tmp_path, s3, s3_proxy, quick, speech):
    urls = upload(s3, speech)
    local = prepared(tmp_path, SPEECH, speech, "local")
    s3_proxy.arm(b"GET /bucket/speech/eval/00001.wav", after=2_000)  # the first 2 kB of the clip, then cut
    p = prepared(tmp_path, SPEECH, urls, "remote")
    assert s3_proxy.cuts == 1 and remote.take_retries() == 1
    assert torch.equal(p.eval_data[1][AUDIO], local.eval_data[1][AUDIO])


def test_an_image_table_on_a_generic_fsspec_filesystem(tmp_path, quick):
    """memory:// (no network, no credentials): the same fsspec path as s3:// / gs:// / az://."""
    import fsspec

    files = generate({"name": "image_shapes", "n_train": 8, "n_eval": 4, "size": 16, "seed": 4,
                      "classes": ["circle", "square"]}, tmp_path / "img")
    fs, root = fsspec.filesystem("memory"), os.path.dirname(files["train_file"])
    for dirpath, _, names in os.walk(root):
        for n in names:
            path = os.path.join(dirpath, n)
            fs.pipe(f"/img/{os.path.relpath(path, root)}", open(path, "rb").read())
    urls = {k: f"memory://img/{os.path.basename(v)}" for k, v in files.items()}
    over = ["model.image.img_size=16"]
    try:
        local, mem = prepared(tmp_path, IMAGES, files, "local", *over), prepared(tmp_path, IMAGES, urls, "mem", *over)
        assert len(mem.eval_data) == len(local.eval_data) == 4
        assert all(torch.equal(mem.eval_data[i][IMAGE], local.eval_data[i][IMAGE]) for i in range(4))
        assert all(str(p).startswith("memory://img/") for p in mem.eval_data.paths)
    finally:
        fs.rm("/img", recursive=True)
        shutil.rmtree(tmp_path / "rc", ignore_errors=True)
