"""CTC decoding with an n-gram word LM (issue 26): WER/CER of greedy vs beam (no LM) vs beam + a trigram LM built
from the training transcripts (``mm-ptft build-lm``), and decode time per utterance on CPU, on the generated tone
speech of ``recipes/speech_recognition/tiny.yaml`` and on espeak-ng speech of unseen voices (where espeak-ng is
installed; ``scripts/make_espeak_corpus.py``, the integration test's voices).

    python benchmarks/ctc_lm.py [--steps 300] [--espeak-steps 600] [--phrases 40] [--seeds 2]
    python -m benchmarks.run_all --only ctc_lm [--quick]

Per seed and corpus: train tiny.yaml (its settings; ``train.max_steps`` as given, warm-up a tenth of it), build the LM, run the model once
over the eval split, decode with each decoder (WER/CER through the recipe's metric). Timing: every eval utterance
alone (batch 1, 1 torch thread): the model's forward, then each decoder on its log-probs; per-utterance mean of
decode alone and of forward + decode. beam+LM uses fixed ``lm_weight=1, word_score=0`` (not tuned on the eval
split); the tuned row is ``mm-ptft tune-lm``'s best on the same eval split (optimistic by construction).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from benchmarks.common import fmt, mean_sd, section  # noqa: E402

RECIPE = Path(ROOT) / "recipes" / "speech_recognition" / "tiny.yaml"
ESPEAK_TRAIN = ["en-us", "en-gb", "en-gb-scotland", "en-029", "en-us+f2", "en-gb+m3"]  # as the integration test
ESPEAK_EVAL = ["en-gb-x-rp+f4", "en-us-nyc+m5"]
FIXED_LM = {"lm_weight": 1.0, "word_score": 0.0}
#: a 2-core CPU budget (tiny.yaml itself trains 2000 steps): models far from converged, where an LM matters most
STEPS, ESPEAK_STEPS, PHRASES = 300, 600, 40


def espeak_corpus(root: Path, phrases: int) -> list[str]:
    """The integration test's espeak-ng corpus (6 training voices, 2 unseen eval voices, 22.05 kHz)."""
    subprocess.run([sys.executable, str(Path(ROOT) / "scripts" / "make_espeak_corpus.py"), str(root), "--phrases",
                    str(phrases), "--sample-rate", "22050", "--voices", *ESPEAK_TRAIN, *ESPEAK_EVAL, "--eval-voices",
                    *ESPEAK_EVAL], check=True, capture_output=True)
    return ["data.generate=null", f"data.train_file={root / 'train.csv'}", f"data.eval_file={root / 'eval.csv'}"]


def per_utterance_ms(prepared: Any, decoders: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Mean ms per eval utterance (batch 1): the forward alone, and each decoder alone."""
    task, ds = prepared.task, prepared.eval_data
    torch.set_num_threads(1)  # training set its own thread count (train.threads)
    forward, decode = 0.0, {name: 0.0 for name in decoders}
    with torch.no_grad():
        for i in range(len(ds)):
            batch = prepared.collate([ds[i]])
            t0 = time.perf_counter()
            out = task({k: v for k, v in batch.items()})
            forward += time.perf_counter() - t0
            for name, tr in decoders.items():
                t0 = time.perf_counter()
                tr(out["log_probs"], out["frame_lengths"])
                decode[name] += time.perf_counter() - t0
    n = len(ds)
    return {name: {"decode_ms": 1000 * d / n, "total_ms": 1000 * (forward + d) / n} for name, d in decode.items()}


def one_run(corpus: str, data_args: Sequence[str], steps: int, seed: int, work: Path) -> dict[str, Any]:
    from mm_ptft.heads.ctc import Transcriber
    from mm_ptft.run import load_config, load_run, train
    from mm_ptft.run.speech_lm import build_lm_from_config, eval_log_probs, score, tune_lm

    out = work / f"{corpus}_{seed}"
    train(load_config(RECIPE, [f"output_dir={out}", f"seed={seed}", f"train.max_steps={steps}", "train.report=false",
                               "train.num_workers=0", f"train.eval_every={steps}",
                               f"sched.warmup_steps={max(1, steps // 10)}", *data_args]))
    lm = build_lm_from_config(out, work / f"{corpus}_{seed}.arpa", order=3).path
    cfg, prepared, _ = load_run(out)
    vocab, m = prepared.task.vocab, cfg.model
    specs = {"greedy": "greedy", "beam": "beam", "beam+LM": {"name": "beam", "lm": str(lm), **FIXED_LM}}
    decoders = {name: Transcriber(vocab, spec, m.beam_size, m.lexicon) for name, spec in specs.items()}
    batches = eval_log_probs(prepared)
    quality = {name: score(tr, batches) for name, tr in decoders.items()}
    timing = per_utterance_ms(prepared, decoders)
    tuned = tune_lm(out, lm, apply=False)["best"]
    quality["beam+LM tuned on eval"] = {"wer": tuned["wer"], "cer": tuned["cer"]}
    return {"quality": quality, "timing": timing, "utterances": len(prepared.eval_data),
            "tuned": {k: tuned[k] for k in ("lm_weight", "word_score")}}


def rows_of(corpus: str, runs: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for name in runs[0]["quality"]:
        q = [r["quality"][name] for r in runs]
        t = [r["timing"].get(name) for r in runs]
        timed = all(x is not None for x in t)
        cells = ["", "", "", ""]
        if timed:
            ratio = {k: [x[k] / r["timing"]["greedy"][k] for x, r in zip(t, runs)] for k in ("decode_ms", "total_ms")}
            cells = [fmt([x["decode_ms"] for x in t], 2), fmt(ratio["decode_ms"], 1),
                     fmt([x["total_ms"] for x in t], 1), fmt(ratio["total_ms"], 2)]
        rows.append([corpus, name, fmt([x["wer"] for x in q]), fmt([x["cer"] for x in q]), *cells])
    return rows


def compare(quick: bool = False, seeds: int = 2, device: str = "", steps: int = 0, espeak_steps: int = 0,
            phrases: int = 0) -> dict[str, Any]:
    steps, espeak_steps = steps or (20 if quick else STEPS), espeak_steps or (20 if quick else ESPEAK_STEPS)
    phrases = phrases or (5 if quick else PHRASES)
    raw: dict[str, list] = {}
    notes = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpora = {"tone speech (tiny.yaml)": ([], steps)}
        if shutil.which("espeak-ng"):
            corpora["espeak-ng, unseen voices"] = (espeak_corpus(work / "espeak", phrases), espeak_steps)
        else:
            notes.append("espeak-ng is not installed (apt-get install espeak-ng): its rows are missing")
        for corpus, (args, n_steps) in corpora.items():
            raw[corpus] = [one_run(corpus.split()[0], args, n_steps, seed, work) for seed in range(seeds)]
            notes.append(f"{corpus}: {n_steps} training steps, {raw[corpus][0]['utterances']} eval utterances; "
                         f"tuned best per seed {[r['tuned'] for r in raw[corpus]]}")
    rows = [row for corpus, runs in raw.items() for row in rows_of(corpus, runs)]
    for k, what in (("total_ms", "forward included"), ("decode_ms", "decoding alone")):
        lm_ratio = [r["timing"]["beam+LM"][k] / r["timing"]["greedy"][k] for runs in raw.values() for r in runs]
        notes.append(f"target (issue 26) beam+LM within 3x greedy per utterance on CPU, {what}: "
                     f"{mean_sd(lm_ratio)[0]:.2f}x mean, {max(lm_ratio):.2f}x worst")
    notes.append("decode alone, greedy is an argmax over frames; beam size 20 (model.beam_size), flashlight "
                 "(torchaudio ctc_decoder), trigram from mm-ptft build-lm (absolute discounting D=0.5)")
    return section("CTC + n-gram LM decoding (issue 26): greedy vs beam vs beam+LM",
                   "per seed: train tiny.yaml, build a trigram from the training transcripts, decode the eval split "
                   "with each decoder (WER/CER), time every eval utterance alone (batch 1, 1 thread, CPU)",
                   ["corpus", "decoder", "WER", "CER", "decode ms/utt", "x greedy (decode)", "forward+decode ms/utt",
                    "x greedy (forward+decode)"],
                   rows, seeds=seeds, quick=quick, notes=notes, raw=raw)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--espeak-steps", type=int, default=ESPEAK_STEPS)
    ap.add_argument("--phrases", type=int, default=PHRASES, help="espeak phrases per voice")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the section here")
    args = ap.parse_args(argv)
    from benchmarks.common import render

    sec = compare(seeds=args.seeds, steps=args.steps, espeak_steps=args.espeak_steps, phrases=args.phrases)
    print(render(sec))
    if args.json:
        args.json.write_text(json.dumps(sec, indent=1))


if __name__ == "__main__":
    main()
