"""The speech-recognition tiny.yaml runs end to end through its train.py and learns (WER far below
chance = 1.0); the run reloads for eval and predict; espeak-ng corpus building where installed."""
from __future__ import annotations

import json
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import jiwer
import pytest

from mm_fixtures import ctc_tokenizer_dir, one_thread  # noqa: F401  (one_thread: autouse, one intra-op thread)
from mm_ptft.train.rundir import final_results

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "speech_recognition"
# fewer clips and steps than tiny.yaml (which reaches WER ~0.005): still well past chance
REDUCED = ["data.generate.n_train=320", "data.generate.n_eval=60", "train.max_steps=200", "train.eval_every=100",
           "train.num_workers=0", "train.report=false"]
# opt-in espeak-ng check: 6 training voices, 2 unseen eval voices (accent + voice variant), 22.05 kHz
ESPEAK_TRAIN = ["en-us", "en-gb", "en-gb-scotland", "en-029", "en-us+f2", "en-gb+m3"]
ESPEAK_EVAL = ["en-gb-x-rp+f4", "en-us-nyc+m5"]
ESPEAK_PHRASES = 150


@pytest.fixture(scope="module")
def speech_run(tmp_path_factory) -> tuple[Path, dict]:
    """One reduced tiny run through the recipe's train.py."""
    out = tmp_path_factory.mktemp("speech")
    main = runpy.run_path(str(RECIPE / "train.py"))["main"]
    return out, main([str(RECIPE / "tiny.yaml"), f"output_dir={out}", *REDUCED])


def test_tiny_wer_far_below_chance(speech_run):
    out, results = speech_run
    final = final_results(out)
    assert final["wer"] == pytest.approx(results["wer"])
    # chance: no word right (WER 1.0); the margin is wide on purpose
    assert results["wer"] < 0.7 and results["cer"] < 0.25, results


def test_vocab_saved_with_run_and_predict_transcribes(speech_run, tmp_path):
    from mm_ptft.run import evaluate, predict

    out, results = speech_run
    assert "vocab:" in (out / "config.yaml").read_text()
    eval_csv = next(out.glob("generated_data/*/eval.csv"))
    rows = [ln.split(",") for ln in eval_csv.read_text().splitlines()[1:9]]
    again = evaluate(out)  # rebuilt from config.yaml (vocab included) + best checkpoint
    best = json.loads((out / "checkpoints" / "best.json").read_text())
    assert again["wer"] == pytest.approx(best["wer"], abs=1e-6)
    # predict needs the run only: the training/eval data may be gone (a run copied to another machine)
    clips = tmp_path / "clips"
    clips.mkdir()
    for r in rows:
        shutil.copy(eval_csv.parent / r[0], clips / Path(r[0]).name)
    data_dir = out / "generated_data"
    data_dir.rename(tmp_path / "gone")
    try:
        preds = predict(out, [str(clips / Path(r[0]).name) for r in rows])
    finally:
        (tmp_path / "gone").rename(data_dir)
    assert [Path(p["file"]).name for p in preds] == [Path(r[0]).name for r in rows]
    assert jiwer.cer([r[1] for r in rows], [p["text"] or "-" for p in preds]) < 0.5, (preds, rows)


def test_tiny_yaml_defaults_parse():
    from mm_ptft.run import load_config

    cfg = load_config(RECIPE / "tiny.yaml")
    assert cfg.task == "speech_recognition" and cfg.model.audio["name"] == "crnn"


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")
def test_espeak_corpus_script(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_espeak_corpus.py"), str(tmp_path), "--phrases", "6",
                    "--voices", "en", "en-us", "--speeds", "160", "--eval-voices", "en-us"], check=True,
                   capture_output=True)
    import soundfile as sf

    train = (tmp_path / "train.csv").read_text().splitlines()
    evals = (tmp_path / "eval.csv").read_text().splitlines()
    assert train[0] == evals[0] == "audio,text,voice"
    assert len(train) == 7 and len(evals) == 7
    assert {r.split(",")[-1] for r in evals[1:]} == {"en-us"} and "en-us" not in {r.split(",")[-1] for r in train[1:]}
    info = sf.info(str(tmp_path / train[1].split(",")[0]))
    assert info.samplerate == 16000 and info.channels == 1 and info.frames > 1600


def test_prepare_counts_bad_resampled_and_stereo_files(tmp_path):
    import numpy as np
    import soundfile as sf

    from mm_ptft.run import load_config
    from mm_ptft.data.generated import generate
    from mm_ptft.data.tables import DataError
    from mm_ptft.tasks.speech_recognition import SpeechRecognition

    paths = generate({"name": "tone_speech", "n_train": 12, "n_eval": 4, "seed": 3, "sample_rate": 16000},
                     tmp_path)
    root = Path(paths["train_file"]).parent
    (root / "bad.wav").write_bytes(b"RIFF0000WAVEjunk")
    t = np.arange(22050) / 22050
    sf.write(str(root / "stereo.wav"), np.stack([np.sin(2 * np.pi * 300 * t)] * 2, 1) * 0.3, 22050)
    with open(paths["train_file"], "a") as f:
        f.write("bad.wav,cat,x\nstereo.wav,dog,x\n")
    args = [f"output_dir={tmp_path / 'run'}", "data.generate=null", f"data.train_file={paths['train_file']}",
            f"data.eval_file={paths['eval_file']}"]
    with pytest.raises(DataError, match=r"train.csv: row 12: .*bad.wav"):
        SpeechRecognition.prepare(load_config(RECIPE / "tiny.yaml", args))
    prepared = SpeechRecognition.prepare(load_config(RECIPE / "tiny.yaml", [*args, "data.skip_bad_samples=true"]))
    # (12 training phrases may not cover every eval character: those are counted too)
    counted = {k: v for k, v in prepared.counters.items() if k != "unknown_characters_dropped"}
    assert counted == {"skipped_bad_audio": 1, "resampled": 1, "downmixed_to_mono": 1}
    assert len(prepared.train_data) == 13 and prepared.train_lengths[-1] == 16000  # 1 s at 16 kHz
    assert prepared.train_data[12]["audio"].shape[0] == 80  # log-mel bins of model.audio


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")
def test_tiny_recipe_learns_espeak_speech_of_unseen_voices(tmp_path):
    """Real (synthesised) speech, open vocabulary greedy decoding, eval voices never heard in training:
    tiny.yaml pointed at the manifests (half its step budget) must get most words right."""
    from mm_ptft.run import load_config
    from mm_ptft.run import train

    corpus = tmp_path / "corpus"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_espeak_corpus.py"), str(corpus), "--phrases",
                    str(ESPEAK_PHRASES), "--sample-rate", "22050", "--voices", *ESPEAK_TRAIN, *ESPEAK_EVAL,
                    "--eval-voices", *ESPEAK_EVAL], check=True, capture_output=True)
    cfg = load_config(RECIPE / "tiny.yaml", [f"output_dir={tmp_path / 'run'}", f"data.train_file={corpus / 'train.csv'}",
                                             f"data.eval_file={corpus / 'eval.csv'}", "train.report=false",
                                             "train.num_workers=0", "train.max_steps=1000"])  # half the budget
    results = train(cfg)
    assert results["wer"] < 0.4 and results["cer"] < 0.15, results


def test_vocab_from_an_hf_tokenizer_and_a_case_mismatch_is_named(tmp_path):
    """model.tokenizer: the CTC vocabulary comes from a Wav2Vec2CTCTokenizer directory; upper-case
    tokenizer letters against lower-cased transcripts would gut every target, so that stops early."""
    from mm_ptft.run import load_config
    from mm_ptft.data.tables import DataError
    from mm_ptft.tasks.speech_recognition import SpeechRecognition

    base = [f"output_dir={tmp_path / 'run'}", "data.generate.n_train=8", "data.generate.n_eval=4"]
    lower = "abcdefghijklmnopqrstuvwxyz"
    lower_tok, upper_tok = ctc_tokenizer_dir(tmp_path, lower), ctc_tokenizer_dir(tmp_path, lower.upper())
    prepared = SpeechRecognition.prepare(load_config(RECIPE / "tiny.yaml", [*base, f"model.tokenizer={lower_tok}"]))
    assert prepared.task.vocab.tokens == ["<blank>", "|", *lower]
    with pytest.raises(DataError, match=r"characters are not in the CTC vocabulary.*data.lowercase"):
        SpeechRecognition.prepare(load_config(RECIPE / "tiny.yaml", [*base, f"model.tokenizer={upper_tok}"]))
    with pytest.raises(ValueError, match=r"model.tokenizer='.*nowhere': no tokenizer found there"):
        SpeechRecognition.prepare(load_config(RECIPE / "tiny.yaml", [*base, f"model.tokenizer={tmp_path / 'nowhere'}"]))


def test_build_lm_decode_with_it_and_tune(speech_run, tmp_path, capsys):
    """mm-ptft build-lm on a (copied) run → eval with model.decoder={name: beam, lm: …}: the tone-speech phrases
    use a closed word list, which is the LM's, so beam+LM WER ≤ beam WER and ≤ greedy WER; tune-lm writes the grid
    and sets the best decoder in the run, which still evaluates after the run directory moves."""
    from mm_ptft.cli import main as cli
    from mm_ptft.heads.ngram_lm import lm_words
    from mm_ptft.run import evaluate

    out = tmp_path / "run"
    shutil.copytree(speech_run[0], out)
    lm = tmp_path / "lm.arpa"
    assert cli(["build-lm", str(out), "--out", str(lm)]) == 0
    train_csv = next(out.glob("generated_data/*/train.csv"))
    words = {w for ln in train_csv.read_text().splitlines()[1:] for w in ln.split(",")[1].split()}
    assert set(lm_words(lm)) == words
    wer = {name: evaluate(out, [f"model.decoder={spec}"])["wer"] for name, spec in
           {"greedy": "greedy", "beam": "beam", "beam+lm": f"{{name: beam, lm: {lm}, lm_weight: 1.0}}"}.items()}
    assert wer["beam+lm"] <= wer["beam"] and wer["beam+lm"] <= wer["greedy"], wer
    capsys.readouterr()
    assert cli(["tune-lm", str(out), "--lm", str(lm), "--weights", "0.5,2", "--word-scores", "0,1"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "lm" / "tuning.json").read_text())
    assert len(report["grid"]) == 4 and [r["wer"] for r in report["grid"]] == sorted(r["wer"] for r in report["grid"])
    assert report["greedy"]["wer"] == pytest.approx(wer["greedy"])
    assert report["beam"]["wer"] == pytest.approx(wer["beam"])
    assert "best: model.decoder=" in printed and (out / "lm" / "lm.arpa").is_file()
    if report["applied"]:  # greedy was the run's decoder; the best grid point beat it
        assert "${output_dir}/lm/lm.arpa" in (out / "config.yaml").read_text()
        moved = tmp_path / "moved"
        out.rename(moved)
        assert evaluate(moved)["wer"] == pytest.approx(report["best"]["wer"], abs=1e-6)
    else:
        assert report["best"]["wer"] >= report["run_decoder"]["wer"]
    with pytest.raises(FileNotFoundError, match="model.decoder.lm=.*none.arpa' does not exist.*build-lm"):
        evaluate(speech_run[0], [f"model.decoder={{name: beam, lm: {tmp_path / 'none.arpa'}}}"])
