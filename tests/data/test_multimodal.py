"""The paired shapes generator, manifest loading, collation and weighted mixing."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from mm_ptft.data.generated import generate
from mm_ptft.data.generated.multimodal import COLORS, PITCH, SIZES
from mm_ptft.data.multimodal import (Columns, MediaConfig, MixtureCollator, MixtureDataset, MultimodalCollator,
                                     build_paired, load_audio, load_image)
from mm_ptft.data.tables import DataError, LabelMap, load_table

from mm_fixtures import one_thread  # noqa: F401  (autouse: one intra-op thread for this module)

@pytest.fixture(scope="module")
def encoders_text():
    from mm_ptft.encoders import TEXT_ENCODERS, build_encoder

    corpus = ["a small red circle", "a large blue square", "the triangle is green", "a yellow cross"] * 3
    return build_encoder(TEXT_ENCODERS, {"name": "tiny", "dim": 16, "depth": 1, "heads": 2, "vocab_size": 100},
                         "model.text", corpus=corpus)


SPEC = {"name": "shapes_captions", "n_train": 24, "n_eval": 8, "image_size": 32, "sample_rate": 8000, "seed": 3}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict[str, str]:
    return generate(SPEC, tmp_path_factory.mktemp("shapes"))


def _rows(path: str) -> list[dict]:
    return [json.loads(line) for line in open(path)]


def test_generator_is_deterministic_and_writes_files(shapes, tmp_path) -> None:
    again = generate(SPEC, tmp_path)
    assert _rows(again["train_file"]) == _rows(shapes["train_file"])
    rows = _rows(shapes["train_file"])
    assert len(rows) == 24 and len(_rows(shapes["eval_file"])) == 8
    base = os.path.dirname(shapes["train_file"])
    for r in rows:
        assert os.path.isfile(os.path.join(base, r["image"])) and os.path.isfile(os.path.join(base, r["audio"]))
        assert r["label"] == r["shape"] and all(r[k] in r["caption"] for k in ("shape", "color", "size"))


def test_each_modality_encodes_the_attributes(shapes) -> None:
    """Independent checks: the image holds pixels of the colour; the tone's strongest frequency is its pitch."""
    import soundfile as sf
    from PIL import Image

    base = os.path.dirname(shapes["train_file"])
    for r in _rows(shapes["train_file"])[:8]:
        px = np.asarray(Image.open(os.path.join(base, r["image"]))).reshape(-1, 3).astype(int)
        near = (np.abs(px - np.array(COLORS[r["color"]])).max(1) <= 30).mean()
        assert near > 0.5 * SIZES[r["size"]] ** 2 * 0.6, r  # at least part of the shape's area
        wav, rate = sf.read(os.path.join(base, r["audio"]))
        spec = np.abs(np.fft.rfft(wav))
        peak = np.fft.rfftfreq(len(wav), 1 / rate)[spec.argmax()]
        assert abs(peak - PITCH[r["color"]]) < 0.05 * PITCH[r["color"]], r


def test_build_paired_batches_all_keys(shapes, encoders_text) -> None:
    table = load_table(shapes["train_file"])
    labels = LabelMap.from_values(table["label"])
    media = MediaConfig(image_size=16, sample_rate=4000)
    ds = build_paired(table, shapes["train_file"], ["audio", "image", "text"], Columns(), media,
                      encoders_text.tokenizer, 32, labels)
    batch = MultimodalCollator(encoders_text.tokenizer.pad_token_id)([ds[i] for i in range(4)])
    assert set(batch) == {"text", "text_mask", "image", "audio", "audio_lengths", "labels"}
    assert batch["image"].shape == (4, 3, 16, 16)
    n = batch["audio_lengths"]
    assert batch["audio"].shape == (4, int(n.max())) and (n <= 2000).all() and (n > 1000).all()  # 0.375-0.5 s at 4 kHz
    for i in range(4):
        assert (batch["audio"][i, n[i]:] == 0).all()
    assert batch["labels"].tolist() == labels.encode(table["label"][:4], "x")
    only_text = build_paired(table, shapes["train_file"], ["text"], Columns(), media, encoders_text.tokenizer, 32)
    assert set(MultimodalCollator(0)([only_text[0], only_text[1]])) == {"text", "text_mask"}


def test_missing_media_is_an_error_naming_the_row_or_a_counted_skip(shapes, tmp_path) -> None:
    rows = _rows(shapes["train_file"])[:3]
    base = os.path.dirname(shapes["train_file"])
    for r in rows:
        r["image"] = os.path.join(base, r["image"])
    rows[1]["image"] = str(tmp_path / "gone.png")
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = load_table(str(path))
    with pytest.raises(DataError, match=r"row 1: missing image file .*gone.png"):
        build_paired(table, str(path), ["image"], Columns(), MediaConfig())
    counters: dict[str, int] = {}
    ds = build_paired(table, str(path), ["image"], Columns(), MediaConfig(), skip_bad=True, counters=counters)
    assert len(ds) == 2 and counters == {"skipped_missing_images": 1}  # the image recipe's counter
    with pytest.raises(DataError, match="missing column"):
        build_paired(table, str(path), ["image"], Columns(image="img"), MediaConfig())


@pytest.mark.parametrize("samples, problem", [(np.array([0.0, np.nan, 0.1] * 800), "audio contains NaN"),
                                              (np.zeros(0), r"empty audio \(0 samples\)")])
def test_bad_audio_in_a_paired_manifest_is_an_error_or_the_speech_recipes_counted_skip(shapes, tmp_path, samples,
                                                                                        problem) -> None:
    import soundfile as sf

    rows = _rows(shapes["train_file"])[:3]
    base = os.path.dirname(shapes["train_file"])
    for r in rows:
        r["audio"] = os.path.join(base, r["audio"])
    rows[2]["audio"] = str(tmp_path / "bad.wav")
    sf.write(rows[2]["audio"], samples.astype(np.float32), 8000, subtype="FLOAT")
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    media = MediaConfig(sample_rate=8000)
    with pytest.raises(DataError, match=rf"m\.jsonl: row 2: .*bad\.wav: {problem}"):
        build_paired(load_table(str(path)), str(path), ["audio"], Columns(), media)
    counters: dict[str, int] = {}
    ds = build_paired(load_table(str(path)), str(path), ["audio"], Columns(), media, skip_bad=True, counters=counters)
    assert len(ds) == 2 and counters == {"skipped_bad_audio": 1}


def test_loaders_normalise_and_resample(shapes) -> None:
    base = os.path.dirname(shapes["train_file"])
    row = _rows(shapes["train_file"])[0]
    raw = MediaConfig(image_size=8, image_mean=[0, 0, 0], image_std=[1, 1, 1])
    img = load_image(os.path.join(base, row["image"]), raw)
    assert img.shape == (3, 8, 8) and 0 <= img.min() and img.max() <= 1
    wav8k = load_audio(os.path.join(base, row["audio"]), MediaConfig(sample_rate=8000))
    wav16k = load_audio(os.path.join(base, row["audio"]), MediaConfig(sample_rate=16000, max_audio_seconds=0.1))
    assert wav16k.shape[0] == 1600 and wav8k.shape[0] > 800
    mel = load_audio(os.path.join(base, row["audio"]), MediaConfig(sample_rate=8000, n_mels=20))
    assert mel.shape[0] == 20 and abs(float(mel.mean())) < 1e-3  # normalised per bin


class _Range(torch.utils.data.Dataset):
    def __init__(self, n: int, tag: str) -> None:
        self.n, self.tag = n, tag

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"labels": i, "tag": self.tag}


def test_mixture_draws_sources_by_weight_and_groups_batches() -> None:
    mix = MixtureDataset({"a": _Range(10, "a"), "b": _Range(1000, "b")}, {"a": 0.75, "b": 0.25}, size=400, seed=0)
    assert mix.counts() == {"a": 300, "b": 100}  # the small source is repeated, the large one subsampled
    a_items = [mix[i][1]["labels"] for i in range(len(mix)) if mix[i][0] == "a"]
    assert sorted(set(a_items)) == list(range(10)) and max(np.bincount(a_items)) == 30  # every item 30 times
    again = MixtureDataset({"a": _Range(10, "a"), "b": _Range(1000, "b")}, {"a": 0.75, "b": 0.25}, size=400, seed=0)
    assert again.index == mix.index
    batch = MixtureCollator(lambda items: {"labels": torch.tensor([it["labels"] for it in items])})(
        [("b", {"labels": 5}), ("a", {"labels": 1}), ("b", {"labels": 7})])
    assert list(batch) == ["a", "b"] and batch["b"]["labels"].tolist() == [5, 7]
    with pytest.raises(ValueError, match="weights"):
        MixtureDataset({"a": _Range(3, "a")}, {"a": 1.0, "c": 1.0})
