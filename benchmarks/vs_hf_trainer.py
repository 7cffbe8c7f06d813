"""Text-classification fine-tuning: mm_ptft vs Hugging Face ``Trainer`` on the same model, data and
hyperparameters, in one run. Prints samples/s and accuracy of mm_ptft, HF defaults, and HF with
``train_sampling_strategy="group_by_length"`` (its best single-device setting), and the ratios.

    python benchmarks/vs_hf_trainer.py [--epochs 2] [--device cpu|cuda] [--hidden 256 --layers 4]

Data: generated topic sentences of 4-32 words (data_cards/text_topics.md): randomly drawn batches
spend over half their tokens on padding, as on real text of varied length.
"""
from __future__ import annotations

import argparse
import json
import tempfile

import torch
from torch import nn

from mm_ptft.run import load_config
from mm_ptft.tasks.text_classification import TextClassification
from mm_ptft.train.trainer import Trainer, seed_everything


def prepare(out: str, args):
    cfg = load_config("recipes/text_classification/tiny.yaml", [
        f"output_dir={out}", f"train.epochs={args.epochs}", f"train.batch_size={args.batch}", f"train.device={args.device}",
        f"optim.lr={args.lr}", "sched.warmup_steps=0", "train.report=false", "train.log_every=100000",
        f"train.precision={args.precision}", "data.generate.n_train=4000", "data.generate.n_eval=1000",
        f"model.text.config.hidden_size={args.hidden}", f"model.text.config.num_hidden_layers={args.layers}",
        f"model.text.config.num_attention_heads={args.hidden // 64}", f"model.text.config.intermediate_size={4 * args.hidden}"])
    seed_everything(0)
    return cfg, TextClassification.prepare(cfg)


def padding_fraction(prepared, batch: int) -> float:
    """Share of padded tokens in randomly drawn batches."""
    lengths = torch.tensor([len(r["text"]) for r in prepared.train_data.items])
    perm = lengths[torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0))]
    chunks = perm[: len(perm) // batch * batch].view(-1, batch)
    return float(1 - chunks.sum() / (chunks.max(1).values * batch).sum())


def run_ours(args) -> tuple[float, float]:
    """Training samples/s over all steps (as the trainer logs it; the final evaluation and
    checkpoint come after the window, as HF's evaluate() comes after its train_runtime), accuracy."""
    with tempfile.TemporaryDirectory() as out:
        cfg, p = prepare(out, args)
        steps = len(p.train_data) // args.batch * args.epochs + args.epochs
        cfg.train.log_every = cfg.train.eval_every = steps  # one window, one evaluation at the end
        results = Trainer.from_prepared(p, cfg).fit()
        logs = [json.loads(ln) for ln in open(f"{out}/metrics.jsonl") if '"train"' in ln]
        return logs[-1]["samples_per_s"], results["accuracy"]


class HFWrapped(nn.Module):
    """The same encoder+head, with the keyword interface HF's Trainer calls."""

    def __init__(self, task: nn.Module) -> None:
        super().__init__()
        self.task = task

    def forward(self, input_ids, attention_mask, labels=None):
        out = self.task({"text": input_ids, "text_mask": attention_mask, **({"labels": labels} if labels is not None else {})})
        return {"loss": out["loss"], "logits": out["logits"]} if labels is not None else {"logits": out["logits"]}


def run_hf(args, strategy: str) -> tuple[float, float]:
    from transformers import DataCollatorWithPadding, TrainingArguments
    from transformers import Trainer as HFTrainer

    with tempfile.TemporaryDirectory() as out:
        cfg, p = prepare(out, args)
        tok = p.task.encoder.tokenizer
        train = [{"input_ids": r["text"], "labels": r["labels"]} for r in p.train_data.items]
        evals = [{"input_ids": r["text"], "labels": r["labels"]} for r in p.eval_data.items]
        targs = TrainingArguments(
            output_dir=out, num_train_epochs=args.epochs, per_device_train_batch_size=args.batch,
            per_device_eval_batch_size=args.batch, learning_rate=args.lr, weight_decay=0.01, lr_scheduler_type="linear",
            max_grad_norm=1.0, logging_steps=100000, save_strategy="no", eval_strategy="no", report_to=[],
            train_sampling_strategy=strategy, use_cpu=args.device == "cpu", bf16=args.precision == "bf16",
            fp16=args.precision == "fp16", seed=0, disable_tqdm=True)
        trainer = HFTrainer(model=HFWrapped(p.task), args=targs, train_dataset=train, eval_dataset=evals,
                            data_collator=DataCollatorWithPadding(tok),
                            compute_metrics=lambda ep: {"accuracy": float((ep.predictions.argmax(-1) == ep.label_ids).mean())})
        metrics = trainer.train().metrics
        return metrics["train_samples_per_second"], trainer.evaluate()["eval_accuracy"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as out:
        print(f"padding in random batches of {args.batch}: {padding_fraction(prepare(out, args)[1], args.batch):.0%}")
    rows = {"mm_ptft (defaults)": run_ours(args), "HF Trainer (defaults)": run_hf(args, "random"),
            "HF Trainer (group_by_length)": run_hf(args, "group_by_length")}
    print(f"device={args.device} precision={args.precision} model=bert h{args.hidden} L{args.layers} "
          f"batch={args.batch} epochs={args.epochs} (training samples/s; accuracy on 1000 eval sentences)")
    for name, (sps, acc) in rows.items():
        print(f"{name:30s} {sps:9.1f} samples/s   accuracy {acc:.3f}")
    ours = rows["mm_ptft (defaults)"][0]
    print(f"speed ratio vs HF defaults:        {ours / rows['HF Trainer (defaults)'][0]:.2f}x")
    print(f"speed ratio vs HF group_by_length: {ours / rows['HF Trainer (group_by_length)'][0]:.2f}x")


if __name__ == "__main__":
    main()
