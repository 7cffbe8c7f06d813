"""Multi-task vs single-task fine-tuning on the same data, the same steps per task and the same hyperparameters.

    nice -n 10 python benchmarks/multitask_vs_single.py --out runs/bench_multitask --threads 1

The tasks are those of ``recipes/multitask/tiny.yaml`` (four-topic classification and "how warm" regression,
each on its own generated data), with ``--train`` training rows each. For every seed:

- single: each task alone through its own recipe (``text_classification`` / ``text_regression``), ``--steps``
  batches of ``--batch-size`` on a fresh tiny text encoder;
- single 2x steps: the same, ``2 x --steps`` batches (as many updates as the shared encoder gets below: is a
  gain from the other task's data, or only from more steps?);
- multitask round_robin: one shared encoder, ``2 x --steps`` steps of one task's batch in turn, so each task
  again sees exactly ``--steps`` batches of ``--batch-size``;
- multitask temperature (T=2): ``2 x --steps`` steps of mixed batches of ``--batch-size`` (each sample's task
  drawn by p_i ∝ n_i^(1/2): with both tasks the same size, 1/2 each, so each task again sees ``--steps`` x
  ``--batch-size`` samples, spread over all steps instead of alternating).

With ``--train-warmth`` the sizes differ and so do the samplings (``--samplings``; proportional gives the
small task n_i / Σn of the samples, temperature more, round-robin half), while single-task runs keep
``--steps`` batches per task.

Prints accuracy / R² on each task's eval split (mean ± sd over ``--seeds``) as a markdown table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
METRICS = {"topic": "accuracy", "warmth": "r2"}


def base_config(args: argparse.Namespace) -> Any:
    from mm_ptft.run import load_config

    n_eval, n_warmth = args.eval, args.train_warmth or args.train
    return load_config(str(ROOT / "recipes/multitask/tiny.yaml"), [
        f"tasks.topic.data.generate.n_train={args.train}", f"tasks.topic.data.generate.n_eval={n_eval}",
        f"tasks.warmth.data.generate.n_train={n_warmth}", f"tasks.warmth.data.generate.n_eval={n_eval}"])


def common(cfg: Any, out: Path, seed: int, steps: int, batch: int) -> dict[str, Any]:
    from mm_ptft.config import to_dict

    train = {**to_dict(cfg.train), "max_steps": steps, "batch_size": batch, "eval_every": steps, "log_every": 1000,
             "report": False, "overwrite_output_dir": True, "keep_last": 0, "metric_for_best": ""}
    return {"output_dir": str(out), "seed": seed, "train": train, "optim": to_dict(cfg.optim),
            "sched": to_dict(cfg.sched)}


def single(cfg: Any, name: str, out: Path, seed: int, args: argparse.Namespace, steps: int) -> float:
    """Task ``name`` alone through its own recipe, with the multitask run's encoder spec and hyperparameters."""
    from mm_ptft.run import load_config, train

    entry = cfg.tasks[name]
    raw = {"task": entry.recipe, **common(cfg, out, seed, steps, args.batch_size), "data": dict(entry.data),
           "model": {**entry.model, "text": dict(cfg.model.text)}}
    return train(load_config(raw))[METRICS[name]]


def multi(cfg: Any, sampling: str, out: Path, seed: int, args: argparse.Namespace) -> dict[str, float]:
    from mm_ptft.config import to_dict
    from mm_ptft.run import load_config, train

    raw = {**to_dict(cfg), **common(cfg, out, seed, 2 * args.steps, args.batch_size)}
    raw["data"] = {**raw["data"], "sampling": sampling, "temperature": 2.0}
    results = train(load_config(raw))
    return {n: results[f"{n}/{m}"] for n, m in METRICS.items()}


def _fmt(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.3f}"


def main(argv: list[str] | None = None) -> dict[str, dict[str, list[float]]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/bench_multitask")
    ap.add_argument("--train", type=int, default=200, help="training rows per task")
    ap.add_argument("--train-warmth", type=int, default=0, help="the warmth task's rows if not --train (sizes "
                    "that differ: the samplings then differ too)")
    ap.add_argument("--samplings", nargs="+", default=["round_robin", "temperature"],
                    choices=["proportional", "temperature", "round_robin"])
    ap.add_argument("--eval", type=int, default=200, help="eval rows per task")
    ap.add_argument("--steps", type=int, default=40, help="batches per task")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out, t0 = Path(args.out), time.time()
    kinds = ["single", "single 2x steps", *(f"multitask {s}" for s in args.samplings)]
    res: dict[str, dict[str, list[float]]] = {k: {n: [] for n in METRICS} for k in kinds}
    for seed in args.seeds:
        cfg = base_config(args)
        for name in METRICS:
            for kind, steps in (("single", args.steps), ("single 2x steps", 2 * args.steps)):
                res[kind][name].append(single(cfg, name, out / f"{kind.replace(' ', '_')}_{name}_{seed}", seed, args,
                                              steps))
        for sampling in args.samplings:
            for name, v in multi(base_config(args), sampling, out / f"multi_{sampling}_{seed}", seed, args).items():
                res[f"multitask {sampling}"][name].append(v)
    print(f"\n{args.train} / {args.train_warmth or args.train} training rows (topic / warmth), {args.steps} batches "
          f"of {args.batch_size} per task alone, {2 * args.steps} multitask steps, "
          f"seeds {args.seeds}, {time.time() - t0:.0f} s\n")
    print("| training | topic accuracy (chance 0.25) | warmth R² (mean predictor 0) |\n|---|---|---|")
    for kind, by_task in res.items():
        print(f"| {kind} | {_fmt(by_task['topic'])} | {_fmt(by_task['warmth'])} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
