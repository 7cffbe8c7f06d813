"""Does cross-modal pretraining help few-label fine-tuning? The quickstart's comparison over seeds.

    python benchmarks/pretrain_vs_scratch.py [--quick] [--seeds 5] [--device cpu|cuda] [--threads 1]

Per seed, ``mm_ptft.workflows.quickstart.pretrained_vs_scratch`` pretrains jointly (image-text and audio-text CLIP plus
masked text) on the generated shapes, then fine-tunes each setup (multimodal over gated fusion, and each
modality alone) on 4 labels per class from the pretrained encoders and from scratch. Both arms of a seed
share the labelled rows, the fine-tuning seed, the architecture and the tokenizer (the pretraining run's),
so the paired difference pretrained − scratch is the pretrained weights' effect. Table: accuracy on the
200 eval samples, mean ± sd over seeds, and the paired difference's mean ± sd.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import fmt, fmt_paired, script_main, section  # noqa: E402
from mm_ptft.workflows.quickstart import SETUPS, pretrained_vs_scratch  # noqa: E402

STEPS = {"quick": 60, "full": 400}  # pretraining steps; 400 is the quickstart's default


def measure(steps: int, seeds: int, device: str) -> list[dict[str, Any]]:
    runs = []
    for seed in range(seeds):
        with tempfile.TemporaryDirectory() as out:
            runs.append(pretrained_vs_scratch(Path(out), steps, device, per_class=4, seed=seed))
    return runs


def compare(quick: bool = False, seeds: int = 5, device: str = "") -> dict[str, Any]:
    steps = STEPS["quick" if quick else "full"]
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    runs = measure(steps, seeds, device)
    acc = {setup: {arm: [r["few_label_accuracy"][setup][arm] for r in runs] for arm in ("pretrained", "scratch")}
           for setup in SETUPS}
    rows = [[setup, fmt(a["pretrained"]), fmt(a["scratch"]), fmt_paired(a["pretrained"], a["scratch"])]
            for setup, a in acc.items()]
    rule = (f"accuracy on the 200 generated eval samples after fine-tuning on 4 labels per class (chance 0.25); "
            f"per seed: labelled rows, pretraining ({steps} steps) and fine-tuning seeded alike for both arms; "
            f"scratch = same architecture and the pretraining run's tokenizer, random weights; "
            f"gain = paired difference pretrained − scratch, mean ± sd over seeds")
    return section("Pretrained vs scratch (the quickstart, over seeds)", rule,
                   ["setup (4 labels per class)", "pretrained", "scratch", "gain (paired)"], rows, seeds=seeds,
                   quick=quick, notes=[f"device {device}; `mm-ptft quickstart` runs seed 0 of this comparison"
                                       + ("" if quick else " at the same sizes")], raw=acc)


def main() -> None:
    script_main(compare, __doc__.split("\n")[0])


if __name__ == "__main__":
    main()
