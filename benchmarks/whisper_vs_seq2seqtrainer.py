"""Whisper fine-tuning: mm_ptft's ``whisper_asr`` recipe vs transformers' ``Seq2SeqTrainer`` on the same random-init
tiny ``WhisperForConditionalGeneration``, the same tone-speech clips, labels, steps and hyperparameters, in one
process, seeds interleaved.

Both trainers run exactly N optimizer steps and are timed by ``benchmarks.common.StepClock`` from outside (an
mm_ptft ``Callback`` / an HF ``TrainerCallback`` at each step end) over the same window (w, N]. The HF side is
fed two ways: as ``run_speech_recognition_seq2seq.py`` feeds it (log-mel features computed once before training,
its ``dataset.map``: "precomputed") and from the same on-the-fly dataset mm_ptft trains on (each clip decoded and
featurised when the loader asks: "on the fly"), labels padded with -100 by a collator. mm_ptft always featurises in
its loader, in-process (``train.num_workers=0``) or in one worker process (``num_workers=1``, overlapping the
step): start-up and window differ in what they include: see the notes.

    python benchmarks/whisper_vs_seq2seqtrainer.py [--quick] [--seeds 3] [--device cpu|cuda] [--threads 1]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import torch
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (ClockCallback, StepClock, paired_rows, script_main, section,  # noqa: E402
                               throughput_rows, window_rule)
from mm_ptft.run import load_config  # noqa: E402
from mm_ptft.tasks.whisper_asr import WhisperASR  # noqa: E402
from mm_ptft.train.trainer import Trainer, seed_everything  # noqa: E402
from mm_ptft.types import AUDIO, IGNORE_INDEX, LABELS  # noqa: E402

SIZES = {"quick": {"n_train": 96, "n_eval": 16, "steps": 16, "warmup": 4, "d_model": 64},
         "full": {"n_train": 320, "n_eval": 32, "steps": 40, "warmup": 8, "d_model": 96}}


def prepare(out: str, args: Any, seed: int, workers: int = 0):
    cfg = load_config("recipes/whisper_asr/tiny.yaml", [f"train.num_workers={workers}",
        f"output_dir={out}", f"train.max_steps={args.steps}", f"train.batch_size={args.batch}",
        f"train.device={args.device}", f"optim.lr={args.lr}", "sched.warmup_steps=0", "train.report=false",
        "train.log_every=100000", f"train.eval_every={args.steps}", f"seed={seed}", "train.group_by_length=false",
        f"data.generate.n_train={args.n_train}", f"data.generate.n_eval={args.n_eval}",
        "data.augment.speed_factors=[]", "data.augment.freq_mask_width=0", "data.augment.time_mask_width=0",
        f"model.whisper.config.d_model={args.d_model}", f"model.whisper.config.encoder_ffn_dim={4 * args.d_model}",
        f"model.whisper.config.decoder_ffn_dim={4 * args.d_model}"])
    seed_everything(seed)
    return cfg, WhisperASR.prepare(cfg)


def run_ours(args: Any, clock: StepClock, seed: int, workers: int = 0) -> None:
    clock.begin()
    with tempfile.TemporaryDirectory() as out:
        cfg, p = prepare(out, args, seed, workers)
        clock.count_forward(p.task)
        Trainer.from_prepared(p, cfg, callbacks=[ClockCallback(clock)]).fit()
        clock.end()


class SpeechSeq2SeqCollator:
    """``run_speech_recognition_seq2seq.py``'s collator: features stacked, labels padded with -100."""

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        feats = torch.stack([r["input_features"] for r in rows])  # (B, F, N)
        width = max(len(r["labels"]) for r in rows)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)  # (B, L)
        for i, r in enumerate(rows):
            labels[i, : len(r["labels"])] = torch.tensor(r["labels"])
        return {"input_features": feats, "labels": labels}


class HFClock(TrainerCallback):
    def __init__(self, clock: StepClock) -> None:
        self.clock = clock

    def on_step_end(self, args, state, control, **kwargs):
        self.clock.stamp()


class OnTheFly(torch.utils.data.Dataset):
    """mm_ptft's clip dataset (decode + log-mel per access) under the HF collator's key names."""

    def __init__(self, data: Any) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, Any]:
        it = self.data[i]
        return {"input_features": it[AUDIO], "labels": it[LABELS]}


def run_hf(args: Any, clock: StepClock, seed: int, precompute: bool = True) -> None:
    clock.begin()
    with tempfile.TemporaryDirectory() as out:
        cfg, p = prepare(out, args, seed)
        model = p.task.whisper.model

        def rows(data):  # precompute: features computed once, as the HF example's dataset.map does
            return [OnTheFly(data)[i] for i in range(len(data))] if precompute else OnTheFly(data)

        targs = Seq2SeqTrainingArguments(
            output_dir=out, max_steps=args.steps, per_device_train_batch_size=args.batch,
            per_device_eval_batch_size=args.batch, learning_rate=args.lr, weight_decay=0.01, lr_scheduler_type="cosine",
            max_grad_norm=1.0, logging_steps=100000, save_strategy="no", eval_strategy="no", report_to=[],
            use_cpu=args.device == "cpu", seed=seed, disable_tqdm=True, predict_with_generate=True,
            generation_max_length=None, remove_unused_columns=False)
        clock.count_forward(model)
        trainer = Seq2SeqTrainer(model=model, args=targs, train_dataset=rows(p.train_data),
                                 eval_dataset=rows(p.eval_data), data_collator=SpeechSeq2SeqCollator(),
                                 callbacks=[HFClock(clock)])
        trainer.train()
        trainer.evaluate(max_new_tokens=cfg.generation.max_new_tokens)
        clock.end()


ARMS = {"mm_ptft whisper_asr": run_ours,
        "mm_ptft whisper_asr, 1 loader worker": partial(run_ours, workers=1),
        "transformers Seq2SeqTrainer, precomputed": run_hf,
        "transformers Seq2SeqTrainer, on the fly": partial(run_hf, precompute=False)}
OURS, HF = list(ARMS)[:2], list(ARMS)[2:]


def measure(args: Any, seeds: int) -> dict[str, list[dict[str, float]]]:
    """Both arms once per seed, their order alternating per seed (machine-load drift spreads over both)."""
    timings: dict[str, list[dict[str, float]]] = {name: [] for name in ARMS}
    names = list(ARMS)
    for seed in range(seeds):
        for name in names[seed % len(names):] + names[: seed % len(names)]:
            clock = StepClock(args.warmup, args.steps, args.device)
            ARMS[name](args, clock, seed)
            timings[name].append(clock.timing())
    return timings


def settings(quick: bool, device: str = "") -> argparse.Namespace:
    return argparse.Namespace(batch=16, lr=1e-3, device=device or ("cuda" if torch.cuda.is_available() else "cpu"),
                              **SIZES["quick" if quick else "full"])


def compare(quick: bool = False, seeds: int = 3, device: str = "") -> dict[str, Any]:
    args = settings(quick, device)
    t = measure(args, seeds)
    rows = throughput_rows(t)
    for ours, hf in ((OURS[0], HF[0]), (OURS[1], HF[0]), (OURS[0], HF[1])):
        rows += paired_rows(t[ours], t[hf], f"{ours} vs {hf.split(', ')[1]}")
    notes = [f"device {args.device}, fp32; random-init WhisperForConditionalGeneration d_model {args.d_model}, 2+2 "
             f"layers, 2 s window (200 log-mel frames), batch {args.batch}, {args.n_train} tone-speech clips, "
             f"{args.steps} steps, lr {args.lr}, no augmentation on either side",
             "HF precomputed: features computed before training (counted in its start-up), no per-step decoding; "
             "HF on the fly and mm_ptft: each clip decoded + featurised by the loader inside the window "
             "(HF's Trainer: in-process, dataloader_num_workers=0)",
             f"after s: both sides' final evaluation on {args.n_eval} clips with generation (mm_ptft also "
             "checkpoints and scores WER/CER)"]
    return section("issue-26: Whisper fine-tuning vs transformers Seq2SeqTrainer", window_rule(args.warmup, args.steps),
                   ["arm", "samples/s", "start-up s", "after s", "wall s"], rows, seeds=seeds, quick=quick,
                   notes=notes, raw={"timings": t})


def main() -> None:
    script_main(compare, __doc__.split("\n")[0])


if __name__ == "__main__":
    main()
