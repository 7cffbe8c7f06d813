"""Training from remote data on servers on 127.0.0.1 (tests/remote_fixtures.py): a map-style CSV on S3 (and its eval
file over https with a signed query string) trains, a second run hits the preprocessing cache and the local copies,
and neither the S3 secret nor the signature is written to the run directory; image classification streamed from
``s3://bucket/shards/{0..3}.tar`` counts a connection cut mid-shard in its metrics and resumes bit-identically (from a
mid-pass checkpoint in process; after kill -9 in a subprocess, slow)."""
import json
import os
import shutil
import signal
import sys

import pytest
import torch

from mm_ptft.data import remote
from mm_ptft.data.generated import generate
from mm_ptft.data.shards import remote_plan
from mm_ptft.run import load_config, train
from mm_ptft.run.check_data import check_data
from mm_ptft.tasks.text_classification import TextClassification
from mm_ptft.train.rundir import config_changes

from mm_fixtures import kill_after_checkpoint, resume_from_copy, same_weights, csv_to_tars
from mm_paths import ROOT, TEXT_TINY
from remote_fixtures import SECRET, run_dir_text

IMAGE_TINY = os.path.join(ROOT, "recipes", "image_classification", "tiny.yaml")
SIGNATURE = "X-Amz-Signature=0123456789abcdefsig"


def test_map_style_csv_on_s3_trains_caches_and_writes_no_secret(tmp_path, topics_data, s3, http_root):
    www, base = http_root
    train_url = s3.put("topics/train.csv", topics_data["train_file"])
    shutil.copy(topics_data["eval_file"], www / "eval.csv")
    eval_url = f"{base}/eval.csv?{SIGNATURE}"
    common = ["train.report=false", "data.generate=null", f"data.train_file={train_url}", f"data.eval_file={eval_url}",
              f"data.remote_cache_dir={tmp_path / 'remote'}", "train.max_steps=3", "train.eval_every=3"]
    before = dict(remote.STATS)
    first = load_config(TEXT_TINY, [f"output_dir={tmp_path / 'run'}", *common])
    results = train(first)
    assert config_changes(tmp_path / "run", first) == []  # a resume with the signed URL again is the same config
    assert "accuracy" in results and remote.STATS["downloads"] - before["downloads"] == 2
    text = run_dir_text(tmp_path / "run")
    assert SECRET not in text and "0123456789abcdefsig" not in text  # config.yaml, logs, metrics, checkpoints
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert train_url in saved and f"{base}/eval.csv" in saved
    # the second start reads the preprocessing cache (keyed by the objects' ETag / Last-Modified), under remote/tables
    again = TextClassification.prepare(load_config(TEXT_TINY, [f"output_dir={tmp_path / 'again'}", *common]))
    assert again.train_data.cache.state == "hit"
    assert again.train_data.cache.path.startswith(str(tmp_path / "remote" / "tables"))
    # without that cache the files are read again, from their local copies: nothing is downloaded
    mid = dict(remote.STATS)
    TextClassification.prepare(load_config(TEXT_TINY, [f"output_dir={tmp_path / 'off'}", *common, "data.cache=false"]))
    assert remote.STATS["downloads"] == mid["downloads"] and remote.STATS["hits"] - mid["hits"] == 2


def test_check_data_on_urls_reports_what_it_reads(tmp_path, topics_data, s3):
    train_url = s3.put("check/train.csv", topics_data["train_file"])
    size = os.path.getsize(topics_data["train_file"])
    common = [f"output_dir={tmp_path / 'run'}", "data.generate=null", f"data.train_file={train_url}",
              f"data.remote_cache_dir={tmp_path / 'remote'}"]
    streamed = check_data(TEXT_TINY, [*common, "data.streaming=true"])
    (plan,) = streamed["remote"]
    assert (plan["key"], plan["value"], plan["objects"], plan["bytes"]) == ("data.train_file", train_url, 1, size)
    assert "streamed through fsspec" in plan["read"] and sum(streamed["samples"].values()) == 400
    plan = remote_plan(train_url, "data.train_file", streaming=False)  # map-style: what check-data adds to its report
    assert "local copy" in plan["read"] and plan["local"][0].startswith(str(tmp_path / "remote"))
    assert open(plan["local"][0], "rb").read() == open(topics_data["train_file"], "rb").read()


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """image_shapes as 4 tar shards (local; each test uploads them) and its eval CSV."""
    root = tmp_path_factory.mktemp("img")
    import mm_ptft.data.generated.images  # noqa: F401  (registers image_shapes)

    files = generate({"name": "image_shapes", "n_train": 160, "n_eval": 24, "size": 32, "seed": 0}, str(root))
    csv_to_tars(files["train_file"], root, [slice(0, 40), slice(40, 80), slice(80, 120), slice(120, None)],
                lambda read, r: {"png": read(r["path"]), "cls": r["label"]})
    return {"root": root, "eval_file": files["eval_file"]}


def upload(s3, shapes) -> str:
    for k in range(4):
        s3.put(f"shards/{k}.tar", shapes["root"] / f"train-{k}.tar")
    return "s3://bucket/shards/{0..3}.tar"


def image_args(tmp_path, shards, shapes, name):
    return [f"output_dir={tmp_path / name}", "train.report=false", "data.generate=null", "data.streaming=true",
            "data.shuffle_block=16", f"data.train_file={shards}", f"data.eval_file={shapes['eval_file']}",
            "data.labels=[circle,square,triangle,cross]", "train.max_steps=8", "train.save_every=4",
            "train.eval_every=100", "train.num_workers=2", "train.keep_last=5", "train.batch_size=16",
            "model.ema_decay=0.0"]


def test_streamed_s3_shards_count_a_cut_connection_and_resume_bit_identically(tmp_path, s3, s3_proxy, shapes,
                                                                              monkeypatch):
    monkeypatch.setattr(remote.SETTINGS, "backoff_s", 0.01)
    shards = upload(s3, shapes)
    s3_proxy.arm(b"GET /bucket/shards/2.tar", after=20_000)  # one shard's answer cut after 20 kB
    train(load_config(IMAGE_TINY, image_args(tmp_path, shards, shapes, "straight")))
    assert s3_proxy.cuts == 1
    data = [json.loads(ln) for ln in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
            if '"data"' in ln]
    assert data and data[-1].get("remote_retries") == 1, data
    resume_from_copy(tmp_path / "straight", tmp_path / "resumed", 4)  # the workers restart mid-pass at step 4
    train(load_config(IMAGE_TINY, [*image_args(tmp_path, shards, shapes, "resumed"), "train.resume=true"]))
    assert same_weights(tmp_path / "straight", tmp_path / "resumed", 8)
    assert SECRET not in run_dir_text(tmp_path / "straight")


@pytest.mark.slow
def test_streamed_s3_shards_resume_bit_identically_after_kill_9(tmp_path, s3, shapes):
    shards = upload(s3, shapes)
    train(load_config(IMAGE_TINY, image_args(tmp_path, shards, shapes, "straight")))
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "mm_ptft.cli", "train", IMAGE_TINY, *image_args(tmp_path, shards, shapes, "killed")]
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # AWS_* of s3
    assert kill_after_checkpoint(cmd, env, out / "checkpoints", 4, cwd=ROOT) == -signal.SIGKILL
    assert not (out / "final_metrics.json").exists()
    train(load_config(IMAGE_TINY, [*image_args(tmp_path, shards, shapes, "killed"), "train.resume=true"]))
    assert same_weights(tmp_path / "straight", out, 8)
    assert SECRET not in run_dir_text(out)
