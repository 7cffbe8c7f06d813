"""Classification metrics accumulated on the device (no host sync per batch, no torchmetrics: its package import
loads its image, audio and plotting stacks, seconds of a text run): a confusion matrix, the softmax scores and
labels (for AUROC), and top-5 hits; computed once, gathered across ranks."""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import torch

from mm_ptft.types import LABELS


def _metric_names(num_classes: int, labels: Sequence[str]) -> list[str]:
    """Class names safe in a metric key (``precision_<name>``); class indices when names are missing or clash."""
    names = [re.sub(r"[^\w.-]+", "_", str(n)) for n in labels]
    return names if len(names) == num_classes and len(set(names)) == num_classes else [str(i) for i in range(num_classes)]


def _safe_div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(b > 0, a / b.clamp(min=1), torch.zeros_like(a))


def auroc_one_vs_rest(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-class AUROC of ``scores[:, c]`` for ``labels == c`` (Mann-Whitney: the share of (positive, negative) pairs
    ordered right, ties counted half), NaN where a class has no positive or no negative."""
    out = torch.full((scores.shape[1],), float("nan"), dtype=torch.float64)
    for c in range(scores.shape[1]):
        s, pos = scores[:, c].double(), labels == c
        n_pos = int(pos.sum())
        n_neg = len(s) - n_pos
        if n_pos == 0 or n_neg == 0:
            continue
        uniq, inverse, counts = torch.unique(s, sorted=True, return_inverse=True, return_counts=True)
        rank = (counts.cumsum(0) - (counts - 1) / 2).double()[inverse]  # 1-based average rank of each score
        out[c] = (rank[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return out


class ClassificationMetrics:
    """Top-1 accuracy, macro-F1 (over the classes in the labels or predictions), macro and per-class
    precision/recall (``precision_<label>``, ``recall_<label>``), AUROC (binary for 2 classes, else macro
    one-vs-rest over the classes present in the eval labels, of the softmax scores; absent when undefined) and
    (with more than 5 classes) top-5 accuracy from ``out['logits']``.

    The confusion matrix (counts, rows = true class) is not a scalar: :meth:`artifacts` gives it, and the
    trainer writes it to ``confusion_matrix.json`` in the run directory at the final evaluation."""

    def __init__(self, num_classes: int, labels: Sequence[str] = ()) -> None:
        self.num_classes, self.labels = num_classes, list(labels)
        self.names = _metric_names(num_classes, self.labels)
        self.device = torch.device("cpu")
        self._confusion: list[list[int]] = []
        self.reset()

    def reset(self) -> None:
        c = self.num_classes
        self.cm = torch.zeros(c * c, dtype=torch.long, device=self.device)  # (C*C,) row = true class
        self.top5 = torch.zeros((), dtype=torch.long, device=self.device)
        self.scores: list[torch.Tensor] = []  # (B, C) softmax per batch, on the device
        self.targets: list[torch.Tensor] = []  # (B,)

    def to(self, device: torch.device) -> "ClassificationMetrics":
        self.device = torch.device(device)
        self.cm, self.top5 = self.cm.to(self.device), self.top5.to(self.device)
        return self

    def update(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        labels = batch[LABELS]
        if labels.ndim == 2:  # soft targets
            labels = labels.argmax(-1)
        logits = out["logits"].detach().float()  # (B, C)
        labels = labels.to(logits.device).long()  # (B,)
        self.cm.index_add_(0, labels * self.num_classes + logits.argmax(-1), torch.ones_like(labels))  # no sync
        if self.num_classes > 5:
            self.top5 += (logits.topk(5, -1).indices == labels[:, None]).any(-1).sum()
        self.scores.append(logits.softmax(-1))
        self.targets.append(labels)

    def _gathered(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """The confusion matrix (C, C), scores (N, C), labels (N,) and top-5 hits of every rank, on the CPU."""
        c = self.num_classes
        mine = (self.cm.cpu(), torch.cat(self.scores).cpu() if self.scores else torch.zeros(0, c),
                torch.cat(self.targets).cpu() if self.targets else torch.zeros(0, dtype=torch.long), int(self.top5))
        parts = [mine]
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # every rank's share
            parts = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, mine)
        return (sum(p[0] for p in parts).view(c, c), torch.cat([p[1] for p in parts]),
                torch.cat([p[2] for p in parts]), sum(p[3] for p in parts))

    def compute(self) -> dict[str, float]:
        cm, scores, targets, top5 = self._gathered()
        self._confusion = cm.tolist()
        tp, predicted, present = cm.diag().double(), cm.sum(0).double(), cm.sum(1).double()
        total = float(cm.sum())
        precision, recall = _safe_div(tp, predicted), _safe_div(tp, present)
        f1 = _safe_div(2 * tp, predicted + present)
        # macro means over the classes seen in the labels or the predictions (sklearn's convention; an
        # undefined precision/recall counts 0); a class never seen would otherwise drag them down
        seen = (predicted > 0) | (present > 0)
        results = {"accuracy": float(tp.sum() / total) if total else 0.0,
                   "macro_f1": float(f1[seen].mean()) if seen.any() else 0.0}
        if self.num_classes > 5:
            results["top5_accuracy"] = top5 / total if total else 0.0
        results["macro_precision"] = float(precision[seen].mean()) if seen.any() else 0.0
        results["macro_recall"] = float(recall[seen].mean()) if seen.any() else 0.0
        # AUROC needs positives and negatives: one-vs-rest over the classes present (not all of them); left out
        # when undefined (an eval set of one class)
        auroc = auroc_one_vs_rest(scores, targets)
        has_both = ~auroc.isnan()
        if self.num_classes == 2:  # binary: the AUROC of the class-1 score (equal for both one-vs-rest halves)
            if has_both.all():
                results["auroc"] = float(auroc[1])
        elif has_both.any():
            results["auroc"] = float(auroc[has_both].mean())
        for i, name in enumerate(self.names):
            results[f"precision_{name}"] = float(precision[i])
            results[f"recall_{name}"] = float(recall[i])
        return results

    def artifacts(self) -> dict[str, Any]:
        """Non-scalar results of the last :meth:`compute`, by file stem (written as ``<stem>.json``)."""
        return {"confusion_matrix": {"labels": self.labels or list(range(self.num_classes)),
                                     "matrix": self._confusion}} if self._confusion else {}


class EmaMetrics:
    """Classification metrics for the live weights and, under an ``ema_`` prefix, the EMA weights."""

    def __init__(self, num_classes: int, labels: Sequence[str] = ()) -> None:
        self.live, self.ema = ClassificationMetrics(num_classes, labels), ClassificationMetrics(num_classes, labels)

    def to(self, device: torch.device) -> "EmaMetrics":
        self.live, self.ema = self.live.to(device), self.ema.to(device)
        return self

    def update(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        self.live.update(out, batch)
        self.ema.update({"logits": out["ema_logits"]}, batch)

    def compute(self) -> dict[str, float]:
        return {**self.live.compute(), **{f"ema_{k}": v for k, v in self.ema.compute().items()}}

    def artifacts(self) -> dict[str, Any]:
        return self.live.artifacts()
