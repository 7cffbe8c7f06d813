"""Folders as users keep them (``data/folders.py``): class sub-folders read as torchvision's ``ImageFolder`` reads
them, audio folders with a metadata file or transcripts beside the clips, split sub-folders, and bad layouts named."""
import json
import os
import shutil

import pytest
from PIL import Image

from mm_ptft.data.folders import EXTS, FolderSpec, read_table, split_folders, tree_identity
from mm_ptft.data.tables import DataError, load_table

IMAGES = FolderSpec("image", "path", "label")
SPEECH = FolderSpec("audio", "audio", text="text")


def image_folder(root, layout):
    """``layout``: {relative path: None (an image) | text (a non-image file)}."""
    for rel, text in layout.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if text is None:
            Image.new("RGB", (4, 4), (len(rel) * 7 % 255, 0, 0)).save(path)
        else:
            path.write_text(text)
    return str(root)


LAYOUT = {"dog/b.png": None, "dog/a.jpg": None, "cat/z.png": None, "cat/sub/deep.bmp": None, "cat/notes.txt": "x",
          "cat/.DS_Store": "x", "emu/1.webp": None, "readme.md": "about", ".hidden/x.png": None}


def test_class_folders_read_as_torchvision_reads_them(tmp_path):
    from torchvision.datasets import DatasetFolder

    root = image_folder(tmp_path / "imgs", LAYOUT)
    counts = {}
    table = read_table(root, "data.train_file", IMAGES, counts)
    shutil.rmtree(tmp_path / "imgs" / ".hidden")  # torchvision lists hidden folders as classes; we ignore them
    ref = DatasetFolder(root, loader=str, extensions=EXTS["image"])  # ImageFolder with our extensions
    assert list(zip(table["path"], table["label"])) == [(p, ref.classes[y]) for p, y in ref.samples]
    assert table["__row__"] == list(range(5))
    assert counts == {"ignored_non_image_files": 1, "ignored_files_outside_class_folders": 1}


def test_bad_folders_are_errors_naming_them(tmp_path):
    root = image_folder(tmp_path / "imgs", {"dog/a.png": None, "cat/notes.txt": "only text"})
    with pytest.raises(DataError, match=r"class folder .*imgs/cat holds no image files"):
        read_table(root, "data.train_file", IMAGES)
    flat = image_folder(tmp_path / "flat", {"a.png": None, "b.png": None})
    with pytest.raises(DataError, match=r"data.train_file=.*flat: no class sub-folders"):
        read_table(flat, "data.train_file", IMAGES)
    with pytest.raises(DataError, match="a folder, but a table file"):  # a recipe that reads tables only
        load_table(flat, "data.train_file")


def test_split_folders_give_train_and_eval_and_read_together(tmp_path):
    root = image_folder(tmp_path / "d", {"train/a/1.png": None, "train/b/2.png": None, "validation/a/3.png": None})
    assert split_folders(root) == (os.path.join(root, "train"), os.path.join(root, "validation"))
    assert split_folders(os.path.join(root, "train")) is None
    table = read_table(root, "k", IMAGES)  # cv / fewshot on the root: both splits' files, never "train" as a class
    assert table["label"] == ["a", "b", "a"] and table["__row__"] == [0, 1, 2]

    from mm_ptft.tasks.common import resolve_files
    from mm_ptft.tasks.image_classification import ImageClsData

    d = ImageClsData(train_file=root)
    resolve_files(d, str(tmp_path))
    assert (d.train_file, d.eval_file) == (os.path.join(root, "train"), os.path.join(root, "validation"))


def speech_folder(root, files):
    root.mkdir(parents=True)
    for name, content in files.items():
        (root / name).write_bytes(content) if isinstance(content, bytes) else (root / name).write_text(content)
    return str(root)


def test_audio_folder_layouts_give_the_same_table(tmp_path):
    """metadata.csv (audiofolder's ``transcription``), metadata.jsonl (the recipe's own column) and per-file
    .txt / .lab transcripts: the same paths and transcripts."""
    wav = b"RIFF"  # contents are the recipe's business (decoded and checked there), not the listing's
    csv = speech_folder(tmp_path / "csv", {"a.wav": wav, "b.flac": wav, "metadata.csv":
                                           "file_name,transcription,speaker\na.wav,hello there,s1\nb.flac,bye,s2\n"})
    rows = [{"file_name": "a.wav", "text": "hello there"}, {"file_name": "b.flac", "text": "bye"}]
    jsonl = speech_folder(tmp_path / "jsonl", {"a.wav": wav, "b.flac": wav,
                                               "metadata.jsonl": "\n".join(map(json.dumps, rows))})
    beside = speech_folder(tmp_path / "beside", {"a.wav": wav, "a.txt": "hello\n  there\n", "b.flac": wav,
                                                 "b.lab": "bye", "c.wav": wav, "cover.jpg": wav})
    counts = {}
    tables = [read_table(f, "data.train_file", SPEECH, counts) for f in (csv, jsonl, beside)]
    for table, root in zip(tables, (csv, jsonl, beside)):
        assert table["audio"][:2] == [os.path.join(root, "a.wav"), os.path.join(root, "b.flac")]
        assert table["text"][:2] == ["hello there", "bye"]
    assert tables[0]["speaker"] == ["s1", "s2"]
    assert tables[2]["text"][2] == ""  # c.wav has no transcript: the recipe names it (or skips and counts it)
    assert counts == {"ignored_non_audio_files": 1}
    with pytest.raises(DataError, match=r"empty.*no audio files .* and no metadata"):
        read_table(speech_folder(tmp_path / "empty", {"notes.txt": "x"}), "data.train_file", SPEECH)
    bad = speech_folder(tmp_path / "bad", {"metadata.csv": "path,transcription\na.wav,hi\n"})
    with pytest.raises(DataError, match="missing column.*file_name"):
        read_table(bad, "data.train_file", SPEECH)


def test_tree_identity_changes_with_any_file(tmp_path):
    root = image_folder(tmp_path / "imgs", {"dog/a.png": None, "cat/b.png": None})
    first = tree_identity(root)
    assert tree_identity(root) == first
    (tmp_path / "imgs" / "cat" / "c.png").write_bytes(b"x")
    assert tree_identity(root) != first
