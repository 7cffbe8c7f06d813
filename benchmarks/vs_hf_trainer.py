"""Text-classification fine-tuning: mm_ptft vs Hugging Face ``Trainer`` on the same model, data, steps and
hyperparameters, in one process, seeds interleaved: mm_ptft defaults, HF defaults, and HF with
``train_sampling_strategy="group_by_length"`` (its best single-device setting).

Both trainers run exactly N optimizer steps and are timed by ``benchmarks.common.StepClock`` from outside
(an mm_ptft ``Callback`` / an HF ``TrainerCallback`` at each step end) over the same window (w, N];
start-up, the final evaluation and the whole run's wall time are reported separately, accuracy on the
same eval sentences as mean ± sd over seeds. Batches of varied length make samples/s depend on which batches
fall in the window (HF's and mm_ptft's samplers both put the longest batch at step 1, outside it), so the
tokens each step computes (padding included) are counted too: tokens/s over the same window, and the padded
tokens of the epoch and of the final evaluation on each side.

    python benchmarks/vs_hf_trainer.py [--quick] [--seeds 5] [--device cpu|cuda] [--threads 1]

Data: generated topic sentences of 4-32 words (data_cards/text_topics.md): randomly drawn batches
spend over half their tokens on padding, as on real text of varied length.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import DataCollatorWithPadding, TrainerCallback, TrainingArguments
from transformers import Trainer as HFTrainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (ClockCallback, StepClock, fmt, paired_rows, script_main, section,  # noqa: E402
                               throughput_rows, window_rule)
from mm_ptft.run import load_config  # noqa: E402
from mm_ptft.tasks.text_classification import TextClassification  # noqa: E402
from mm_ptft.train.trainer import Trainer, seed_everything  # noqa: E402

SIZES = {"quick": {"n_train": 640, "n_eval": 200, "epochs": 1, "warmup": 5, "hidden": 128, "layers": 2},
         "full": {"n_train": 2000, "n_eval": 1000, "epochs": 1, "warmup": 10, "hidden": 256, "layers": 4}}


def prepare(out: str, args: Any, seed: int):
    cfg = load_config("recipes/text_classification/tiny.yaml", [
        f"output_dir={out}", f"train.max_steps={args.steps}", f"train.batch_size={args.batch}", f"train.device={args.device}",
        f"optim.lr={args.lr}", "sched.warmup_steps=0", "train.report=false", "train.log_every=100000",
        f"train.eval_every={args.steps}", f"train.precision={args.precision}", f"seed={seed}",
        f"data.generate.n_train={args.n_train}", f"data.generate.n_eval={args.n_eval}",
        f"model.text.config.hidden_size={args.hidden}", f"model.text.config.num_hidden_layers={args.layers}",
        f"model.text.config.num_attention_heads={args.hidden // 64}", f"model.text.config.intermediate_size={4 * args.hidden}"])
    seed_everything(seed)
    return cfg, TextClassification.prepare(cfg)


def padding_fraction(prepared, batch: int) -> float:
    """Share of padded tokens in randomly drawn batches."""
    lengths = torch.tensor([len(r["text"]) for r in prepared.train_data.items])
    perm = lengths[torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0))]
    chunks = perm[: len(perm) // batch * batch].view(-1, batch)
    return float(1 - chunks.sum() / (chunks.max(1).values * batch).sum())


class TokenCount:
    """Tokens (padding included) and padded tokens of every forward of ``task``: per training step, and summed
    over the evaluation forwards. Both sides call the same task module with ``text`` / ``text_mask``."""

    def __init__(self, task: nn.Module) -> None:
        self.steps: list[int] = []  # tokens of each training forward (one per step)
        self.pad = {"train": 0, "eval": 0}
        task.register_forward_pre_hook(self.hook)

    def hook(self, module: nn.Module, args: tuple) -> None:
        mask = args[0]["text_mask"]  # (B, L), 1 = real token
        if module.training:
            self.steps.append(mask.numel())
        self.pad["train" if module.training else "eval"] += int(mask.numel() - mask.sum())

    def figures(self, clock: StepClock) -> dict[str, float]:
        w, n = clock.warmup, clock.steps
        return {"tokens_per_s": sum(self.steps[w:n]) / (clock.times[n - 1] - clock.times[w - 1]),
                "train_pad_tokens": self.pad["train"], "eval_pad_tokens": self.pad["eval"]}


def run_ours(args: Any, clock: StepClock, seed: int, strategy: str = "") -> float:
    """mm_ptft with its defaults (length-grouped batches); returns the final evaluation's accuracy."""
    clock.begin()
    with tempfile.TemporaryDirectory() as out:
        cfg, p = prepare(out, args, seed)
        clock.count_forward(p.task)
        clock.tokens = TokenCount(p.task)
        results = Trainer.from_prepared(p, cfg, callbacks=[ClockCallback(clock)]).fit()
        clock.end()
        return results["accuracy"]


class HFWrapped(nn.Module):
    """The same encoder+head, with the keyword interface HF's Trainer calls."""

    def __init__(self, task: nn.Module) -> None:
        super().__init__()
        self.task = task

    def forward(self, input_ids, attention_mask, labels=None):
        out = self.task({"text": input_ids, "text_mask": attention_mask, **({"labels": labels} if labels is not None else {})})
        return {"loss": out["loss"], "logits": out["logits"]} if labels is not None else {"logits": out["logits"]}


class HFClock(TrainerCallback):
    """HF side: stamp the clock at every ``on_step_end``."""

    def __init__(self, clock: StepClock) -> None:
        self.clock = clock

    def on_step_end(self, args, state, control, **kwargs):
        self.clock.stamp()


def run_hf(args: Any, clock: StepClock, seed: int, strategy: str) -> float:
    clock.begin()
    with tempfile.TemporaryDirectory() as out:
        cfg, p = prepare(out, args, seed)
        tok = p.task.encoder.tokenizer
        train = [{"input_ids": r["text"], "labels": r["labels"]} for r in p.train_data.items]
        evals = [{"input_ids": r["text"], "labels": r["labels"]} for r in p.eval_data.items]
        targs = TrainingArguments(
            output_dir=out, max_steps=args.steps, per_device_train_batch_size=args.batch,
            per_device_eval_batch_size=args.batch, learning_rate=args.lr, weight_decay=0.01, lr_scheduler_type="linear",
            max_grad_norm=1.0, logging_steps=100000, save_strategy="no", eval_strategy="no", report_to=[],
            train_sampling_strategy=strategy, use_cpu=args.device == "cpu", bf16=args.precision == "bf16",
            fp16=args.precision == "fp16", seed=seed, disable_tqdm=True)
        model = HFWrapped(p.task)
        clock.count_forward(model)
        clock.tokens = TokenCount(p.task)
        trainer = HFTrainer(model=model, args=targs, train_dataset=train, eval_dataset=evals,
                            data_collator=DataCollatorWithPadding(tok), callbacks=[HFClock(clock)],
                            compute_metrics=lambda ep: {"accuracy": float((ep.predictions.argmax(-1) == ep.label_ids).mean())})
        trainer.train()
        acc = trainer.evaluate()["eval_accuracy"]
        clock.end()
        return acc


ARMS = {"mm_ptft (defaults)": (run_ours, ""), "HF Trainer (defaults)": (run_hf, "random"),
        "HF Trainer (group_by_length)": (run_hf, "group_by_length")}


def measure(args: Any, seeds: int) -> tuple[dict[str, list[dict[str, float]]], dict[str, list[float]]]:
    """Every arm once per seed, the arm order rotated per seed (machine-load drift spreads over all arms)."""
    timings: dict[str, list[dict[str, float]]] = {name: [] for name in ARMS}
    accuracy: dict[str, list[float]] = {name: [] for name in ARMS}
    names = list(ARMS)
    for seed in range(seeds):
        for name in names[seed % 3:] + names[: seed % 3]:
            run, strategy = ARMS[name]
            clock = StepClock(args.warmup, args.steps, args.device)
            accuracy[name].append(run(args, clock, seed, strategy))
            timings[name].append({**clock.timing(), **clock.tokens.figures(clock)})
    return timings, accuracy


KEYS = ("samples_per_s", "tokens_per_s", "startup_s", "after_s", "wall_s", "train_pad_tokens", "eval_pad_tokens")


def settings(quick: bool, device: str = "") -> argparse.Namespace:
    s = SIZES["quick" if quick else "full"]
    args = argparse.Namespace(batch=32, lr=5e-4, precision="fp32",
                              device=device or ("cuda" if torch.cuda.is_available() else "cpu"), **s)
    args.steps = args.epochs * math.ceil(args.n_train / args.batch)
    return args


def compare(quick: bool = False, seeds: int = 5, device: str = "") -> dict[str, Any]:
    args = settings(quick, device)
    with tempfile.TemporaryDirectory() as out:
        pad = padding_fraction(prepare(out, args, 0)[1], args.batch)
    t, acc = measure(args, seeds)
    ours = t["mm_ptft (defaults)"]
    rows = [[*r, fmt(acc[name])] for r, name in zip(throughput_rows(t, KEYS), t)]
    for name in ("HF Trainer (defaults)", "HF Trainer (group_by_length)"):
        rows += [[*r, ""] for r in paired_rows(ours, t[name], f"mm_ptft vs {name}", ("samples_per_s", "tokens_per_s", "wall_s"))]
    notes = [f"device {args.device}, {args.precision}; BERT h{args.hidden} L{args.layers}, batch {args.batch}, "
             f"{args.n_train} training sentences, {args.steps} steps ({args.epochs} epoch), lr {args.lr}; "
             f"random batches are {pad:.0%} padding",
             f"wall s = the whole run (data and model built, training, final evaluation on {args.n_eval} sentences); "
             "CPU target: mm_ptft ≥ 1.05× HF group_by_length on the whole run",
             "tokens/s: tokens computed (padding included) per second over the same window; pad train / eval: padded "
             "tokens in the epoch's batches / in the final evaluation's"]
    return section("Text fine-tuning vs Hugging Face Trainer", window_rule(args.warmup, args.steps),
                   ["arm", "samples/s", "tokens/s", "start-up s", "after s", "wall s", "pad train", "pad eval",
                    "accuracy"], rows, seeds=seeds,
                   quick=quick, notes=notes, raw={"timings": t, "accuracy": acc})


def main() -> None:
    script_main(compare, __doc__.split("\n")[0])


if __name__ == "__main__":
    main()
