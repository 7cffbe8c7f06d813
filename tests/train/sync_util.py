"""For the sync-free step tests, in one process and under torchrun (``fsdp_skip_worker.py``): counting the host
reads of tensor values (each would wait for a GPU) a training run makes between its log steps, and a toy task
whose loss turns NaN at one step."""
import traceback

import torch
import torch.nn.functional as F
from torch import nn

from mm_ptft.contracts import Task
from mm_ptft.types import LABELS


class NanLossAt(Task):
    """Two linear layers (each an FSDP block) on ``x``; the ``at``-th training call's loss is NaN."""

    main_metric, greater_is_better = "loss", False

    def __init__(self, at: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(4, 8), nn.Linear(8, 2)])
        self.at, self.calls = at, 0

    def forward(self, batch):
        loss = F.cross_entropy(self.layers[1](self.layers[0](batch["x"]).relu()), batch[LABELS])  # ()
        if self.training:
            self.calls += 1
            loss = loss * (float("nan") if self.calls == self.at else 1.0)
        return {"loss": loss}

SYNCS = ("item", "__float__", "__int__", "__bool__", "tolist")


def _in_data_loading() -> bool:
    """Whether the read comes from the data loader (its CPU-side sampler and worker seeds at each epoch start:
    host tensors by design, never the device's)."""
    return any("/torch/utils/data/" in f.filename or "/torchdata/" in f.filename for f in traceback.extract_stack())


def stray_reads(monkeypatch, trainer) -> list[tuple[str, int]]:
    """Fit ``trainer`` counting every read of a tensor's value on the host (the calls that would wait for a GPU)
    and the step the loop was at: the reads outside the first step (it creates the optimizer state) and the
    log/eval/save steps, as (name, step)."""
    reads, allowed = [], [0]
    for name in SYNCS:
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, _name=name, **kw):
            if not _in_data_loading():
                reads.append((_name, getattr(trainer, "step", 0), allowed[0] > 0))
            return _real(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, counted)
    for method in ("log_train", "_check_faults", "_eval_and_save", "save_checkpoint"):
        real = getattr(trainer, method)

        def marked(*a, _real=real, **kw):
            allowed[0] += 1
            try:
                return _real(*a, **kw)
            finally:
                allowed[0] -= 1

        monkeypatch.setattr(trainer, method, marked)
    trainer.fit()
    assert any(ok for _, _, ok in reads)  # the log steps did read (the counting works)
    return [(name, step) for name, step, ok in reads if not ok and step >= 1]
