"""Generated "tone speech" for the CPU speech-recognition recipe: no download, no system package.

Each character is a short harmonic tone with its own pitch and timbre; words are characters in a
row, phrases are words separated by pauses. Every "speaker" shifts pitch, tempo and loudness and
has its own noise level, and eval speakers are disjoint from training ones, so the model must learn
the character sequence (what CTC does on real speech) rather than memorise clips.
"""
from __future__ import annotations

import csv
import os
import random
from dataclasses import dataclass

import numpy as np

from mm_ptft.data.generated import GENERATORS

WORDS = ("cat dog sun red big top map pen cup box hat net bee egg tea lid "
         "moon tree fish bird star blue green book lamp door").split()


@dataclass
class Speaker:
    pitch: float  # multiplies every character's base frequency
    tempo: float  # multiplies character and pause durations
    noise: float  # white-noise standard deviation (signal peak ~0.5)
    tilt: float  # exponent of the harmonic roll-off: brighter or darker voice


def _char_sound(ch: str, alphabet: str) -> tuple[float, float]:
    """(base frequency, relative pitch glide) of a character: 3 glides (rising, flat, falling)
    times pitch steps of 25 % from 220 Hz, far apart compared with speakers' pitch shifts."""
    i = alphabet.index(ch)
    return 220.0 * 1.25 ** (i // 3), 0.25 * (i % 3 - 1)


def _tone(freq: float, seconds: float, rate: int, spk: Speaker, rng: np.random.Generator, glide: float) -> np.ndarray:
    """A harmonic tone with a Hann envelope and a small pitch glide (formant-like movement)."""
    n = max(int(seconds * rate), 8)
    t = np.arange(n) / rate
    f = freq * spk.pitch * (1 + glide * t / max(seconds, 1e-3))  # (n,)
    phase = 2 * np.pi * np.cumsum(f) / rate
    wave = sum(np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / k ** spk.tilt for k in (1, 2, 3))
    return (0.5 * wave / 1.6 * np.hanning(n)).astype(np.float32)


def render(text: str, rate: int, spk: Speaker, rng: np.random.Generator, alphabet: str) -> np.ndarray:
    """Waveform (T,) of ``text``: one tone per character, pauses between words and around the phrase."""
    parts = [np.zeros(int(rng.uniform(0.01, 0.03) * rate), np.float32)]
    for w, word in enumerate(text.split()):
        if w:
            parts.append(np.zeros(int(rng.uniform(0.06, 0.1) * spk.tempo * rate), np.float32))
        for ch in word:
            freq, glide = _char_sound(ch, alphabet)
            dur = rng.uniform(0.06, 0.08) * spk.tempo
            parts.append(_tone(freq * rng.uniform(0.98, 1.02), dur, rate, spk, rng, glide))
    parts.append(np.zeros(int(rng.uniform(0.01, 0.03) * rate), np.float32))
    wav = np.concatenate(parts)
    return (wav + rng.normal(0, spk.noise, wav.shape)).astype(np.float32)


def _speaker(rng: np.random.Generator) -> Speaker:
    return Speaker(pitch=rng.uniform(0.94, 1.06), tempo=rng.uniform(0.85, 1.15), noise=rng.uniform(0.005, 0.03),
                   tilt=rng.uniform(0.8, 1.6))


LAYOUTS = ("table", "metadata", "transcripts", "librispeech")


@GENERATORS.register()
def tone_speech(out_dir: str, n_train: int = 600, n_eval: int = 100, sample_rate: int = 8000,
                max_words: int = 3, train_speakers: int = 12, eval_speakers: int = 4,
                seed: int = 0, layout: str = "table") -> dict[str, str]:
    """Tone-rendered phrases of 1..``max_words`` words as wav files in ``train/`` and ``eval/``; eval speakers are
    unseen. ``layout`` says how the transcripts are kept: ``table``: ``train.csv``/``eval.csv`` (columns ``audio`` =
    path relative to the CSV, ``text``, ``speaker``); ``metadata``: a ``metadata.csv`` in each folder (``file_name``,
    ``transcription``, ``speaker``: datasets' audiofolder); ``transcripts``: ``<clip>.txt`` beside each clip;
    ``librispeech``: ``SPEAKER/CHAPTER/SPEAKER-CHAPTER-NNNN.flac`` with ``SPEAKER-CHAPTER.trans.txt`` (upper-case
    ``UTTID TRANSCRIPT`` lines) as LibriSpeech keeps them. The folder layouts give the folders as ``train_file`` /
    ``eval_file``."""
    if layout not in LAYOUTS:
        raise ValueError(f"data.generate.layout={layout!r}: choose one of {', '.join(LAYOUTS)}")
    import soundfile as sf

    rng, pick = np.random.default_rng(seed), random.Random(seed)
    alphabet = "".join(sorted({c for w in WORDS for c in w}))
    speakers = [_speaker(rng) for _ in range(train_speakers + eval_speakers)]
    paths = {}
    for split, n, spk_ids in (("train", n_train, range(train_speakers)),
                              ("eval", n_eval, range(train_speakers, train_speakers + eval_speakers))):
        os.makedirs(os.path.join(out_dir, split), exist_ok=True)
        rows = []
        for i in range(n):
            s = pick.choice(list(spk_ids))
            text = " ".join(pick.choice(WORDS) for _ in range(pick.randint(1, max_words)))
            rel = f"{split}/{i:05d}.wav" if layout != "librispeech" else f"{split}/{s}/{100 + s}/{s}-{100 + s}-{i:04d}.flac"
            os.makedirs(os.path.dirname(os.path.join(out_dir, rel)), exist_ok=True)
            sf.write(os.path.join(out_dir, rel), render(text, sample_rate, speakers[s], rng, alphabet), sample_rate)
            rows.append((rel, text, f"spk{s:02d}"))
        paths[f"{split}_file"] = _keep_transcripts(out_dir, split, rows, layout)
    return paths


def _keep_transcripts(out_dir: str, split: str, rows: list[tuple[str, str, str]], layout: str) -> str:
    """Write ``rows`` (path relative to ``out_dir``, transcript, speaker) as ``layout`` says; the split's data path."""
    if layout == "librispeech":
        lists: dict[str, list[str]] = {}
        for rel, text, _ in rows:
            clip = os.path.join(out_dir, rel)
            utt = os.path.splitext(os.path.basename(clip))[0]
            trans = os.path.join(os.path.dirname(clip), utt.rsplit("-", 1)[0] + ".trans.txt")
            lists.setdefault(trans, []).append(f"{utt} {text.upper()}\n")
        for trans, lines in lists.items():
            with open(trans, "w") as f:
                f.writelines(sorted(lines))
        return os.path.join(out_dir, split)
    if layout == "transcripts":
        for rel, text, _ in rows:
            with open(os.path.join(out_dir, os.path.splitext(rel)[0] + ".txt"), "w") as f:
                f.write(text + "\n")
        return os.path.join(out_dir, split)
    path = os.path.join(out_dir, f"{split}.csv") if layout == "table" else os.path.join(out_dir, split, "metadata.csv")
    header = ("audio", "text", "speaker") if layout == "table" else ("file_name", "transcription", "speaker")
    strip = 0 if layout == "table" else len(split) + 1  # metadata names files relative to its own folder
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *((rel[strip:], text, spk) for rel, text, spk in rows)])
    return path if layout == "table" else os.path.dirname(path)
