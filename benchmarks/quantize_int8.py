"""fp32 vs dynamic int8 (``torch.ao.quantization.quantize_dynamic`` on ``nn.Linear``; onnxruntime's
``quantize_dynamic`` for ONNX) on CPU: eval accuracy, batch-1 latency and batch-32 throughput, same run.

    python benchmarks/quantize_int8.py [--run-dir runs/quantize_bench] [--threads 2] [--repeats 30]

Trains the tiny text recipe with a larger BERT (4 layers, hidden 256) once (reused when the run
directory has a checkpoint), then measures the exported serving module in four forms: PyTorch eager
fp32 / int8, and ONNX Runtime fp32 / int8 (the files ``mm-ptft export`` writes).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from mm_ptft.run import load_config
from mm_ptft.run.export import ExportModule, export_run, export_spec, make_traceable, no_mha_fastpath, quantize_int8
from mm_ptft.run import load_run, train

ROOT = Path(__file__).resolve().parents[1]
MODEL = ("model.text.config={model_type: bert, hidden_size: 256, num_hidden_layers: 4, num_attention_heads: 4, "
         "intermediate_size: 1024, max_position_embeddings: 128}")


def ensure_run(run_dir: Path) -> None:
    """Train once (about a minute on 2 CPU cores); later calls reuse the checkpoint."""
    if (run_dir / "checkpoints").is_dir():
        return
    cfg = load_config(ROOT / "recipes" / "text_classification" / "tiny.yaml",
                      [f"output_dir={run_dir}", MODEL, "train.epochs=3", "optim.lr=0.0005", "train.report=false"])
    train(cfg)


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls after two warm-ups."""
    fn(), fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(name: str, predict: Callable[[torch.Tensor, torch.Tensor], np.ndarray], batches: list, one: tuple,
            big: tuple, repeats: int) -> dict[str, float]:
    correct = total = 0
    preds = []
    for ids, mask, y in batches:
        preds.append(predict(ids, mask).argmax(-1))  # (B,)
        correct += int((preds[-1] == y.numpy()).sum())
        total += len(y)
    lat = timed(lambda: predict(*one), repeats)
    thr = big[0].shape[0] / timed(lambda: predict(*big), max(repeats // 3, 5))
    row = {"accuracy": correct / total, "latency_ms_b1": lat * 1e3, "throughput_b32": thr,
           "preds": np.concatenate(preds).tolist()}
    print(f"{name:<22} acc {row['accuracy']:.4f}   latency(b=1) {row['latency_ms_b1']:7.2f} ms   "
          f"throughput(b=32) {row['throughput_b32']:8.1f} samples/s", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default="runs/quantize_bench")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run_dir = Path(args.run_dir)
    ensure_run(run_dir)

    _, prepared, _ = load_run(run_dir)
    task = prepared.task.cpu().eval()
    spec = export_spec(task)
    fp32 = make_traceable(ExportModule(task, spec)).eval()
    int8 = quantize_int8(fp32)
    data = prepared.eval_data
    batches = []
    for s in range(0, len(data), 32):
        b = prepared.collate([data[i] for i in range(s, min(s + 32, len(data)))])
        batches.append((b["text"], b["text_mask"], b["labels"]))
    one = (batches[0][0][:1], batches[0][1][:1])
    big = (batches[0][0], batches[0][1])

    def eager(module: torch.nn.Module) -> Callable:
        @torch.inference_mode()
        def run(ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
            with no_mha_fastpath():
                return module(ids, mask).numpy()  # (B, C)
        return run

    def ort(path: Path) -> Callable:
        import onnxruntime as rt

        opts = rt.SessionOptions()
        opts.intra_op_num_threads = args.threads
        sess = rt.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return lambda ids, mask: sess.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]

    n_params = sum(p.numel() for p in task.parameters())
    print(f"model: BERT 4x256 text classifier, {n_params / 1e6:.2f}M params; eval {len(data)} samples; "
          f"{args.threads} threads; torch {torch.__version__}")
    rows = {"torch fp32": measure("torch eager fp32", eager(fp32), batches, one, big, args.repeats),
            "torch int8": measure("torch eager int8", eager(int8), batches, one, big, args.repeats)}
    onnx_fp32 = export_run(run_dir, "onnx", run_dir / "export" / "bench.onnx", check=False)
    onnx_int8 = export_run(run_dir, "onnx", run_dir / "export" / "bench.int8.onnx", quantize="int8", check=False)
    rows["onnx fp32"] = measure("onnxruntime fp32", ort(onnx_fp32), batches, one, big, args.repeats)
    rows["onnx int8"] = measure("onnxruntime int8", ort(onnx_int8), batches, one, big, args.repeats)
    for kind in ("torch", "onnx"):
        a, b = rows[f"{kind} fp32"], rows[f"{kind} int8"]
        agree = float(np.mean(np.array(a["preds"]) == np.array(b["preds"])))
        print(f"{kind:<6} int8 vs fp32: accuracy {b['accuracy'] - a['accuracy']:+.4f} (same label on {agree:.1%}), "
              f"latency speed-up x{a['latency_ms_b1'] / b['latency_ms_b1']:.2f}, "
              f"throughput speed-up x{b['throughput_b32'] / a['throughput_b32']:.2f}")
    size = {p.name: p.stat().st_size / 1e6 for p in (onnx_fp32, onnx_int8)}
    print("ONNX file sizes (MB): " + ", ".join(f"{k} {v:.1f}" for k, v in size.items()))
    summary = {k: {m: v for m, v in r.items() if m != "preds"} for k, r in rows.items()}
    (run_dir / "quantize_int8.json").write_text(json.dumps({"rows": summary, "onnx_mb": size}, indent=2))


if __name__ == "__main__":
    main()
