"""Evaluation metrics (torchmetrics underneath, which syncs them across ranks; classification accumulates its
own on the device): one module per kind of output. Each class follows the ``contracts.Metrics`` protocol: ``update(out, batch)``, ``compute()``, ``to(device)``."""
from mm_ptft.metrics.classification import ClassificationMetrics

__all__ = ["ClassificationMetrics"]
