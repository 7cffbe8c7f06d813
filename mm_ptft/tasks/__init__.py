"""Task recipes: each module writes a config schema, ``prepare(cfg)`` (model + data) and ``predict`` (raw
inputs), and registers them with one line, ``MyTask = recipe(MyTaskConfig, prepare, predict)``.

``mm-ptft train CONFIG`` reads ``task:`` from the YAML and looks the recipe up here, so adding a
task never edits the CLI, the trainer or the config module (which imports nothing of ours)."""
from __future__ import annotations

import importlib
import os
from typing import Any, Callable, Mapping, Optional, Sequence

from mm_ptft import config
from mm_ptft.contracts import BaseRecipe, Prepared, Recipe, Task
from mm_ptft.registry import Registry, import_submodules

TASKS: Registry[Recipe] = Registry("task")


def recipe(config: type, prepare: Callable[..., Prepared], predict: Optional[Callable[..., list]] = None,
           exported: Optional[Callable[..., tuple]] = None) -> type[BaseRecipe]:
    """Register a recipe under its config's ``task`` default and return it as a class (``MyTask.prepare(cfg)``)."""
    name = config.task
    parts = {"prepare": prepare, "predict": predict, "exported": exported}
    body = {k: staticmethod(fn) for k, fn in parts.items() if fn is not None}
    cls = type("".join(w.capitalize() for w in name.split("_")), (BaseRecipe,),
               {"config_cls": config, "__module__": prepare.__module__, "__doc__": prepare.__doc__, **body})
    return TASKS.register(name)(cls)


def load_all() -> None:
    """Import every module of this package so that TASKS is complete (lazy, to avoid import cycles)."""
    import_submodules(__name__)


def get_recipe(name: str) -> Recipe:
    """The recipe registered as ``name``. A recipe lives in the module of its name (``tasks/<name>.py``), so only
    that module is imported (a text run loads no image, audio or detection stack); other names load every module."""
    if name not in TASKS.names() and name.isidentifier():
        try:
            importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
    if name not in TASKS.names():
        load_all()
    return TASKS.get(name)


def load_config(path: str | os.PathLike | Mapping[str, Any] | None, overrides: Sequence[str] = (),
                schema: Any = None) -> Any:
    """``config.load_config`` with the schema looked up from the ``task`` key in the recipe registry."""
    return config.load_config(path, overrides, schema or (lambda task: get_recipe(task).config_cls))


__all__ = ["TASKS", "BaseRecipe", "Prepared", "Recipe", "Task", "get_recipe", "load_all", "load_config", "recipe"]
