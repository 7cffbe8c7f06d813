"""Text classification with ``data.streaming: true`` over several shards: trains, evaluates on a seeded hash
split or an eval file, resumes mid-pass to the same weights, counts skipped rows, names bad columns/labels."""
import json
import os
import signal
import sys

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from mm_ptft.data.tables import DataError
from mm_ptft.run import evaluate, load_config, train
from mm_ptft.train.rundir import final_results

from mm_fixtures import kill_after_checkpoint
from mm_paths import ROOT, TEXT_TINY

NO_DROPOUT = ["model.dropout=0.0", "model.text.config.hidden_dropout_prob=0.0",
              "model.text.config.attention_probs_dropout_prob=0.0"]


@pytest.fixture(scope="module")
def shards(topics_data, tmp_path_factory):
    """The topics training file as three uneven shards of three formats, plus a row with an empty text."""
    root = tmp_path_factory.mktemp("shards")
    df = pd.read_csv(topics_data["train_file"])
    df.iloc[:300].to_csv(root / "a.csv", index=False)
    df.iloc[300:470].to_json(root / "b.jsonl", orient="records", lines=True)
    tail = pd.concat([df.iloc[470:], pd.DataFrame({"text": [""], "label": ["space"]})])
    tail.to_parquet(root / "c.parquet")
    return {"pattern": str(root / "*"), "eval_file": topics_data["eval_file"], "rows": len(df) + 1}


def cfg(tmp_path, shards, *extra, name="run"):
    return load_config(TEXT_TINY, [f"output_dir={tmp_path / name}", "train.report=false", "data.generate=null",
                                   f"data.train_file={shards['pattern']}", "data.streaming=true",
                                   "data.skip_bad_samples=true", "data.shuffle_block=64", *extra])


def events(run, kind):
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if f'"{kind}"' in ln]


def test_streamed_shards_train_evaluate_and_count_skips(tmp_path, shards):
    results = train(cfg(tmp_path, shards, f"data.eval_file={shards['eval_file']}", "train.max_steps=60",
                        "train.num_workers=2", "train.log_every=5"))
    assert results["accuracy"] >= 0.6, results  # four topics: chance is 0.25
    run = tmp_path / "run"
    data = [e for e in events(run, "data") if "skipped_empty_text" in e]
    assert data and data[-1]["skipped_empty_text"] >= 1  # the empty row, counted when a worker read it
    assert evaluate(run)["accuracy"] == pytest.approx(final_results(run)["accuracy"])


def test_without_eval_file_a_seeded_hash_split_is_held_out(tmp_path, shards):
    results = train(cfg(tmp_path, shards, "data.eval_fraction=0.2", "train.max_steps=8", "train.eval_every=8"))
    assert "accuracy" in results
    assert evaluate(tmp_path / "run")["loss"] == pytest.approx(results["loss"], rel=1e-5)  # the same rows


def test_sigkill_mid_pass_then_resume_gives_the_same_weights_as_a_straight_run(tmp_path, shards):
    common = ["train.max_steps=12", "train.save_every=5", "train.eval_every=100", "train.num_workers=2",
              "train.batch_size=16", "train.keep_last=5", f"data.eval_file={shards['eval_file']}"]
    train(cfg(tmp_path, shards, *common, name="straight"))
    out = tmp_path / "killed"
    args = [f"output_dir={out}", "train.report=false", "data.generate=null", f"data.train_file={shards['pattern']}",
            "data.streaming=true", "data.skip_bad_samples=true", "data.shuffle_block=64", *common]
    cmd = [sys.executable, "-m", "mm_ptft.cli", "train", TEXT_TINY, *args]
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    assert kill_after_checkpoint(cmd, env, out / "checkpoints", 5, cwd=ROOT) == -signal.SIGKILL
    assert not (out / "final_metrics.json").exists()
    train(cfg(tmp_path, shards, *common, "train.resume=true", name="killed"))
    a = load_file(str(tmp_path / "straight" / "checkpoints" / "step_00000012" / "model.safetensors"))
    b = load_file(str(out / "checkpoints" / "step_00000012" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_streaming_needs_max_steps(tmp_path, shards):
    with pytest.raises(ValueError, match="train.max_steps"):
        train(cfg(tmp_path, shards))


def test_bad_column_and_label_are_named(tmp_path, shards, topics_data):
    with pytest.raises(DataError, match=r"missing column.*\['sentence'\]"):
        train(cfg(tmp_path, shards, "data.text_column=sentence", "train.max_steps=2", "data.labels=[cooking,space,"
                  "sports,finance]"))
    with pytest.raises(DataError, match=r"row \d+: label 'finance' is not in the label set"):
        train(cfg(tmp_path, shards, "train.max_steps=40", "data.labels=[cooking,space,sports]", name="labels"))


def test_text_regression_streams_and_learns_the_target_scale_in_one_pass(tmp_path):
    import statistics

    from mm_ptft.data.generated import generate
    from mm_ptft.tasks.text_regression import _scale
    from mm_ptft.data.shards import expand_sources
    import mm_ptft.data.generated.regression  # noqa: F401  (registers text_scores)

    files = generate({"name": "text_scores", "n_train": 600, "n_eval": 150, "seed": 0}, str(tmp_path / "data"))
    df = pd.read_csv(files["train_file"])
    df.iloc[:250].to_csv(tmp_path / "a.csv", index=False)
    df.iloc[250:].to_parquet(tmp_path / "b.parquet")
    mean, sd = _scale(expand_sources(str(tmp_path / "[ab].*")), "score")
    assert mean == pytest.approx(statistics.fmean(df.score)) and sd == pytest.approx(statistics.pstdev(df.score))
    results = train(load_config(f"{ROOT}/recipes/text_regression/tiny.yaml", [
        f"output_dir={tmp_path / 'run'}", "train.report=false", "data.generate=null",
        f"data.train_file={tmp_path / '[ab].*'}", f"data.eval_file={files['eval_file']}", "data.streaming=true",
        "train.max_steps=120", "train.num_workers=2"]))
    assert results["r2"] >= 0.5, results  # the training-mean predictor scores 0
    (tmp_path / "bad.csv").write_text("text,score\nfine,1.0\nbroken,abc\n")
    with pytest.raises(DataError, match=r"bad.csv: row 1: column 'score' must hold a finite number"):
        _scale(expand_sources(str(tmp_path / "bad.csv")), "score")


def test_two_fsdp_ranks_stream_train_and_evaluate_in_lockstep(tmp_path, shards):
    """2 gloo ranks under FSDP2 (whose forward is a collective) over a streamed, hash-split eval set: the ranks
    hold different numbers of eval batches, and the one that runs out does filler forwards until both are done."""
    import subprocess

    out = tmp_path / "fsdp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "tests", "train", "dist_worker.py"), TEXT_TINY, f"output_dir={out}", "train.report=false",
           "data.generate=null", f"data.train_file={shards['pattern']}", "data.streaming=true",
           "data.skip_bad_samples=true", "data.eval_fraction=0.2", "train.max_steps=3", "train.batch_size=8",
           "train.eval_batch_size=7", "train.distributed=fsdp", "train.device=cpu"]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "accuracy" in final_results(out)
