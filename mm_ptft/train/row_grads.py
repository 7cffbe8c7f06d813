"""Gradients of large CPU embedding tables as the rows a step touched, written into one kept buffer.

A dense ``nn.Embedding`` backward allocates a fresh (V, D) gradient each step and zero-fills it: for MiniLM's
30522 x 384 word table that is 47 MB of new pages to fault in, ~14 ms of a ~190 ms CPU step, and the rows a batch
uses are a few hundred. With ``sparse=True`` the backward yields only those rows; before clipping and the
optimizer step ``RowGrads.densify`` writes them into a dense buffer kept across steps, after zeroing only the rows
the previous step wrote there. The optimizer, clipping and the gradient norm see the same dense gradient as
before (duplicated ids summed in another order: equal to float rounding), so every optimizer works unchanged and
AdamW still decays the moments of untouched rows. ``benchmarks/train_step_vs_hf.py`` measures the step.

Only where it pays and is safe: a CPU device, one process (DDP/FSDP reduce dense buckets), no ``torch.compile``,
a trainable table of at least ``MIN_NUMEL`` values that no other module shares (tied input/output embeddings
get a dense gradient from the output side anyway). ``train.sparse_embedding_grads=false`` turns it off. The
tables get ``sparse=False`` back when the fit ends, so code that goes on with the model sees plain modules.
"""
from __future__ import annotations

from collections import Counter
from typing import Optional

import torch
from torch import nn

MIN_NUMEL = 1 << 20  # 4 MB of fp32: below this a dense gradient costs next to nothing


def eligible_tables(model: nn.Module) -> list[nn.Embedding]:
    """The trainable, unshared ``nn.Embedding`` tables of ``model`` with at least ``MIN_NUMEL`` values that are
    not sparse already."""
    uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    return [m for m in model.modules()
            if isinstance(m, nn.Embedding) and not m.sparse and m.weight.requires_grad
            and m.weight.numel() >= MIN_NUMEL and uses[id(m.weight)] == 1]


class _Table:
    """One table: its kept dense buffer and the rows of it that hold the last gradient written there."""

    def __init__(self, module: nn.Embedding) -> None:
        self.module, self.param = module, module.weight
        self.buffer: Optional[torch.Tensor] = None
        self.rows: Optional[torch.Tensor] = None  # (R,) rows holding values; None: the buffer is all zeros
        self.dirty = False  # the buffer was handed out and may have been changed in place (zero it whole)
        module.sparse = True

    @torch.no_grad()
    def densify(self) -> None:
        grad = self.param.grad
        if grad is None:
            return
        if not grad.is_sparse:  # a dense part joined (an L1 penalty, the weight read elsewhere): autograd densified
            self.dirty = self.dirty or grad is self.buffer
            return
        grad = grad.coalesce()
        rows, values = grad.indices()[0], grad.values()  # (R,), (R, D): each row once, duplicates summed
        if self.buffer is None:
            self.buffer = torch.zeros_like(self.param, memory_format=torch.contiguous_format)
        elif self.dirty:
            self.buffer.zero_()
        elif self.rows is not None:
            self.buffer.index_fill_(0, self.rows, 0.0)
        self.buffer.index_copy_(0, rows, values.to(self.buffer.dtype))
        self.rows, self.dirty = rows, True  # handed out: zero_grad(set_to_none=False) or in-place use may follow
        self.param.grad = self.buffer

    def released(self, finite: bool) -> None:
        """After the optimizer step, once ``zero_grad(set_to_none=True)`` dropped the gradient: only the written
        rows can be non-zero (clipping and unscaling multiply the buffer by a finite factor), so the next
        ``densify`` zeroes them alone. After a NaN/Inf step clipping may have spread NaN over the whole buffer:
        then it is zeroed whole."""
        if self.param.grad is None and finite:
            self.dirty = False


class RowGrads:
    """Sparse-row gradients for ``tables`` (``eligible_tables``): ``densify`` after the backward(s) of a step,
    ``released`` after its ``zero_grad``, ``close`` when the fit ends."""

    def __init__(self, tables: list[nn.Embedding]) -> None:
        self.tables = [_Table(m) for m in tables]

    @classmethod
    def for_fit(cls, model: nn.Module, device: torch.device, enabled: bool, distributed: bool,
                compiled: bool) -> "RowGrads":
        use = enabled and device.type == "cpu" and not distributed and not compiled
        return cls(eligible_tables(model) if use else [])

    def densify(self) -> None:
        for t in self.tables:
            t.densify()

    def released(self, found_inf: torch.Tensor) -> None:
        """``found_inf``: the step's NaN/Inf flag (a CPU tensor here: reading it costs no sync)."""
        if self.tables:
            finite = not bool(found_inf)
            for t in self.tables:
                t.released(finite)

    def close(self) -> None:
        for t in self.tables:
            t.module.sparse = False
        self.tables = []
