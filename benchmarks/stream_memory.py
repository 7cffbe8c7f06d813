"""Memory and start-up of text classification on growing files: streamed (``data.streaming: true``) vs the
in-memory path, prepare + 50 optimizer steps, each size in a fresh process.

    python benchmarks/stream_memory.py [--rows 20000 200000 2000000] [--in-memory-up-to 200000]

Reports per size: peak RSS of the training process and of its loader workers (``ru_maxrss``), and the time
from process start to the end of the first optimizer step. Targets (issue 15): streamed peak RSS at 2M rows
≤ 1.3× that at 20k; time to first step ≤ 10 s at every size.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: the measured process (also benchmarks/table_memory.py's): peak RSS, time to the first optimizer step, and
#: how the run got its tables (the preprocessing cache's state; "none" for streams)
CHILD = r"""
import json, resource, sys, time
t0 = time.time()
from mm_ptft.contracts import Callback
from mm_ptft.run import load_config, train

class FirstStep(Callback):
    first, cache = None, None
    def on_train_start(self, trainer):
        status = getattr(trainer.train_loader.dataset, "cache", None)
        FirstStep.cache = status.state if status is not None else "none"
    def on_step_end(self, trainer):
        if FirstStep.first is None:
            FirstStep.first = time.time() - t0

cfg = load_config(sys.argv[1], sys.argv[3:])
train(cfg, callbacks=[FirstStep()])
me, kids = (resource.getrusage(w).ru_maxrss / 1024 for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
json.dump({"first_step_s": FirstStep.first, "total_s": time.time() - t0, "rss_mb": me, "worker_rss_mb": kids,
           "cache": FirstStep.cache}, open(sys.argv[2], "w"))
"""


def write_rows(path: str, n: int, seed: int = 0) -> None:
    """A topics-style CSV of ``n`` rows (the text_topics generator's sentences, written in bulk)."""
    from mm_ptft.data.generated import TOPICS, topic_sentence

    rng = random.Random(seed)
    pool = [(topic_sentence(rng, t, 0.15).replace('"', ""), t) for t in TOPICS for _ in range(2000)]
    with open(path, "w") as f:
        f.write("text,label\n")
        for i in range(n):
            text, label = pool[rng.randrange(len(pool))]
            f.write(f'"{text}",{label}\n')


def run(data_dir: str, rows: int, streaming: bool, eval_file: str) -> dict:
    out = os.path.join(data_dir, f"result_{rows}_{int(streaming)}.json")
    args = [os.path.join(ROOT, "recipes", "text_classification", "tiny.yaml"), out,
            f"output_dir={data_dir}/run_{rows}_{int(streaming)}", "data.generate=null",
            f"data.train_file={data_dir}/train_{rows}.csv", f"data.eval_file={eval_file}", "train.max_steps=50",
            "train.eval_every=50", "train.report=false", "train.num_workers=2", f"data.streaming={str(streaming).lower()}"]
    env = {**os.environ, "PYTHONPATH": ROOT}
    subprocess.run([sys.executable, "-c", CHILD, *args], check=True, env=env, cwd=ROOT, capture_output=True)
    return json.load(open(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[20000, 200000, 2000000])
    ap.add_argument("--in-memory-up-to", type=int, default=20000, help="also run the in-memory path up to this size")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        eval_file = os.path.join(d, "eval.csv")
        write_rows(eval_file, 500, seed=1)
        print(f"{'rows':>9} {'path':>9} {'file MB':>8} {'first step s':>12} {'peak RSS MB':>11} {'workers MB':>10}")
        for n in args.rows:
            write_rows(os.path.join(d, f"train_{n}.csv"), n)
            size = os.path.getsize(os.path.join(d, f"train_{n}.csv")) / 2 ** 20
            for streaming in (True, False) if n <= args.in_memory_up_to else (True,):
                r = run(d, n, streaming, eval_file)
                print(f"{n:>9} {'stream' if streaming else 'memory':>9} {size:>8.1f} {r['first_step_s']:>12.1f} "
                      f"{r['rss_mb']:>11.0f} {r['worker_rss_mb']:>10.0f}", flush=True)


if __name__ == "__main__":
    main()
