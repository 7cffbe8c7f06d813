"""Task recipes: each registers a config schema and a ``prepare(cfg)`` that builds model + data.

``mm-ptft train CONFIG`` reads ``task:`` from the YAML and looks the recipe up here, so adding a
task never edits the CLI or the trainer."""
from __future__ import annotations

from typing import Any, Protocol

from mm_ptft.config import RunConfig
from mm_ptft.registry import Registry
from mm_ptft.tasks.base import Prepared, Task


class Recipe(Protocol):
    config_cls: type[RunConfig]

    def prepare(self, cfg: Any, train: bool = True) -> Prepared: ...


TASKS: Registry[Recipe] = Registry("task")

def load_all() -> None:
    """Import every module of this package so that TASKS is complete (lazy, to avoid import cycles)."""
    from mm_ptft.components import import_submodules

    import_submodules(__name__)


def get_recipe(name: str) -> Recipe:
    load_all()
    return TASKS.get(name)


__all__ = ["TASKS", "Prepared", "Recipe", "Task", "get_recipe", "load_all"]
