"""The whisper_asr recipe end to end on a tiny random-init Whisper: a run exports ``--format hf`` into a directory
``pipeline("automatic-speech-recognition")`` loads, and ``mm-ptft predict`` gives the pipeline's transcripts and the
exported model's token ids; eval rebuilds the run; hostile manifests (empty/overlong transcript, audio over the
window, NaN/empty audio, another sample rate) are named errors or counted skips; long files chunk in predict;
streaming shards train."""
from __future__ import annotations

import csv
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from mm_ptft.config import ConfigError
from mm_ptft.data.generated import generate
from mm_ptft.data.tables import DataError
from mm_ptft.run import load_config, train
from mm_ptft.tasks import get_recipe

from mm_fixtures import one_thread  # noqa: F401  (autouse: one intra-op thread)
from mm_paths import ROOT

TINY = os.path.join(ROOT, "recipes", "whisper_asr", "tiny.yaml")
SMALL = ["model.whisper.config.d_model=32", "model.whisper.config.encoder_layers=1",
         "model.whisper.config.decoder_layers=1", "model.whisper.config.encoder_ffn_dim=64",
         "model.whisper.config.decoder_ffn_dim=64", "train.batch_size=4", "train.report=false", "train.max_steps=3",
         "train.eval_every=3", "generation.max_new_tokens=8", "data.generate=null",
         "data.augment.speed_factors=[0.9,1.0,1.1]"]  # tiny.yaml has none; the window check counts the 0.9 factor


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    import mm_ptft.data.generated.audio  # noqa: F401  (registers tone_speech)

    root = tmp_path_factory.mktemp("whisper_speech")
    files = generate({"name": "tone_speech", "n_train": 16, "n_eval": 6, "sample_rate": 16000, "max_words": 2,
                      "seed": 0}, str(root))
    return {"root": root, **files}


def cfg(tmp_path, speech, *extra, name="run"):
    return load_config(TINY, [f"output_dir={tmp_path / name}", f"data.train_file={speech['train_file']}",
                              f"data.eval_file={speech['eval_file']}", *SMALL, *extra])


@pytest.fixture(scope="module")
def run(tmp_path_factory, speech):
    out = tmp_path_factory.mktemp("whisper_run")
    results = train(cfg(out, speech, name="run"))
    return out / "run", results


def eval_wavs(speech, n=4):
    with open(speech["eval_file"]) as f:
        rows = list(csv.DictReader(f))[:n]
    return [os.path.join(os.path.dirname(speech["eval_file"]), r["audio"]) for r in rows]


def test_run_evaluates_and_reloads(run):
    from mm_ptft.run import evaluate

    out, results = run
    assert {"wer", "cer", "loss"} <= set(results) and np.isfinite(results["loss"])
    assert (out / "processor" / "tokenizer.json").is_file() and "processor:" in (out / "config.yaml").read_text()
    again = evaluate(out)
    assert again["loss"] == pytest.approx(results["loss"], rel=1e-5) and again["wer"] == pytest.approx(results["wer"])


def test_export_hf_is_what_the_pipeline_loads_and_predict_matches_it(run, speech, tmp_path):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor, pipeline

    from mm_ptft.run import predict
    from mm_ptft.run.export import export_run

    out, _ = run
    exported = export_run(out, "hf", out=tmp_path / "hf")
    asr = pipeline("automatic-speech-recognition", model=str(exported))
    paths = eval_wavs(speech)
    ours = predict(out, paths)
    for path, got in zip(paths, ours):
        wav, rate = sf.read(path, dtype="float32")
        assert got["raw_text"] == asr({"raw": wav, "sampling_rate": rate})["text"]
    # the same token ids from the exported model's own generate on the processor's features
    model = WhisperForConditionalGeneration.from_pretrained(str(exported)).eval()
    proc = WhisperProcessor.from_pretrained(str(exported))
    feats = proc([sf.read(p, dtype="float32")[0] for p in paths], sampling_rate=16000, return_tensors="pt").input_features
    theirs = model.generate(input_features=feats, do_sample=False, num_beams=1)
    cfg_, prepared, _ = __import__("mm_ptft.tasks.common", fromlist=["load_run"]).load_run(out)
    mine = prepared.task.eval().generate_ids(feats)
    assert mine.shape == theirs.shape and torch.equal(mine, theirs)
    assert [t.strip() for t in proc.batch_decode(theirs, skip_special_tokens=True)] == \
        [t["raw_text"].strip() for t in ours]
    # the hub card names the pipeline the directory was just loaded by (transformers' speech seq2seq auto map)
    card = (exported / "README.md").read_text()
    assert "pipeline_tag: automatic-speech-recognition" in card and "AutoModelForSpeechSeq2Seq" in card


def _manifest(speech, root, rows):
    path = root / "bad.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("audio", "text"), *rows])
    return str(path)


@pytest.fixture(scope="module")
def hostile(speech, tmp_path_factory):
    """Files of every bad kind, beside copies of good clips."""
    root = tmp_path_factory.mktemp("whisper_hostile")
    good = eval_wavs(speech, 3)
    for i, p in enumerate(good):
        shutil.copy(p, root / f"good{i}.wav")
    rng = np.random.default_rng(0)
    sf.write(str(root / "long.wav"), rng.normal(0, 0.1, 40000).astype(np.float32), 16000)  # 2.5 s > 2 s window
    sf.write(str(root / "nan.wav"), np.full(4000, np.nan, np.float32), 16000, subtype="FLOAT")
    sf.write(str(root / "empty.wav"), np.zeros(0, np.float32), 16000)
    wav16, _ = sf.read(good[0], dtype="float32")
    sf.write(str(root / "rate8k.wav"), wav16[::2], 8000)
    return root


GOOD = [("good0.wav", "cat"), ("good1.wav", "dog sun")]


@pytest.mark.parametrize("row, message", [
    (("good2.wav", ""), r"bad.csv: row 2: empty transcript"),
    (("good2.wav", " ".join(["moon tree"] * 20)), r"bad.csv: row 2 .*good2.wav.*the transcript is \d+ tokens, over the "
                                                 r"decoder's 32 positions"),
    (("long.wav", "cat"), r"bad.csv: row 2 .*long.wav.*2.78 s of audio .*over the model's 2 s window"),
    (("nan.wav", "cat"), r"bad.csv: row 2: .*nan.wav: audio contains NaN"),
    (("empty.wav", "cat"), r"bad.csv: row 2: .*empty.wav: empty audio"),
])
def test_bad_rows_are_named(tmp_path, speech, hostile, row, message):
    c = cfg(tmp_path, speech, f"data.train_file={_manifest(speech, hostile, [*GOOD, row])}")
    with pytest.raises(DataError, match=message):
        get_recipe("whisper_asr").prepare(c)


def test_bad_rows_are_counted_skips_and_other_rates_resampled(tmp_path, speech, hostile):
    rows = [*GOOD, ("good2.wav", ""), ("good2.wav", " ".join(["moon tree"] * 20)), ("long.wav", "cat"),
            ("nan.wav", "cat"), ("empty.wav", "cat"), ("rate8k.wav", "red")]
    c = cfg(tmp_path, speech, f"data.train_file={_manifest(speech, hostile, rows)}", "data.skip_bad_samples=true",
            "data.long_audio=skip")
    prepared = get_recipe("whisper_asr").prepare(c)
    assert prepared.counters == {"skipped_empty_transcript": 1, "skipped_overlong_transcript": 1,
                                 "skipped_over_window": 1, "skipped_bad_audio": 2, "resampled": 1}
    assert len(prepared.train_data) == 3
    assert prepared.train_data[2]["audio"].shape == (80, 200)  # 8 kHz read at the extractor's 16 kHz


def test_long_audio_chunk_and_error_in_predict(run, hostile):
    from mm_ptft.run import predict

    out, _ = run
    with pytest.raises(DataError, match=r"long.wav: 2.50 s of audio is over the model's 2 s window.*long_audio=chunk"):
        predict(out, [str(hostile / "long.wav")])
    got = predict(out, [str(hostile / "long.wav"), str(hostile / "good0.wav")], overrides=["data.long_audio=chunk"])
    assert got[0]["windows"] == 2 and got[1]["windows"] == 1 and isinstance(got[0]["text"], str)
    skipped = predict(out, [str(hostile / "long.wav")], overrides=["data.long_audio=skip"])
    assert skipped[0]["text"] is None and skipped[0]["skipped"] == "over_window"


def test_config_errors_name_the_key(tmp_path, speech):
    with pytest.raises(ConfigError, match="data.long_audio"):
        get_recipe("whisper_asr").prepare(cfg(tmp_path, speech, "data.long_audio=cut"))
    with pytest.raises(ConfigError, match="generation.max_new_tokens=40"):
        get_recipe("whisper_asr").prepare(cfg(tmp_path, speech, "generation.max_new_tokens=40"))


def test_streams_manifest_shards(tmp_path, speech):
    results = train(cfg(tmp_path, speech, "data.streaming=true", "data.shuffle_block=8", "train.max_steps=2",
                        "train.eval_every=2"))
    assert {"wer", "cer"} <= set(results) and np.isfinite(results["loss"])
