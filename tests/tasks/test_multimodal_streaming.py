"""Multimodal classification with ``data.streaming: true``: from WebDataset shards (png + wav + txt + cls) and
from a manifest whose rows may lack a modality (flagged absent and counted, as the in-memory path does)."""
import json
import os

import pandas as pd
import pytest

from mm_ptft.data.tables import DataError
from mm_ptft.run import load_config, train

from mm_paths import ROOT

TINY = os.path.join(ROOT, "recipes", "multimodal_classification", "tiny.yaml")
COMMON = ["train.report=false", "data.streaming=true", "train.batch_size=16", "data.shuffle_block=64"]


def test_trains_from_webdataset_shards(tmp_path):
    results = train(load_config(TINY, [f"output_dir={tmp_path / 'run'}", *COMMON,
                                       "data.generate.name=shapes_captions_shards", "data.generate.n_train=160",
                                       "data.generate.n_eval=48", "data.labels=[circle,cross,square,triangle]",
                                       "train.max_steps=30", "train.num_workers=2"]))
    assert results["accuracy"] > 0.4, results  # 4 shapes: chance 0.25


def test_manifest_rows_without_a_modality_are_flagged_and_counted(tmp_path):
    import mm_ptft.data.generated.multimodal  # noqa: F401
    from mm_ptft.data.generated import generate

    files = generate({"name": "shapes_captions", "n_train": 60, "n_eval": 20, "seed": 0}, str(tmp_path / "d"))
    rows = pd.read_json(files["train_file"], lines=True)
    rows.loc[:9, "image"] = ""  # 10 rows without an image
    rows.to_json(tmp_path / "d" / "part.jsonl", orient="records", lines=True)
    manifest = os.path.join(os.path.dirname(files["train_file"]), "part.jsonl")
    os.replace(tmp_path / "d" / "part.jsonl", manifest)
    train(load_config(TINY, [f"output_dir={tmp_path / 'run'}", *COMMON, "data.generate=null",
                             f"data.train_file={manifest}", f"data.eval_file={files['eval_file']}",
                             "train.max_steps=4", "train.log_every=1"]))
    logged = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert max(r.get("missing_image", 0) for r in logged if r["kind"] == "data") >= 1
    rows.loc[:0, ["image", "audio", "caption"]] = ""  # row 0 has nothing at all
    rows.to_json(manifest, orient="records", lines=True)
    with pytest.raises(DataError, match="every modality"):
        train(load_config(TINY, [f"output_dir={tmp_path / 'run2'}", *COMMON, "data.generate=null",
                                 f"data.train_file={manifest}", f"data.eval_file={files['eval_file']}",
                                 "train.max_steps=2", "data.labels=[circle,cross,square,triangle]"]))
