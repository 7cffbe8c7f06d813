"""Speech recognition (CTC, and whisper_asr through the same data path) on audio folders: ``metadata.csv`` as in
``datasets``' audiofolder, or a transcript beside each clip; the same clips as from the manifest table; missing
transcripts and files named, or skipped and counted."""
import json
import os

import pytest

from mm_ptft.cli import main as cli_main
from mm_ptft.data.generated import generate
from mm_ptft.data.tables import DataError
from mm_ptft.tasks import get_recipe, load_config

from mm_paths import ROOT

SPEECH_TINY = os.path.join(ROOT, "recipes", "speech_recognition", "tiny.yaml")
TONES = {"name": "tone_speech", "n_train": 6, "n_eval": 3, "sample_rate": 16000, "seed": 1}


def prepared(out, files, *extra):
    cfg = load_config(SPEECH_TINY, [f"output_dir={out}", "data.generate=null", f"data.train_file={files['train_file']}",
                                    f"data.eval_file={files['eval_file']}", *extra])
    return get_recipe(cfg.task).prepare(cfg, train=True)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("speech")
    return {layout: generate({**TONES, "layout": layout}, root) for layout in ("table", "metadata", "transcripts")}


def test_folder_layouts_give_the_manifests_clips(layouts, tmp_path):
    clips = {}
    for layout, files in layouts.items():
        p = prepared(tmp_path / layout, files)
        clips[layout] = [[(os.path.basename(c.path), c.text, c.labels, c.samples) for c in ds.clips]
                         for ds in (p.train_data, p.eval_data)]
    assert len(clips["table"][0]) == 6 and len(clips["table"][1]) == 3
    assert clips["metadata"] == clips["table"] and clips["transcripts"] == clips["table"]


def test_ctc_trains_end_to_end_on_a_metadata_folder(layouts, tmp_path):
    files, run = layouts["metadata"], tmp_path / "run"
    assert cli_main(["train", SPEECH_TINY, f"output_dir={run}", "data.generate=null",
                     f"data.train_file={files['train_file']}", f"data.eval_file={files['eval_file']}",
                     "train.max_steps=2", "train.batch_size=3", "train.report=false", "train.report_to=[]",
                     "train.device=cpu", "train.num_workers=0", "train.eval_every=0"]) == 0
    final = json.loads((run / "final_metrics.json").read_text())
    assert {"wer", "cer"} <= set(final)


@pytest.mark.parametrize("layout,remove,match,counter", [
    ("transcripts", "00002.txt", r"empty transcript of .*00002\.wav \(in a folder", "skipped_empty_transcript"),
    ("metadata", "00001.wav", r"row 1: .*00001\.wav: audio file not found", "skipped_bad_audio")])
def test_missing_transcripts_and_files_are_named_or_counted(tmp_path, layout, remove, match, counter):
    files = generate({**TONES, "n_train": 4, "layout": layout}, tmp_path / "data")
    os.remove(os.path.join(files["train_file"], remove))
    with pytest.raises(DataError, match=match):
        prepared(tmp_path / "a", files)
    p = prepared(tmp_path / "b", files, "data.skip_bad_samples=true")
    assert len(p.train_data) == 3 and p.counters[counter] == 1


def test_whisper_reads_the_same_folder(layouts, tmp_path):
    files = layouts["transcripts"]
    cfg = load_config(os.path.join(ROOT, "recipes", "whisper_asr", "tiny.yaml"),
                      [f"output_dir={tmp_path}", "data.generate=null", f"data.train_file={files['train_file']}",
                       f"data.eval_file={files['eval_file']}", "data.long_audio=skip"])
    p = get_recipe(cfg.task).prepare(cfg, train=True)
    assert len(p.train_data) + p.counters.get("skipped_over_window", 0) == 6


def as_librispeech(table_files, root):
    """The table layout's clips rewritten as LibriSpeech keeps them: soundfile-written FLAC at
    SPEAKER/CHAPTER/SPEAKER-CHAPTER-NNNN.flac and SPEAKER-CHAPTER.trans.txt of upper-case 'UTTID TRANSCRIPT' lines."""
    import csv

    import soundfile as sf

    out = {}
    for split in ("train", "eval"):
        manifest = table_files[f"{split}_file"]
        lists = {}
        with open(manifest) as f:
            for i, r in enumerate(csv.DictReader(f)):
                spk, chapter = str(int(r["speaker"][3:]) + 1), "7" + r["speaker"][3:]
                folder = root / split / spk / chapter
                folder.mkdir(parents=True, exist_ok=True)
                utt = f"{spk}-{chapter}-{i:04d}"
                data, rate = sf.read(os.path.join(os.path.dirname(manifest), r["audio"]))
                sf.write(str(folder / f"{utt}.flac"), data, rate, format="FLAC", subtype="PCM_16")
                lists.setdefault(folder / f"{spk}-{chapter}.trans.txt", []).append(f"{utt} {r['text'].upper()}\n")
        for path, lines in lists.items():
            path.write_text("".join(lines))
        out[f"{split}_file"] = str(root / split)
    return out


def by_row(ds):
    """{table row: clip} of a LibriSpeech folder's clips (the row is the utterance number) or a table's (position)."""
    stem = lambda p: os.path.splitext(os.path.basename(p))[0]  # noqa: E731
    return {int(stem(c.path).rsplit("-", 1)[-1]) if c.path.endswith(".flac") else i: (c.text, c.labels, c.samples)
            for i, c in enumerate(ds.clips)}


def test_librispeech_folder_gives_the_manifests_clips(layouts, tmp_path):
    libri = as_librispeech(layouts["table"], tmp_path / "LibriSpeech")
    table, folder = prepared(tmp_path / "table", layouts["table"]), prepared(tmp_path / "libri", libri)
    for a, b in ((table.train_data, folder.train_data), (table.eval_data, folder.eval_data)):
        assert by_row(a) == by_row(b) and len(b) > 0
    assert not any(k.startswith("ignored") for k in folder.counters)  # the .trans.txt files are the transcripts


def test_librispeech_missing_flac_is_named_or_counted_and_a_repeated_utterance_is_an_error(layouts, tmp_path):
    libri = as_librispeech(layouts["table"], tmp_path / "LibriSpeech")
    flac = sorted(p for p in (tmp_path / "LibriSpeech" / "train").rglob("*.flac"))[0]
    flac.unlink()
    with pytest.raises(DataError, match=rf"{flac.name}: audio file not found"):
        prepared(tmp_path / "a", libri)
    p = prepared(tmp_path / "b", libri, "data.skip_bad_samples=true")
    assert len(p.train_data) == 5 and p.counters["skipped_bad_audio"] == 1
    trans = next(flac.parent.glob("*.trans.txt"))
    trans.write_text(trans.read_text() + trans.read_text().splitlines()[0] + "\n")
    with pytest.raises(DataError, match=rf"{trans.name}: line \d+: utterance '{flac.stem}' is listed twice"):
        prepared(tmp_path / "c", libri)


def test_ctc_trains_end_to_end_on_a_generated_librispeech_folder(tmp_path):
    run = tmp_path / "run"  # the command docs/howto/speech_recognition.md shows, at test size
    assert cli_main(["train", SPEECH_TINY, f"output_dir={run}", "data.generate.layout=librispeech",
                     "data.generate.n_train=6", "data.generate.n_eval=3", "data.generate.sample_rate=16000",
                     "train.max_steps=2", "train.batch_size=3", "train.report=false", "train.report_to=[]",
                     "train.device=cpu", "train.num_workers=0", "train.eval_every=0"]) == 0
    final = json.loads((run / "final_metrics.json").read_text())
    assert {"wer", "cer"} <= set(final)
    flacs = list((run / "generated_data").rglob("*.flac"))
    assert flacs and all(f.parent.parent.name == f.stem.split("-")[0] and f.parent.name == f.stem.split("-")[1]
                         for f in flacs)
