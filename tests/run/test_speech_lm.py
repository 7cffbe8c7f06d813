"""mm-ptft build-lm: the LM's words are the normalised training transcripts' (the eval split left out); bad inputs
of build-lm / tune-lm. (Decoding a trained run with the LM and tune-lm's grid: tests/recipes/test_speech_recipe.py.)"""
from __future__ import annotations

import csv

import pytest

from mm_paths import ROOT
from mm_ptft.heads.ngram_lm import lm_words, read_arpa
from mm_ptft.run.speech_lm import build_lm_from_config, tune_lm

RECIPE = f"{ROOT}/recipes/speech_recognition/tiny.yaml"


def _manifest(tmp_path, rows):
    path = tmp_path / "train.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("audio", "text"), *rows])
    return path


def test_build_lm_counts_normalised_training_transcripts(tmp_path):
    train = _manifest(tmp_path, [("a.wav", "The CAT, sat!"), ("b.wav", "  "), ("c.wav", "a dog's bone")])
    built = build_lm_from_config(RECIPE, tmp_path / "lm.arpa", ["data.generate=null", f"data.train_file={train}",
                                                               f"data.eval_file={train}", "output_dir=" + str(tmp_path)],
                                 order=2)
    assert (built.sentences, built.skipped_empty, built.words) == (2, 1, 6)
    assert lm_words(built.path) == ["a", "bone", "cat", "dog's", "sat", "the"] and read_arpa(built.path).order == 2


def test_build_lm_leaves_the_seeded_eval_split_out(tmp_path):
    rows = [(f"{i}.wav", f"word{i}") for i in range(20)]
    train = _manifest(tmp_path, rows)
    built = build_lm_from_config(RECIPE, tmp_path / "lm.arpa", ["data.generate=null", f"data.train_file={train}",
                                                               "data.eval_fraction=0.25", f"output_dir={tmp_path}"])
    assert built.sentences == 15 and len(lm_words(built.path)) == 15  # 5 of 20 rows held out for eval


def test_build_lm_and_tune_lm_bad_inputs(tmp_path):
    from mm_ptft.data.tables import DataError

    with pytest.raises(ValueError, match="reads speech_recognition configs"):
        build_lm_from_config(f"{ROOT}/recipes/text_classification/tiny.yaml", tmp_path / "lm.arpa")
    train = _manifest(tmp_path, [("a.wav", "cat")])
    with pytest.raises((ValueError, DataError), match="transcript"):
        build_lm_from_config(RECIPE, tmp_path / "lm.arpa", ["data.generate=null", f"data.train_file={train}",
                                                           f"data.eval_file={train}", "data.text_column=transcript",
                                                           f"output_dir={tmp_path}"])
    with pytest.raises(ValueError, match="no sentences"):
        build_lm_from_config(RECIPE, tmp_path / "lm.arpa", ["data.generate=null",
                                                           f"data.train_file={_manifest(tmp_path, [('a.wav', '?!')])}",
                                                           f"data.eval_file={train}", f"output_dir={tmp_path}"])
    with pytest.raises(FileNotFoundError, match=r"--lm '.*missing.arpa' does not exist.*build-lm"):
        tune_lm(tmp_path, tmp_path / "missing.arpa")
