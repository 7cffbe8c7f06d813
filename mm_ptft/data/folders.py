"""Folders as users keep them, read as the tables the recipes already take (``read_table``).

Three layouts, found in this order:

- **metadata file** (``datasets``' imagefolder / audiofolder): ``metadata.csv`` (or ``.jsonl`` / ``.parquet``) in
  the folder, one row per file, ``file_name`` relative to the folder; its other columns are kept
  (``transcription`` serves as the transcript column when the recipe's own name is absent).
- **class sub-folders** (torchvision ``ImageFolder``): ``root/<class>/**/<file>``; the sub-folder's name is the
  label. Classes and files are sorted; hidden entries (``.name``) are ignored. An empty class folder is an error
  naming it (it would silently drop a class); a folder without class sub-folders is an error naming the folder;
  files whose extension is not of the media kind are ignored and counted (``ignored_non_<kind>_files``) with the
  first few named in the log.
- **transcripts beside the audio** (speech): ``clip.wav`` + ``clip.txt`` or ``clip.lab`` anywhere under the folder;
  a clip without one gets an empty transcript, which the recipe names (or skips and counts).
- **LibriSpeech** (speech): ``SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt`` holding ``UTTID TRANSCRIPT`` lines beside
  ``UTTID.flac``; any ``*.trans.txt`` under the folder gives the transcripts of the clips in its directory (a clip
  it does not list falls back to a ``.txt`` / ``.lab`` beside it); an utterance it lists without its audio file is a
  row whose file is missing, which the recipe names (or skips and counts); an utterance listed twice is an error
  naming the file and line.

A folder may also hold split sub-folders, ``train/`` and one of ``val/``, ``validation/``, ``test/``, each in one of
the layouts above (``split_folders``)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

from mm_ptft.data.tables import ROW, DataError, load_table, require_columns, with_rows

log = logging.getLogger(__name__)

EXTS = {
    "image": (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"),
    "audio": (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif", ".au"),
    "video": (".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi", ".mpg", ".mpeg", ".ogv"),
}
METADATA = ("metadata.csv", "metadata.jsonl", "metadata.parquet")
TRANSCRIPT_EXTS = (".txt", ".lab")
TRANS = ".trans.txt"  # LibriSpeech: SPEAKER-CHAPTER.trans.txt, one "UTTID TRANSCRIPT" line per clip
SPLITS = {"train": ("train",), "eval": ("val", "validation", "test")}  # eval: the first one present


@dataclass(frozen=True)
class FolderSpec:
    """How a recipe reads a folder: the media ``kind`` and the table columns its files (``path``), class sub-folders
    (``label``) and transcripts (``text``) fill; an empty name: the recipe has no such column."""

    kind: str
    path: str
    label: str = ""
    text: str = ""


def read_table(source: str, key: str, folder: Optional[FolderSpec] = None,
               counters: Optional[dict[str, int]] = None, loader: Callable[[str, str], Any] = load_table) -> Any:
    """``source`` as a ``datasets.Dataset``: a folder through ``folder_table`` (when the recipe reads folders:
    ``folder``; one with split sub-folders: its train and eval splits' rows together), else a table file through
    ``loader(path, key)`` (``load_table``, or a recipe's own format on top of it)."""
    import datasets

    if folder is None or not os.path.isdir(source):
        return loader(source, key)
    counters = counters if counters is not None else {}
    split = split_folders(source)
    if split is None:
        return folder_table(source, key, folder, counters)
    parts = [folder_table(p, key, folder, counters).remove_columns([ROW]) for p in split if p]
    return with_rows(datasets.concatenate_datasets(parts), f"{key}={source}")


def split_folders(root: str) -> Optional[tuple[str, str]]:
    """(train folder, eval folder or '') when ``root`` holds a ``train/`` sub-folder, else None."""
    if not os.path.isdir(os.path.join(root, "train")):
        return None
    found = [os.path.join(root, n) for n in SPLITS["eval"] if os.path.isdir(os.path.join(root, n))]
    return os.path.join(root, "train"), found[0] if found else ""


def folder_table(root: str, key: str, spec: FolderSpec, counters: dict[str, int]) -> Any:
    """The table of one folder (the module's layouts), with absolute file paths in ``spec.path`` and the row
    numbers ``load_table`` gives (a metadata file's own rows; else the sorted files' positions)."""
    import datasets

    meta = next((os.path.join(root, n) for n in METADATA if os.path.isfile(os.path.join(root, n))), None)
    if meta is not None:
        return _metadata_table(root, meta, key, spec)
    if spec.label:
        paths, values, column = *_class_folders(root, key, spec.kind, counters), spec.label
    elif spec.text and spec.kind == "audio":
        paths, values, column = *_transcribed_files(root, key, counters), spec.text
    else:
        raise DataError(f"{key}={root}: a folder without {METADATA[0]}; this recipe reads a folder with a metadata "
                        f"file (file_name + its columns) or a table file here")
    return with_rows(datasets.Dataset.from_dict({spec.path: paths, column: values}), f"{key}={root}")


def _metadata_table(root: str, meta: str, key: str, spec: FolderSpec) -> Any:
    """A metadata file's rows, ``file_name`` resolved against the folder into ``spec.path``."""
    where = f"{key}={root}: {os.path.basename(meta)}"
    ds = load_table(meta, where)
    require_columns(ds, ["file_name"], meta, hint="a folder's metadata file names each file in 'file_name'")
    if spec.text and spec.text not in ds.column_names and "transcription" in ds.column_names:
        ds = ds.rename_column("transcription", spec.text)
    if spec.path != "file_name" and spec.path in ds.column_names:
        raise DataError(f"{meta}: has both 'file_name' and {spec.path!r}; a folder's metadata names its files in "
                        f"'file_name' alone")
    paths = [os.path.join(root, str(p)) if p else "" for p in ds["file_name"]]  # empty cells: the recipe names them
    return ds.remove_columns(["file_name"]).add_column(spec.path, paths)


def _visible(entries: list[str]) -> list[str]:
    return sorted(e for e in entries if not e.startswith("."))


def walk_files(root: str) -> Iterator[str]:
    """Every file under ``root`` (symbolic links followed), sorted, hidden entries left out."""
    for top, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = _visible(dirs)
        yield from (os.path.join(top, f) for f in _visible(files))


def _ignored(counters: dict[str, int], what: str, names: list[str], root: str) -> None:
    if names:
        counters[what] = counters.get(what, 0) + len(names)
        shown = ", ".join(os.path.relpath(n, root) for n in names[:5])
        more = " ..." if len(names) > 5 else ""
        log.warning("%s: %d file(s) ignored (%s): %s%s", root, len(names), what, shown, more)


def _class_folders(root: str, key: str, kind: str, counters: dict[str, int]) -> tuple[list[str], list[str]]:
    """(file paths, class names) of ``root/<class>/**/<file>``, classes and files sorted."""
    exts, entries = EXTS[kind], _visible(os.listdir(root))
    classes = [c for c in entries if os.path.isdir(os.path.join(root, c))]
    if not classes:
        raise DataError(f"{key}={root}: no class sub-folders; a folder of {kind}s is read as {root}/<class>/<file> "
                        f"(one sub-folder per class, files ending in {', '.join(exts)}), or give a table file")
    paths, labels, other = [], [], []
    for c in classes:
        files = list(walk_files(os.path.join(root, c)))
        media = [f for f in files if f.lower().endswith(exts)]
        if not media:
            raise DataError(f"{key}={root}: class folder {os.path.join(root, c)} holds no {kind} files "
                            f"({', '.join(exts)}); remove it or add its {kind}s")
        other += [f for f in files if not f.lower().endswith(exts)]
        paths += media
        labels += [c] * len(media)
    loose = [os.path.join(root, f) for f in entries if f not in classes and f not in METADATA]
    _ignored(counters, f"ignored_non_{kind}_files", other, root)
    _ignored(counters, "ignored_files_outside_class_folders", loose, root)
    return paths, labels


def _transcribed_files(root: str, key: str, counters: dict[str, int]) -> tuple[list[str], list[str]]:
    """(audio paths, transcripts) of audio files with a ``.txt`` / ``.lab`` beside them or listed in a LibriSpeech
    ``*.trans.txt`` of their directory ('' where there is none; a listed clip without its file: its expected path)."""
    files = list(walk_files(root))
    audio = [f for f in files if f.lower().endswith(EXTS["audio"])]
    trans_files = [f for f in files if f.endswith(TRANS)]
    listed = _librispeech_transcripts(trans_files)
    if not audio and not listed:
        raise DataError(f"{key}={root}: no audio files ({', '.join(EXTS['audio'])}) and no "
                        f"{' / '.join(METADATA)}; an audio folder holds clips with a transcript beside each "
                        f"(clip.wav + clip.txt or clip.lab), LibriSpeech's SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt "
                        f"beside UTTID.flac, or a metadata.csv with file_name and transcription")
    by_stem = {os.path.splitext(f)[0]: f for f in audio}
    missing = [stem + ".flac" for stem in listed if stem not in by_stem]  # the recipe names (or counts) each
    paths = audio + missing
    texts = [listed[os.path.splitext(f)[0]] if os.path.splitext(f)[0] in listed else _transcript(f) for f in paths]
    transcripts = {os.path.splitext(f)[0] + e for f in audio for e in TRANSCRIPT_EXTS} | set(trans_files)
    _ignored(counters, "ignored_non_audio_files", [f for f in files if f not in transcripts and f not in audio
                                                   and os.path.basename(f) not in METADATA], root)
    return paths, texts


def _librispeech_transcripts(trans_files: list[str]) -> dict[str, str]:
    """{clip path without extension: transcript} from LibriSpeech ``*.trans.txt`` files (``UTTID TRANSCRIPT`` lines;
    the clip is ``UTTID.<ext>`` in the file's directory); an utterance listed twice is an error naming file and line."""
    out: dict[str, str] = {}
    for path in trans_files:
        try:
            with open(path, encoding="utf-8-sig") as f:
                lines = f.read().splitlines()
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: transcript list is not UTF-8 text ({err})") from None
        for n, line in enumerate(lines, 1):
            parts = line.split(maxsplit=1)
            if not parts:
                continue
            stem = os.path.join(os.path.dirname(path), parts[0])
            if stem in out:
                raise DataError(f"{path}: line {n}: utterance {parts[0]!r} is listed twice (LibriSpeech lists each "
                                f"UTTID once, as 'UTTID TRANSCRIPT')")
            out[stem] = " ".join(parts[1].split()) if len(parts) > 1 else ""
    return out


def _transcript(audio: str) -> str:
    """The text of ``clip.txt`` (else ``clip.lab``) beside ``audio``, whitespace collapsed; '' when neither exists."""
    stem = os.path.splitext(audio)[0]
    for ext in TRANSCRIPT_EXTS:
        if os.path.isfile(stem + ext):
            try:
                with open(stem + ext, encoding="utf-8-sig") as f:
                    return " ".join(f.read().split())
            except UnicodeDecodeError as err:
                raise DataError(f"{stem + ext}: transcript is not UTF-8 text ({err})") from None
    return ""


def tree_identity(root: str) -> str:
    """A digest of every file under ``root`` (relative path, size, modification time): any added, removed or
    changed file changes it (what ``table_cache.file_identity`` records for a folder)."""
    h = hashlib.blake2b(digest_size=16)
    for path in walk_files(root):
        st = os.stat(path)
        h.update(json.dumps([os.path.relpath(path, root), st.st_size, st.st_mtime_ns]).encode())
    return h.hexdigest()


__all__ = ["EXTS", "FolderSpec", "folder_table", "read_table", "split_folders", "tree_identity", "walk_files"]
