"""``torchrun`` entry point for the 2-process tests: runs ``mm-ptft train`` once per argument group.

    torchrun --nproc_per_node=2 tests/train/dist_worker.py CONFIG k=v ... -- CONFIG k=v ...

A group whose run directory already has ``final_metrics.json`` is skipped, so a worker group that
torchrun restarts redoes only the unfinished run. With ``MM_PTFT_TEST_FAIL=<step>:<marker file>``
rank 1 of the run writing to ``MM_PTFT_TEST_FAIL_RUN`` (an output_dir) dies (``os._exit(1)``) once, right
after optimizer step <step>, leaving the marker file. This failure injection lives here, in the tests,
not in the trainer.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path


def _inject_failure(spec: str, run_dir: str) -> None:
    from mm_ptft.train.trainer import Trainer

    step, marker = spec.split(":", 1)
    real_step = Trainer._optimizer_step

    def failing(self):  # type: ignore[no-untyped-def]
        norm = real_step(self)
        chosen = str(self.run_dir) == run_dir and self.dist.rank == 1 and self.step == int(step)
        if chosen and not os.path.exists(marker):
            Path(marker).write_text(f"rank 1 killed after step {self.step}\n")
            os._exit(1)
        return norm

    Trainer._optimizer_step = failing


def main(argv: list[str]) -> int:
    from mm_ptft.cli import main as cli

    if os.environ.get("MM_PTFT_TEST_FAIL"):
        _inject_failure(os.environ["MM_PTFT_TEST_FAIL"], os.environ["MM_PTFT_TEST_FAIL_RUN"])
    groups = [[]]
    for a in argv:
        groups.append([]) if a == "--" else groups[-1].append(a)
    for args in groups:
        out = next(a.split("=", 1)[1] for a in args if a.startswith("output_dir="))
        if not (Path(out) / "final_metrics.json").exists():
            rc = cli(["train", *args])
            if rc:
                return rc
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
