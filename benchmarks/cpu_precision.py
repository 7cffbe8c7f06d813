"""CPU training-step time in fp32 vs bf16 autocast (what ``train.precision: auto`` decides on a CPU).

A MiniLM-sized BERT (6 layers, hidden 384, random init), batch 16 x 128 tokens, forward + backward +
AdamW step, timed over the same window (steps W+1..W+N after W warm-up steps) in each precision, in
one process. ``--emulate`` re-runs itself with oneDNN and ATen limited to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``,
``ATEN_CPU_CAPABILITY=avx2``): a CPU without native bf16, as most laptop and older server CPUs are.

Measured on this project's 2-core AMD EPYC (AVX512-BF16), 5 steps after 2 warm-up, other work running:
native fp32 7.48 s/step, bf16 5.44 (0.73x); limited to AVX2 fp32 7.61, bf16 23.85 (3.13x).

    python benchmarks/cpu_precision.py [--steps 10] [--warmup 3] [--emulate]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch


def build() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536, num_labels=4)
    model = BertForSequenceClassification(cfg)
    batch = {"input_ids": torch.randint(1000, 30000, (16, 128)), "labels": torch.randint(0, 4, (16,))}
    return model, batch


def time_steps(precision: str, steps: int, warmup: int) -> list[float]:
    model, batch = build()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def measure(steps: int, warmup: int) -> dict:
    from mm_ptft import env

    out = {"cpu": env.cpu_capability(), "native_bf16_flag": env.cpu_native_bf16(),
           "onednn_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "default"), "threads": torch.get_num_threads(),
           "torch": torch.__version__}
    for precision in ("fp32", "bf16"):
        t = time_steps(precision, steps, warmup)
        out[f"{precision}_s_per_step"] = round(statistics.median(t), 3)
    out["bf16_over_fp32"] = round(out["bf16_s_per_step"] / out["fp32_s_per_step"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--emulate", action="store_true", help="also run with oneDNN limited to AVX2 (no native bf16)")
    ns = ap.parse_args()
    print(json.dumps(measure(ns.steps, ns.warmup)))
    if ns.emulate:
        env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
        subprocess.run([sys.executable, __file__, "--steps", str(ns.steps), "--warmup", str(ns.warmup)],
                       env=env, check=True)


if __name__ == "__main__":
    main()
