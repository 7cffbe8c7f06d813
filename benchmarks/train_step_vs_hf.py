"""The training step alone, mm_ptft vs Hugging Face ``Trainer``, on the real all-MiniLM-L6-v2 (issue 31): the same
fixed batches (the first ``--steps`` length-grouped batches of the MiniLM benchmark's training rows, padded by
each side's own collator) fed to each side's whole training loop (``Trainer.fit`` / ``Trainer.train``: loader,
collate, forward, backward, clipping, fused AdamW, schedule, callbacks), timed in the process's CPU seconds
(``time.process_time``) between the end of step ``--warmup`` and the last step, so that other jobs' load on a
shared machine counts on neither side; wall seconds beside. One torch thread (``--threads``) on both sides, the
sides alternated (ABAB…) ``--reps`` times in one process. ``--profile``: a ``torch.profiler`` table of each
side's ops over the window (self CPU time) instead.

    python benchmarks/train_step_vs_hf.py [--steps 30] [--warmup 5] [--reps 3] [--threads 1] [--profile]
        [--sides 'mm_ptft,HF Trainer,mm_ptft dense embedding grads']
"""
from __future__ import annotations

import argparse
import functools
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.minilm import BATCH, LR, MAX_LENGTH, RECIPE, minilm_overrides, minilm_path, text_rows  # noqa: E402
from mm_ptft.contracts import Callback  # noqa: E402
from mm_ptft.run import load_config  # noqa: E402
from mm_ptft.tasks.text_classification import TextClassification  # noqa: E402
from mm_ptft.train.trainer import Trainer  # noqa: E402


class CPUClock:
    """Process CPU seconds, wall seconds and minor page faults at the end of every optimizer step."""

    def __init__(self, warmup: int, profile: bool) -> None:
        self.warmup, self.rows, self.prof = warmup, [], None
        self.profile = profile

    def stamp(self) -> None:
        self.rows.append((time.process_time(), time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt))
        if self.profile and len(self.rows) == self.warmup:
            self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.prof.__enter__()

    def figures(self) -> dict[str, float]:
        (c0, w0, f0), (c1, w1, f1) = self.rows[self.warmup - 1], self.rows[-1]
        n = len(self.rows) - self.warmup
        return {"cpu_ms_per_step": 1000 * (c1 - c0) / n, "wall_ms_per_step": 1000 * (w1 - w0) / n,
                "minflt_per_step": (f1 - f0) / n}

    def stop_profile(self) -> None:
        if self.prof is not None:
            self.prof.__exit__(None, None, None)


class OursClock(Callback):
    def __init__(self, clock: CPUClock) -> None:
        self.clock = clock

    def on_step_end(self, trainer: Any) -> None:
        self.clock.stamp()


def fixed_batches(prepared: Any, steps: int) -> list[list[int]]:
    """The first ``steps`` batches our length-grouped sampler draws for seed 0 (row indices)."""
    from mm_ptft.train.samplers import GroupedBatchSampler

    lengths = prepared.train_lengths
    return list(GroupedBatchSampler(len(lengths), BATCH, lengths, seed=0))[:steps]


def run_ours(tmp: Path, data: dict[str, str], batches: list[list[int]], clock: CPUClock, precision: str,
             extra: tuple[str, ...] = ()) -> None:
    out = tmp / f"ours_{time.time_ns()}"
    cfg = load_config(RECIPE, [*minilm_overrides(str(out), data, 0, precision), f"train.max_steps={len(batches)}",
                               "train.report=false", "train.log_every=100000", "train.eval_every=100000", *extra])
    p = TextClassification.prepare(cfg)
    trainer = Trainer.from_prepared(p, cfg, callbacks=[OursClock(clock)])
    trainer.eval_loader = None  # the step alone: no final evaluation
    trainer.train_loader.batch_sampler._all_batches = lambda: batches  # the same batches as HF's side
    trainer.fit()
    clock.stop_profile()


def run_hf(tmp: Path, data: dict[str, str], batches: list[list[int]], clock: CPUClock, precision: str) -> None:
    import csv

    from torch.utils.data import SequentialSampler
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer as
                              HFTrainer, TrainerCallback, TrainingArguments)

    tok = AutoTokenizer.from_pretrained(minilm_path())
    table = list(csv.DictReader(open(data["train_file"])))
    labels: dict[str, int] = {}
    enc = tok([r["text"] for r in table], truncation=True, max_length=MAX_LENGTH)
    rows = [{"input_ids": i, "attention_mask": m, "labels": labels.setdefault(r["label"], len(labels))}
            for i, m, r in zip(enc["input_ids"], enc["attention_mask"], table)]
    ordered = [rows[j] for b in batches for j in b]  # read in order: HF's batches are ours

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.stamp()

    class Fixed(HFTrainer):
        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(ordered)

    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=len(labels))
    targs = TrainingArguments(
        output_dir=str(tmp / f"hf_{time.time_ns()}"), max_steps=len(batches), per_device_train_batch_size=BATCH,
        learning_rate=LR, weight_decay=0.01, lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0,
        logging_steps=10, save_strategy="no", eval_strategy="no", report_to=[], use_cpu=True,
        bf16=precision == "bf16", seed=0, disable_tqdm=True)
    Fixed(model=model, args=targs, train_dataset=ordered, data_collator=DataCollatorWithPadding(tok),
          callbacks=[Stamp()]).train()
    clock.stop_profile()


#: side → (its run, the precision it is given for --precision fp32 / bf16)
SIDES = {"mm_ptft": (run_ours, {"fp32": "fp32", "bf16": "auto"}),
         "HF Trainer": (run_hf, {"fp32": "fp32", "bf16": "bf16"}),
         "mm_ptft dense embedding grads": (functools.partial(run_ours, extra=("train.sparse_embedding_grads=false",)),
                                           {"fp32": "fp32", "bf16": "auto"})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--sides", default="mm_ptft,HF Trainer")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    figures: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        data = text_rows(tmp / "data")
        cfg = load_config(RECIPE, minilm_overrides(str(tmp / "probe"), data, 0, "fp32"))
        batches = fixed_batches(TextClassification.prepare(cfg), a.steps)
        for rep in range(a.reps):
            names = a.sides.split(",")
            for name in names[rep % 2:] + names[: rep % 2]:
                run, prec = SIDES[name]
                clock = CPUClock(a.warmup, a.profile)
                run(tmp, data, batches, clock, prec[a.precision])
                figures.setdefault(name, []).append(clock.figures())
                print(f"rep {rep} {name}: " + " ".join(f"{k}={v:.1f}" for k, v in figures[name][-1].items()),
                      flush=True)
                if clock.prof is not None:
                    print(clock.prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30), flush=True)
    for name, rows in figures.items():
        print(name, " ".join(f"{k}={statistics.mean(r[k] for r in rows):.1f}±"
                             f"{statistics.stdev(r[k] for r in rows) if len(rows) > 1 else 0:.1f}" for k in rows[0]))


if __name__ == "__main__":
    main()
