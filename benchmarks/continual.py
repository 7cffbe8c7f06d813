"""Forgetting of task A after fine-tuning on task B: plain fine-tuning vs L2-SP vs EWC vs rehearsal (tiny text, CPU).

    nice -n 10 python benchmarks/continual.py [--seeds 3] [--epochs-a 4] [--epochs-b 4] [--out runs/continual_bench]

Data: the generated four-topic sentences, split by topic: task A = sports/cooking, task B = space/finance (own eval
files). Run A trains the tiny text recipe's 2-layer BERT on A; each run B starts from A's encoder
(``model.text.name_or_path=A/encoders/text``) with a new head and trains on B:
  plain       no regularisation
  l2_sp       finetune.regularize={name: l2_sp, weight: --l2sp-weight}
  ewc         finetune.regularize={name: ewc, weight: --ewc-weight, fisher_from: A, fisher_samples: 256}
  rehearsal   data.rehearsal={source: A, fraction: 0.2} (B's labels become the union of A's and B's)
Accuracy on A is measured with A's own head on top of the encoder (task-incremental evaluation, the same for every
method): before = run A; after = A's head on B's encoder. Forgetting = before − after. Mean ± sd over seeds.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

from safetensors.torch import load_file

from mm_ptft.data.generated import text_topics
from mm_ptft.run import load_config, load_run, pick_checkpoint, train
from mm_ptft.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes/text_classification/tiny.yaml"
TOPICS = {"a": ("sports", "cooking"), "b": ("space", "finance")}


def split_by_topic(out: Path, n_train: int, n_eval: int) -> dict[str, str]:
    """``{a_train, a_eval, b_train, b_eval}`` CSV paths from one generated corpus."""
    paths = text_topics(str(out / "all"), n_train=n_train, n_eval=n_eval, seed=0)
    files = {}
    for split in ("train", "eval"):
        with open(paths[f"{split}_file"]) as f:
            rows = list(csv.reader(f))
        for task, topics in TOPICS.items():
            path = out / f"{task}_{split}.csv"
            with open(path, "w", newline="") as f:
                csv.writer(f).writerows([rows[0], *(r for r in rows[1:] if r[1] in topics)])
            files[f"{task}_{split}"] = str(path)
    return files


def accuracy_on_a(run_a: Path, run_b: Path) -> float:
    """A's head on B's encoder, evaluated on A's eval set."""
    cfg, prepared, _ = load_run(run_a)
    weights = load_file(str(pick_checkpoint(run_b) / "model.safetensors"))
    encoder = {k.removeprefix("encoder."): v for k, v in weights.items() if k.startswith("encoder.")}
    prepared.task.encoder.load_state_dict(encoder, strict=True)
    return Trainer.from_prepared(prepared, cfg, train=False).evaluate()["accuracy"]


def methods(run_a: Path, l2sp: float, ewc: float) -> dict[str, list[str]]:
    return {"plain": [],
            "l2_sp": [f"finetune.regularize={{name: l2_sp, weight: {l2sp}}}"],
            "ewc": [f"finetune.regularize={{name: ewc, weight: {ewc}, fisher_from: {run_a}, fisher_samples: 256}}"],
            "rehearsal": [f"data.rehearsal={{source: {run_a}, fraction: 0.2}}"]}


def one_seed(seed: int, files: dict[str, str], out: Path, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    common = [f"seed={seed}", "train.report=false", "train.report_to=[]", "train.log_every=1000",
              "train.overwrite_output_dir=true", "data.generate=null"]
    run_a = out / f"a_{seed}"
    acc_a = train(load_config(TINY, [f"output_dir={run_a}", f"data.train_file={files['a_train']}",
                                     f"data.eval_file={files['a_eval']}", f"train.epochs={args.epochs_a}", *common]))
    rows = {}
    for name, extra in methods(run_a, args.l2sp_weight, args.ewc_weight).items():
        run_b = out / f"b_{name}_{seed}"
        acc_b = train(load_config(TINY, [f"output_dir={run_b}", f"data.train_file={files['b_train']}",
                                         f"data.eval_file={files['b_eval']}", f"train.epochs={args.epochs_b}",
                                         f"model.text={{name_or_path: {run_a / 'encoders' / 'text'}}}", *common, *extra]))
        after = accuracy_on_a(run_a, run_b)
        rows[name] = {"a_before": acc_a["accuracy"], "a_after": after, "forgetting": acc_a["accuracy"] - after,
                      "b": acc_b["accuracy"]}
        print(f"seed {seed} {name:9s} A before {acc_a['accuracy']:.3f}  A after B {after:.3f}  "
              f"B {acc_b['accuracy']:.3f}", flush=True)
    return rows


def table(results: list[dict[str, dict[str, float]]]) -> str:
    def ms(xs: list[float]) -> str:
        return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.3f}"

    lines = ["| method | acc A before | acc A after B | forgetting | acc B |", "|---|---|---|---|---|"]
    for name in results[0]:
        col = {k: [r[name][k] for r in results] for k in ("a_before", "a_after", "forgetting", "b")}
        lines.append(f"| {name} | {ms(col['a_before'])} | {ms(col['a_after'])} | {ms(col['forgetting'])} | "
                     f"{ms(col['b'])} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs-a", type=int, default=4)
    ap.add_argument("--epochs-b", type=int, default=4)
    ap.add_argument("--n-train", type=int, default=1600, help="generated sentences, both tasks together")
    ap.add_argument("--l2sp-weight", type=float, default=1.0)
    ap.add_argument("--ewc-weight", type=float, default=1000.0)
    ap.add_argument("--out", default="runs/continual_bench")
    args = ap.parse_args()
    out = Path(args.out)
    files = split_by_topic(out / "data", args.n_train, args.n_train // 4)
    results = [one_seed(seed, files, out, args) for seed in range(args.seeds)]
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\n{args.seeds} seeds, A {args.epochs_a} epochs then B {args.epochs_b} epochs "
          f"(l2_sp weight {args.l2sp_weight}, ewc weight {args.ewc_weight}):\n" + table(results))


if __name__ == "__main__":
    main()
