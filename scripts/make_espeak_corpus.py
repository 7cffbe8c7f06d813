"""Build a small real spoken-phrase corpus with Debian's ``espeak-ng`` speech synthesiser.

    apt-get install -y espeak-ng
    python scripts/make_espeak_corpus.py data/espeak_words
    mm-ptft train recipes/speech_recognition/tiny.yaml data.generate=null \\
        data.train_file=data/espeak_words/train.csv data.eval_file=data/espeak_words/eval.csv ...

Phrases of a few words from a small vocabulary are spoken by several voices (accents x voice
variants) at several speeds and pitches; espeak's 22.05 kHz output is resampled with torchaudio to
``--sample-rate`` and written as 16-bit WAV. ``train.csv``/``eval.csv`` (columns audio, text, voice;
audio paths relative to the CSV) are split BY VOICE, so the eval speakers are unseen in training.
See data_cards/espeak_words.md.
"""
from __future__ import annotations

import argparse
import csv
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WORDS = ("zero one two three four five six seven eight nine ten red green blue yellow black white "
         "left right up down stop go yes no on off open close cat dog house tree car ball book "
         "small big fast slow turn find play").split()
VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbcwmd",
          "en-us+f2", "en-gb+m3", "en-us+m5", "en-gb+f4"]
EVAL_VOICES = ["en-gb-x-gbclan", "en-us+f3"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--phrases", type=int, default=250, help="phrases per voice")
    p.add_argument("--voices", nargs="+", default=VOICES + EVAL_VOICES, help="espeak-ng voices (-v)")
    p.add_argument("--eval-voices", nargs="+", default=EVAL_VOICES, help="voices held out for eval")
    p.add_argument("--speeds", nargs="+", type=int, default=[130, 150, 170, 190], help="words per minute (-s)")
    p.add_argument("--pitch", nargs=2, type=int, default=[30, 70], help="pitch range (-p, 0-99)")
    p.add_argument("--words", nargs="+", default=WORDS, help="vocabulary the phrases are drawn from")
    p.add_argument("--max-words", type=int, default=3, help="words per phrase: 1 to this")
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def speak(text: str, voice: str, speed: int, pitch: int, wav: Path) -> None:
    """Synthesise ``text`` to ``wav`` (espeak-ng writes 22.05 kHz mono 16-bit)."""
    cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(wav), text]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0 or not wav.exists():
        raise RuntimeError(f"espeak-ng failed for voice {voice!r}: {res.stderr.strip()}")


def resample_to(src: Path, dst: Path, rate: int) -> None:
    """Read with soundfile, resample with torchaudio, write 16-bit PCM."""
    import soundfile as sf
    import torch
    import torchaudio

    data, src_rate = sf.read(str(src), dtype="float32", always_2d=True)  # (T, C)
    wav = torch.from_numpy(data).mean(1)  # (T,)
    wav = torchaudio.functional.resample(wav, src_rate, rate)  # (T * rate / src_rate,)
    sf.write(str(dst), wav.clamp(-1, 1).numpy(), rate, subtype="PCM_16")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if shutil.which("espeak-ng") is None:
        print("espeak-ng is not installed: apt-get install -y espeak-ng", file=sys.stderr)
        return 1
    unknown = sorted(set(args.eval_voices) - set(args.voices))
    if unknown:
        print(f"--eval-voices {unknown} are not among --voices", file=sys.stderr)
        return 1
    rng = random.Random(args.seed)
    rows: dict[str, list[tuple[str, str, str]]] = {"train": [], "eval": []}
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        for voice in args.voices:
            split = "eval" if voice in args.eval_voices else "train"
            (args.out_dir / split).mkdir(parents=True, exist_ok=True)
            for _ in range(args.phrases):
                text = " ".join(rng.choice(args.words) for _ in range(rng.randint(1, args.max_words)))
                speak(text, voice, rng.choice(args.speeds), rng.randint(*args.pitch), raw)
                rel = f"{split}/{len(rows[split]):05d}.wav"
                resample_to(raw, args.out_dir / rel, args.sample_rate)
                rows[split].append((rel, text, voice))
    for split, items in rows.items():
        with open(args.out_dir / f"{split}.csv", "w", newline="") as f:
            csv.writer(f).writerows([("audio", "text", "voice"), *items])
        print(f"{split}: {len(items)} clips -> {args.out_dir / (split + '.csv')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
