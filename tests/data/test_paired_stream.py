"""Streamed paired samples from WebDataset tar shards: decoded like the manifest path, a bad sample is an
error naming the shard and key or a counted skip; the tiny pretraining recipe runs from generated shards."""
import io
import json

import numpy as np
import pytest
import soundfile as sf
import torch
import webdataset as wds
from PIL import Image

from mm_ptft.data.multimodal import Columns, MediaConfig, load_image
from mm_ptft.data.paired_stream import PairedRecord
from mm_ptft.data.shards import expand_sources, read_records
from mm_ptft.data.tables import DataError, LabelMap
from mm_ptft.run import load_config, train

from mm_paths import ROOT


class Tok:
    pad_token_id, sep_token_id = 0, None

    def __call__(self, texts, **kw):
        return {"input_ids": [[len(w) for w in t.split()] for t in texts]}


def png(color):
    buf = io.BytesIO()
    Image.new("RGB", (20, 12), color).save(buf, "PNG")
    return buf.getvalue()


def wav(seconds, value=0.1):
    buf = io.BytesIO()
    sf.write(buf, np.full(int(8000 * seconds), value, np.float32), 8000, format="WAV", subtype="FLOAT")
    return buf.getvalue()


@pytest.fixture
def shard(tmp_path):
    path = tmp_path / "s-000.tar"
    with wds.TarWriter(str(path)) as sink:
        sink.write({"__key__": "good", "png": png("red"), "wav": wav(0.2), "txt": "a red square", "cls": "square"})
        sink.write({"__key__": "broken", "png": b"not an image", "wav": wav(0.2), "txt": "x", "cls": "square"})
        sink.write({"__key__": "nan", "png": png("blue"), "wav": wav(0.2, np.nan), "txt": "y", "cls": "circle"})
        sink.write({"__key__": "short", "png": png("blue"), "wav": wav(0.001), "txt": "z", "cls": "circle"})
    return expand_sources(str(path))[0], tmp_path


def test_a_tar_sample_decodes_as_the_manifest_path_does(shard, tmp_path):
    sh, root = shard
    media = MediaConfig(image_size=16, sample_rate=8000)
    fn = PairedRecord(["image", "audio", "text"], Columns(), media, Tok(), 8, LabelMap(["circle", "square"]))
    row, record = next(read_records(sh))
    item = fn(sh, row, record, {})
    (root / "ref.png").write_bytes(record["png"])
    assert torch.equal(item["image"], load_image(str(root / "ref.png"), media))  # (3, 16, 16)
    assert item["audio"].shape == (1600,) and item["text"] == [1, 3, 6] and item["labels"] == 1


@pytest.mark.parametrize("key, message", [("broken", "sample 'broken': unreadable image"),
                                          ("nan", "sample 'nan'.*NaN or Inf")])
def test_a_bad_sample_is_an_error_naming_it_or_a_counted_skip(shard, key, message):
    sh, _ = shard
    records = {r["__key__"]: (row, r) for row, r in read_records(sh)}
    fn = PairedRecord(["image", "audio", "text"], Columns(), MediaConfig(sample_rate=8000), Tok(), 8)
    with pytest.raises(DataError, match=message):
        fn(sh, *records[key], {})
    counters = {}
    skip = PairedRecord(["image", "audio", "text"], Columns(), MediaConfig(sample_rate=8000), Tok(), 8, skip_bad=True)
    assert skip(sh, *records[key], counters) is None and sum(counters.values()) == 1
    counters = {}
    assert skip(sh, *records["short"], counters) is None and counters == {"dropped_too_short": 1}


def test_missing_modality_is_named(shard):
    sh, _ = shard
    row, record = next(read_records(sh))
    del record["png"]
    with pytest.raises(DataError, match=r"no image \(jpg/jpeg/png"):
        PairedRecord(["image", "text"], Columns(), MediaConfig(), Tok(), 8)(sh, row, record, {})


def test_tiny_contrastive_recipe_trains_from_webdataset_shards(tmp_path):
    cfg = load_config(f"{ROOT}/recipes/pretrain_contrastive/tiny_shards.yaml",
                      [f"output_dir={tmp_path / 'run'}", "train.max_steps=6", "train.eval_every=6",
                       "train.report=false", "data.generate.n_train=120", "data.generate.n_eval=40",
                       "train.batch_size=16"])
    results = train(cfg)
    assert {"mean_r1", "zeroshot_accuracy", "loss"} <= set(results) and np.isfinite(results["loss"])


def test_masked_and_joint_recipes_train_from_shards(tmp_path):
    shards = ["data.generate.name=shapes_captions_shards", "data.generate.n_train=120", "data.generate.n_eval=40",
              "data.streaming=true", "train.max_steps=4", "train.eval_every=4", "train.report=false",
              "train.batch_size=16"]
    masked = train(load_config(f"{ROOT}/recipes/pretrain_masked/tiny.yaml", [f"output_dir={tmp_path / 'm'}", *shards]))
    assert np.isfinite(masked["loss"])
    joint = train(load_config(f"{ROOT}/recipes/pretrain_joint/tiny.yaml",
                              [f"output_dir={tmp_path / 'j'}", *shards, "data.labels=[circle,cross,square,triangle]"]))
    assert {"clip_image_text_loss", "mlm_loss", "zeroshot_accuracy"} <= set(joint), joint
    logged = [json.loads(ln) for ln in (tmp_path / "j" / "metrics.jsonl").read_text().splitlines()]
    train_keys = set().union(*(r for r in logged if r["kind"] == "train"))
    assert {"clip_audio_text_loss", "mlm_loss"} <= train_keys  # every source was drawn
