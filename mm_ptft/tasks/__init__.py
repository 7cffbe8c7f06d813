"""Task recipes: each registers a config schema, a ``prepare(cfg)`` that builds model + data and a
``predict`` for raw inputs.

``mm-ptft train CONFIG`` reads ``task:`` from the YAML and looks the recipe up here, so adding a
task never edits the CLI, the trainer or the config module (which imports nothing of ours)."""
from __future__ import annotations

import os
from typing import Any, Sequence

from mm_ptft import config
from mm_ptft.contracts import BaseRecipe, Prepared, Recipe, Task
from mm_ptft.registry import Registry, import_submodules

TASKS: Registry[Recipe] = Registry("task")


def load_all() -> None:
    """Import every module of this package so that TASKS is complete (lazy, to avoid import cycles)."""
    import_submodules(__name__)


def get_recipe(name: str) -> Recipe:
    load_all()
    return TASKS.get(name)


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = (), schema: Any = None) -> Any:
    """``config.load_config`` with the schema looked up from the ``task`` key in the recipe registry."""
    return config.load_config(path, overrides, schema or (lambda task: get_recipe(task).config_cls))


__all__ = ["TASKS", "BaseRecipe", "Prepared", "Recipe", "Task", "get_recipe", "load_all", "load_config"]
