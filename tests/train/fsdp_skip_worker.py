"""``torchrun --nproc_per_node=2 tests/train/fsdp_skip_worker.py OUT_DIR``: a toy FSDP2 run (CPU, gloo) whose 3rd
training call has a NaN loss. Each rank writes ``OUT_DIR/rank<r>.json``: the host reads between log steps, the
non-finite steps counted, and whether its parameter shards and optimizer state changed at each step."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from mm_ptft.config import RunConfig, TrainConfig
from mm_ptft.contracts import Callback
from mm_ptft.data.text import Records
from mm_ptft.train import step as S
from mm_ptft.types import LABELS

from sync_util import NanLossAt, stray_reads


class Snapshots(Callback):
    """After every step, copies (on the device, no read) of this rank's parameter shards and optimizer state."""

    every_step = True

    def __init__(self) -> None:
        self.taken: list[list[torch.Tensor]] = []

    def on_step_end(self, trainer) -> None:
        local = lambda t: t.to_local() if hasattr(t, "to_local") else t  # noqa: E731
        state = [v for p in S.params_of(trainer.opt) for v in trainer.opt.state[p].values()]
        self.taken.append([local(t).detach().clone() for t in [*S.params_of(trainer.opt), *state]])


def main(out: Path) -> None:
    from mm_ptft.train.trainer import Trainer

    torch.manual_seed(0)
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))  # (N, 4)
    data = Records([{"x": x[i], LABELS: int(x[i, 0] > 0)} for i in range(32)])
    tc = TrainConfig(batch_size=4, report=False, device="cpu", precision="fp32", distributed="fsdp", max_steps=5,
                     log_every=5, eval_every=100, save_every=0, group_by_length=False)
    snaps = Snapshots()
    trainer = Trainer(NanLossAt(3), RunConfig(task="toy", output_dir=str(out / "run"), train=tc), data, None,
                      lambda its: {"x": torch.stack([i["x"] for i in its]), LABELS: torch.tensor([i[LABELS] for i in its])},
                      callbacks=[snaps])
    with pytest.MonkeyPatch.context() as mp:
        stray = stray_reads(mp, trainer)
    same = [all(torch.equal(a, b) for a, b in zip(s0, s1)) for s0, s1 in zip(snaps.taken, snaps.taken[1:])]
    result = {"stray": stray, "host_steps": trainer._host_steps, "bad": trainer.bad_steps_total,
              "unchanged_after": [i + 2 for i, s in enumerate(same) if s], "steps": len(snaps.taken)}
    (out / f"rank{trainer.dist.rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
