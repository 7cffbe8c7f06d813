"""torch.compile or not: the same Trainer run with ``train.compile`` off and on, per model, seeds interleaved. Sets
the evidence for ``train.compile``'s default. On CPU: eager vs ``default`` (inductor) for a tiny and a 4x256 BERT
(length-grouped text) and timm's vit_tiny_patch16_224; on CUDA: eager vs ``default`` vs ``reduce-overhead`` (CUDA
graphs) for a CLIP ViT-B/16 step in bf16 (vs_open_clip's model and data).

All arms are timed by ``benchmarks.common.StepClock`` over the same window (w, N]. Compiling happens in the first
forward, so it lands in start-up: compile seconds are the paired start-up difference (compiled - eager) per seed,
each compiled run starting from a reset dynamo (it traces again) with inductor's on-disk cache warm, as a re-run
of a script is; the first compile with an empty inductor cache is measured once per model in the warm-up run.
Break-even = compile seconds / (eager step time - compiled step time), in optimizer steps (never when compiled
is not faster). Text batches are length-grouped (the recipe default): the frames dynamo compiled per run count
the shape-driven recompiles.

    python benchmarks/compile_speed.py [--quick] [--seeds 5] [--device cpu|cuda] [--threads 1]
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ClockCallback, StepClock, fmt, mean_sd, paired, ratios, script_main, section, window_rule  # noqa: E402
from mm_ptft.config import RunConfig  # noqa: E402
from mm_ptft.run import load_config  # noqa: E402
from mm_ptft.tasks import get_recipe  # noqa: E402
from mm_ptft.train.compiling import graph_counts  # noqa: E402
from mm_ptft.train.trainer import Trainer, seed_everything  # noqa: E402

TEXT, IMAGE = "recipes/text_classification/tiny.yaml", "recipes/image_classification/tiny.yaml"
BERT_256 = ["model.text.config.hidden_size=256", "model.text.config.num_hidden_layers=4",
            "model.text.config.num_attention_heads=4", "model.text.config.intermediate_size=1024"]
VIT = ["model.image={name: timm, name_or_path: vit_tiny_patch16_224, pretrained: false}", "model.ema_decay=0.0",
       "data.generate.n_train=256", "data.generate.n_eval=8"]


#: arm → the train.* keys it sets (the first arm, eager, is the reference)
ARMS: dict[str, dict[str, Any]] = {"eager": {"compile": False}, "default": {"compile": "default"},
                                   "default, dynamic": {"compile": "default", "compile_dynamic": True},
                                   "reduce-overhead": {"compile": "reduce-overhead"}}


@dataclass
class Model:
    """One model to time: a recipe and its overrides, or (``recipe`` empty) CLIP ViT-B/16 as in vs_open_clip."""

    recipe: str
    overrides: list[str]
    batch: int
    window: tuple[int, int]  # (w, N)
    quick_window: tuple[int, int]
    arms: tuple[str, ...] = ("eager", "default")


TEXT_ARMS = ("eager", "default", "default, dynamic")  # length-grouped batches: automatic vs dynamic from the start
CPU_MODELS = {"BERT h64 L2 (text tiny)": Model(TEXT, [], 32, (5, 40), (3, 10), TEXT_ARMS),
              "BERT h256 L4": Model(TEXT, BERT_256, 32, (4, 20), (2, 6), TEXT_ARMS),
              "timm vit_tiny_patch16_224": Model(IMAGE, VIT, 8, (3, 12), (2, 4))}
# bf16, captions padded to 32 tokens (static shapes: CUDA graphs record once); open_clip towers, synthetic data
CUDA_MODELS = {"CLIP ViT-B/16 bf16": Model("", [], 128, (10, 40), (5, 20), ("eager", "default", "reduce-overhead"))}


def prepared(spec: Model, clock: StepClock, seed: int, out: str, arm: str) -> tuple[Any, RunConfig, Any, Any, Any]:
    """(task, config, training data, collate, lengths) for one run of ``spec`` with ``arm``'s train keys."""
    seed_everything(seed)
    if not spec.recipe:
        task, cfg, *rest = clip_prepared(spec, clock, out)
        for key, value in ARMS[arm].items():
            setattr(cfg.train, key, value)
        return (task, cfg, *rest)
    cfg = load_config(spec.recipe, [f"output_dir={out}", f"train.max_steps={clock.steps}", f"train.batch_size={spec.batch}",
                                    f"train.device={clock.device}", "train.report=false", "train.log_every=1000",
                                    f"seed={seed}", *spec.overrides,
                                    *(f"train.{k}={str(v).lower()}" for k, v in ARMS[arm].items())])
    p = get_recipe(cfg.task).prepare(cfg)
    return p.task, cfg, p.train_data, p.collate, p.train_lengths


def clip_prepared(spec: Model, clock: StepClock, out: str) -> tuple[Any, RunConfig, Any, Any, Any]:
    """vs_open_clip's mm_ptft side: open_clip ViT-B/16 towers + CLIP loss, bf16, synthetic images and captions."""
    import open_clip

    from benchmarks.vs_open_clip import build_ours, ours_config
    from mm_ptft.data.multimodal import MultimodalCollator

    task, _ = build_ours("ViT-B-16", 224)
    cfg = ours_config(argparse.Namespace(steps=clock.steps, batch=spec.batch, precision="bf16", device=clock.device,
                                         workers=4), out)
    tok = open_clip.get_tokenizer("ViT-B-16")
    return task, cfg, clip_data(clock.steps * spec.batch, tok.sot_token_id, tok.eot_token_id), MultimodalCollator(0, 32), None


@functools.lru_cache(maxsize=1)
def clip_data(n: int, sot: int, eot: int) -> Any:
    """vs_open_clip's synthetic images and captions, built once per process (n x 3 x 224 x 224 floats)."""
    from benchmarks.vs_open_clip import Synthetic

    return Synthetic(n, 224, sot, eot)


def run_arm(spec: Model, arm: str, clock: StepClock, seed: int) -> dict[str, float]:
    """One training run: its timing, the frames dynamo compiled and the graphs CUDA graphs skipped during it."""
    if ARMS[arm]["compile"]:
        torch._dynamo.reset()  # trace again, as a new process would (a reused graph would hide the compile)
    before = graph_counts()
    clock.begin()
    if clock.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as out:
        task, cfg, data, collate, lengths = prepared(spec, clock, seed, out, arm)
        clock.count_forward(task)
        Trainer(task, cfg, data, None, collate, lengths, callbacks=[ClockCallback(clock)]).fit()
        clock.end()
    after = graph_counts()
    peak = torch.cuda.max_memory_allocated() / 2**30 if clock.device.startswith("cuda") else math.nan
    return {**clock.timing(), "peak_gib": peak, **{f"{k}_in_run": after[k] - before[k] for k in after}}


def measure(spec: Model, window: tuple[int, int], seeds: int, device: str) -> dict[str, Any]:
    """A first run per arm with an empty inductor cache (start-up -> cold compile s; also the warm-up), then every
    arm once per seed, order alternating per seed (drift in machine load hits all alike)."""
    cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    arms = spec.arms
    out: dict[str, Any] = {name: [] for name in arms}
    with tempfile.TemporaryDirectory() as fresh:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = fresh  # read at each cache access: empty now, warm for the seeds
        out["cold_startup_s"] = {name: run_arm(spec, name, StepClock(*window, device), 0)["startup_s"]
                                 for name in arms}
        for seed in range(seeds):
            for name in (list(arms) if seed % 2 == 0 else list(arms)[::-1]):
                out[name].append(run_arm(spec, name, StepClock(*window, device), seed))
    if cache is None:
        os.environ.pop("TORCHINDUCTOR_CACHE_DIR")
    else:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    return out


def break_even(compile_s: float, batch: int, eager_rate: float, compiled_rate: float) -> float:
    """Optimizer steps after which the compiled run has caught up with eager (inf when it never does)."""
    saved = batch / eager_rate - batch / compiled_rate  # seconds per step
    return compile_s / saved if saved > 0 else math.inf


def rows_for(model: str, batch: int, m: dict[str, Any]) -> list[list[str]]:
    """One row per compiled arm, against eager on the same seeds."""
    eager = m["eager"]
    rows = []
    for arm in [a for a in m if a not in ("eager", "cold_startup_s")]:
        runs = m[arm]
        e_rate, c_rate = [r["samples_per_s"] for r in eager], [r["samples_per_s"] for r in runs]
        compile_s = [c["startup_s"] - e["startup_s"] for c, e in zip(runs, eager)]
        even = break_even(mean_sd(compile_s)[0], batch, mean_sd(e_rate)[0], mean_sd(c_rate)[0])
        cold = m["cold_startup_s"][arm] - m["cold_startup_s"]["eager"]
        frames = "/".join(map(str, sorted({r["frames_in_run"] for r in runs})))
        peak = "" if math.isnan(runs[0]["peak_gib"]) else f"{fmt([r['peak_gib'] for r in runs], 2)} " \
            f"(eager {fmt([r['peak_gib'] for r in eager], 2)})"
        rows.append([model, arm, fmt(e_rate, 1), fmt(c_rate, 1), fmt(ratios(c_rate, e_rate)),
                     f"{paired(c_rate, e_rate)['mean']:+.1f}", fmt(compile_s, 1), f"{cold:.1f}",
                     "never" if math.isinf(even) else f"{even:.0f}", frames, peak])
    return rows


def compare(quick: bool = False, seeds: int = 5, device: str = "") -> dict[str, Any]:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    models = CUDA_MODELS if device.startswith("cuda") else CPU_MODELS
    raw, rows = {}, []
    for name, spec in models.items():
        raw[name] = measure(spec, spec.quick_window if quick else spec.window, seeds, device)
        rows += rows_for(name, spec.batch, raw[name])
    windows = "; ".join(f"{m}: {window_rule(*(s.quick_window if quick else s.window))}" for m, s in models.items())
    return section("torch.compile vs eager (Trainer, train.compile)", windows,
                   ["model", "arm", "eager samples/s", "compiled samples/s", "ratio compiled/eager", "paired diff",
                    "compile s (warm cache)", "compile s (empty cache, 1 run)", "break-even steps",
                    "frames compiled per run", "peak GiB"], rows, seeds=seeds, quick=quick, raw=raw,
                   notes=[f"device {device}; inductor; CPU: fp32, text batches length-grouped (batch 32), ViT batch 8 "
                          "at 224 px; CUDA: CLIP ViT-B/16 bf16 batch 128, captions padded to 32 tokens",
                          "compile s = paired start-up difference (compiled - eager) per seed, each compiled run "
                          "tracing afresh (dynamo reset) with a warm inductor cache; break-even = its mean / the "
                          "mean step time saved",
                          "frames compiled per run: dynamo's compiles incl. recompiles and graph-break pieces; "
                          "'dynamic' = train.compile_dynamic=true (one dynamic graph from the first batch)"])


def main() -> None:
    script_main(compare, __doc__.split("\n")[0])


if __name__ == "__main__":
    main()
