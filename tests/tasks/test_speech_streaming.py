"""Speech recognition with ``data.streaming: true``: from WebDataset tars (``{key}.wav`` + ``{key}.txt``) and
from manifest shards; augmentation (speed, SpecAugment) seeded per sample so a mid-pass resume matches a
straight run; bad audio named or counted; tar shards need a given vocabulary."""
import os

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds

from mm_ptft.data.generated import generate
from mm_ptft.data.tables import DataError
from mm_ptft.run import load_config, train

from mm_fixtures import csv_to_tars, resume_from_copy, same_weights
from mm_paths import ROOT

TINY = os.path.join(ROOT, "recipes", "speech_recognition", "tiny.yaml")
SMALL = ["model.audio.dim=32", "model.audio.depth=1", "model.audio.n_mels=40", "train.batch_size=8",
         "train.report=false", "data.generate=null", "data.streaming=true", "data.shuffle_block=20"]


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """tone_speech (60 clips) as a manifest and as 2 tar shards, plus a tar holding one NaN clip."""
    import mm_ptft.data.generated.audio  # noqa: F401  (registers tone_speech)

    root = tmp_path_factory.mktemp("speech")
    files = generate({"name": "tone_speech", "n_train": 60, "n_eval": 20, "sample_rate": 16000, "max_words": 2,
                      "seed": 0}, str(root))
    rows = csv_to_tars(files["train_file"], root, [slice(0, 35), slice(35, None)],
                       lambda read, r: {"wav": read(r["audio"]), "txt": r["text"]})
    buf = root / "nan.wav"
    sf.write(str(buf), np.full(8000, np.nan, np.float32), 16000, subtype="FLOAT")
    with wds.TarWriter(str(root / "bad.tar")) as sink:
        sink.write({"__key__": "nan", "wav": buf.read_bytes(), "txt": "one"})
    return {"tars": str(root / "train-{0..1}.tar"), "manifest": files["train_file"], "eval_file": files["eval_file"],
            "bad": str(root / "bad.tar"), "rows": rows}


def cfg(tmp_path, *extra, name="run"):
    return load_config(TINY, [f"output_dir={tmp_path / name}", *SMALL, *extra])


def test_streams_tar_shards_with_a_given_vocabulary(tmp_path, speech):
    vocab = sorted({c for r in speech["rows"] for c in r["text"].lower() if c != " "})
    results = train(cfg(tmp_path, f"data.train_file={speech['tars']}", f"data.eval_file={speech['eval_file']}",
                        f"model.vocab=[<blank>,'|',{','.join(vocab)}]", "train.max_steps=6", "train.eval_every=6"))
    assert {"wer", "cer"} <= set(results) and np.isfinite(results["loss"])


def test_tar_shards_without_vocabulary_and_a_nan_clip_are_named(tmp_path, speech):
    with pytest.raises(DataError, match="model.vocab"):
        train(cfg(tmp_path, f"data.train_file={speech['tars']}", "train.max_steps=2"))
    with pytest.raises(DataError, match=r"bad.tar: sample 'nan'.*NaN or Inf"):
        train(cfg(tmp_path, f"data.train_file={speech['bad']}", "model.vocab=[<blank>,'|',o,n,e]",
                  "train.max_steps=2"))


def test_manifest_stream_learns_the_vocabulary_and_resumes_exactly_with_augmentation(tmp_path, speech):
    common = [f"data.train_file={speech['manifest']}", f"data.eval_file={speech['eval_file']}", "train.max_steps=6",
              "train.save_every=3", "train.eval_every=100", "train.num_workers=2", "train.keep_last=5",
              "data.augment.noise_prob=0.5"]
    train(cfg(tmp_path, *common, name="straight"))
    from mm_ptft.heads.ctc import CharVocab, normalize_text

    expected = CharVocab.from_texts([normalize_text(r["text"], True, True) for r in speech["rows"]]).tokens
    assert list(load_config(str(tmp_path / "straight" / "config.yaml")).model.vocab) == expected
    resume_from_copy(tmp_path / "straight", tmp_path / "resumed", 3)
    train(cfg(tmp_path, *common, "train.resume=true", name="resumed"))
    assert same_weights(tmp_path / "straight", tmp_path / "resumed", 6)


@pytest.mark.parametrize("streaming", ["true", "false"])
def test_vocabulary_and_lexicon_are_learned_from_the_training_transcripts(tmp_path, speech, streaming):
    from mm_ptft.heads.ctc import normalize_text
    from mm_ptft.tasks import get_recipe

    cfg = load_config(TINY, [f"output_dir={tmp_path / 'run'}", *SMALL, f"data.streaming={streaming}",
                             f"data.train_file={speech['manifest']}", f"data.eval_file={speech['eval_file']}",
                             "model.decoder=lexicon", "train.max_steps=2"])
    get_recipe(cfg.task).prepare(cfg)
    texts = [normalize_text(r["text"], True, True) for r in speech["rows"]]
    assert cfg.model.lexicon == sorted({w for t in texts for w in t.split()})
    assert set(cfg.model.vocab[2:]) == {c for t in texts for c in t if c != " "}
