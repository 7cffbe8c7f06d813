"""Import every module that registers components, so all registries are filled.

Discovery is by package walk: a new encoder, objective, head, data generator or task module is
registered by adding its file; no central list to edit."""
from __future__ import annotations

import importlib

from mm_ptft.registry import import_submodules

PACKAGES = ["mm_ptft.encoders", "mm_ptft.heads", "mm_ptft.objectives", "mm_ptft.data", "mm_ptft.tasks"]
MODULES = ["mm_ptft.fusion", "mm_ptft.finetune", "mm_ptft.train.optim", "mm_ptft.train.parallel",
           "mm_ptft.train.callbacks", "mm_ptft.train.trackers"]


def load_components() -> None:
    for name in PACKAGES:
        import_submodules(name)
    for name in MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
