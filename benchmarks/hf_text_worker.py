"""The Hugging Face side of ``vs_hf_trainer``'s whole-process comparison, as a new user writes it: read the CSVs,
tokenise, ``AutoModelForSequenceClassification``, ``Trainer`` with ``group_by_length`` (transformers 5:
``train_sampling_strategy="group_by_length"``), train, evaluate, save the model. Prints one JSON line: accuracy
and the phase split (start-up = process start → training starts, train, eval, finish = ``save_model``), measured
as ``mm_ptft.train.phases`` measures the mm_ptft side.

``--checkpoint``: HF also writes its resumable checkpoint at the end (weights, optimizer, scheduler, RNG states:
``save_strategy="steps"``), as mm_ptft does by default; that write, done inside ``train()``, is counted as finish.

    python benchmarks/hf_text_worker.py MODEL_DIR TRAIN_CSV EVAL_CSV OUT --seed 0 [--bf16] [--checkpoint]
"""
import argparse
import csv
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mm_ptft.train.phases import process_start  # noqa: E402  (no torch: reads /proc/self/stat)

ORIGIN = process_start()

import numpy as np  # noqa: E402
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,  # noqa: E402
                          Trainer, TrainerCallback, TrainingArguments)

from benchmarks.minilm import BATCH, LR, MAX_LENGTH  # noqa: E402


class TrainStart(TrainerCallback):
    """When training starts, and how long the checkpoint written after the last step took (``--checkpoint``)."""

    def __init__(self) -> None:
        self.at, self.last_step, self.save_s = None, None, 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.at = time.time()

    def on_step_end(self, args, state, control, **kwargs):
        self.last_step = time.time()

    def on_save(self, args, state, control, **kwargs):
        self.save_s = time.time() - self.last_step


def rows(path: str, tok, labels: dict) -> list[dict]:
    table = list(csv.DictReader(open(path)))
    enc = tok([r["text"] for r in table], truncation=True, max_length=MAX_LENGTH)
    return [{"input_ids": ids, "attention_mask": m, "labels": labels.setdefault(r["label"], len(labels))}
            for ids, m, r in zip(enc["input_ids"], enc["attention_mask"], table)]


def main() -> None:
    ap = argparse.ArgumentParser()
    for name in ("model", "train_csv", "eval_csv", "out"):
        ap.add_argument(name)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--checkpoint", action="store_true",
                    help="also write a resumable checkpoint at the end (save_strategy='steps'), as mm_ptft does")
    a = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(a.model)
    labels: dict = {}
    train, evals = rows(a.train_csv, tok, labels), rows(a.eval_csv, tok, labels)
    model = AutoModelForSequenceClassification.from_pretrained(a.model, num_labels=len(labels))
    targs = TrainingArguments(
        output_dir=a.out, num_train_epochs=1, per_device_train_batch_size=BATCH, per_device_eval_batch_size=BATCH,
        learning_rate=LR, weight_decay=0.01, lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0,
        logging_steps=10, save_strategy="steps" if a.checkpoint else "no",
        save_steps=10**9, eval_strategy="no", report_to=[], use_cpu=True,
        train_sampling_strategy="group_by_length", bf16=a.bf16, seed=a.seed, disable_tqdm=True)
    start = TrainStart()
    trainer = Trainer(model=model, args=targs, train_dataset=train, eval_dataset=evals, processing_class=tok,
                      data_collator=DataCollatorWithPadding(tok), callbacks=[start],
                      compute_metrics=lambda ep: {"accuracy": float((np.argmax(ep.predictions, -1)
                                                                     == ep.label_ids).mean())})
    trainer.train()
    t_eval = time.time()
    acc = trainer.evaluate()["eval_accuracy"]
    t_finish = time.time()
    trainer.save_model(a.out)
    end = time.time()
    # the checkpoint HF writes inside train() after the last step counts as finish work, as mm_ptft's does
    split = {"startup_s": start.at - ORIGIN, "train_s": t_eval - start.at - start.save_s, "eval_s": t_finish - t_eval,
             "finish_s": end - t_finish + start.save_s, "wall_s": end - ORIGIN}
    print(json.dumps({"accuracy": acc, "timing": {k: round(v, 3) for k, v in split.items()}}), flush=True)


if __name__ == "__main__":
    main()
