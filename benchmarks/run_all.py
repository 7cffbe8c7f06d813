"""Run every comparison under one set of rules and write ``benchmarks/RESULTS.md`` and ``benchmarks/results.json``.

    python -m benchmarks.run_all [--quick] [--only NAME ...] [--seeds 5] [--threads 1] [--out DIR]

Rules (``benchmarks/common.py``): throughput from step-end stamps taken outside each training loop over the
same window (w, N] on both sides, start-up and final evaluation reported apart; every figure as mean ± sd
over seeds, two arms compared by their paired per-seed difference; a hardware/versions line per section.
``--quick`` uses tiny sizes and 2 seeds (flagged "quick" in RESULTS.md); ``--only`` reruns some comparisons
and keeps the others' last results. README figures are quoted from RESULTS.md.
"""
from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from benchmarks.common import THREADS_HELP, hardware, hardware_line, render, set_threads

HERE = Path(__file__).resolve().parent
#: name → module whose ``compare(quick, seeds, device)`` returns a section (imported only when run)
COMPARISONS = {"trainer_overhead": "benchmarks.trainer_overhead", "vs_hf_trainer": "benchmarks.vs_hf_trainer",
               "eval_floor": "benchmarks.eval_floor",
               "pretrain_vs_scratch": "benchmarks.pretrain_vs_scratch", "vs_open_clip": "benchmarks.vs_open_clip",
               "compile_speed": "benchmarks.compile_speed", "table_memory": "benchmarks.table_memory",
               "ctc_lm": "benchmarks.ctc_lm", "vs_open_clip_coca": "benchmarks.vs_open_clip_coca",
               "whisper_vs_seq2seqtrainer": "benchmarks.whisper_vs_seq2seqtrainer",
               "save_stall": "benchmarks.save_stall", "snapshot_stall": "benchmarks.snapshot_stall",
               "checkpoint_write": "benchmarks.checkpoint_write",
               "threads_loaded": "benchmarks.threads_loaded",
               "vs_trl_sft": "benchmarks.vs_trl_sft", "video_loader": "benchmarks.video_loader"}
QUICK_SEEDS = 2


def runner(name: str) -> Callable[..., dict[str, Any]]:
    return importlib.import_module(COMPARISONS[name]).compare


def write(results: dict[str, Any], out_dir: Path) -> None:
    """results.json and RESULTS.md (sections in COMPARISONS order)."""
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# Benchmark results", "",
             "Written by `python -m benchmarks.run_all` (regenerate: `python -m benchmarks.run_all [--quick] "
             "[--only NAME ...] [--seeds 5]`); the README quotes these figures. Every throughput is measured from "
             "outside each loop over the same window (w, N] on both sides (`benchmarks/common.py`); every figure "
             "is mean ± sd over seeds, and a comparison of two arms is the mean ± sd of their per-seed (paired) "
             "difference or ratio.", "", hardware_line(hardware()), ""]
    lines += [render(results[name]) for name in COMPARISONS if name in results]
    (out_dir / "RESULTS.md").write_text("\n".join(lines))


def main(argv: Optional[Sequence[str]] = None, out_dir: Path = HERE) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"tiny sizes, {QUICK_SEEDS} seeds unless --seeds")
    ap.add_argument("--only", nargs="+", choices=list(COMPARISONS), default=list(COMPARISONS))
    ap.add_argument("--seeds", type=int, default=None, help="seeds per comparison (default 5; quick: 2)")
    ap.add_argument("--device", default="", help="cpu | cuda (default: cuda when available)")
    ap.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    ap.add_argument("--out", type=Path, default=out_dir, help="where RESULTS.md and results.json go (default: benchmarks/)")
    args = ap.parse_args(argv)
    out_dir = args.out
    seeds = args.seeds or (QUICK_SEEDS if args.quick else 5)
    if seeds < 2:
        raise SystemExit(f"--seeds={seeds}: a mean ± sd needs at least 2 seeds")
    set_threads(args.threads)
    path = out_dir / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for name in args.only:
        t0 = time.perf_counter()
        results[name] = {**runner(name)(quick=args.quick, seeds=seeds, device=args.device),
                         "elapsed_s": round(time.perf_counter() - t0, 1)}
        write(results, out_dir)  # after each comparison: a long run that stops keeps what it measured
        print(render(results[name]), flush=True)
    return results


if __name__ == "__main__":
    main()
