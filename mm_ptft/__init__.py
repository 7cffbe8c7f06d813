"""mm_ptft: multimodal pretraining and fine-tuning.

The Python API (``mm_ptft.build_encoder``, ``load_encoder``, ``load_run``, ``load_config``, ``train``,
``predict``, ``evaluate``, ``registries``, ``list_components``) lives in ``mm_ptft.api`` and is loaded on first
use (PEP 562), so ``import mm_ptft`` stays light (no torch: tests/test_package_root.py checks what it loads) and
the torchaudio guard below runs just before anything imports transformers. ``mm_ptft.train`` is both the training package (``mm_ptft.train.trainer``…) and, called, the API's
``train(config, overrides)``.
"""
__version__ = "0.1.0"

import importlib as _importlib
import importlib.abc as _abc
import importlib.util as _util
import sys as _sys
import types as _types
import warnings as _warnings
from typing import Any as _Any

from mm_ptft.env import guard_torchaudio_lazily as _guard_torchaudio_lazily

# A torchaudio built for another torch must not take text and image work down (transformers imports it
# when present); audio features then stop with a message naming the versions (see ``mm-ptft doctor``). The
# check imports torch and torchaudio (seconds), so it runs just before transformers is first imported.
_guard_torchaudio_lazily()

#: names served by ``mm_ptft.api`` (loading it fills every registry)
_API = ("build_encoder", "evaluate", "from_pretrained", "list_components", "load_config", "load_encoder", "load_run",
        "predict", "registries")
__all__ = [*_API, "train"]


def __getattr__(name: str) -> _Any:
    if name in _API:
        from mm_ptft import api

        return getattr(api, name)
    raise AttributeError(f"module 'mm_ptft' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _TrainPackage(_types.ModuleType):
    """``mm_ptft.train``: the training package, callable as ``mm_ptft.api.train``."""

    def __call__(self, *args: _Any, **kwargs: _Any) -> _Any:
        from mm_ptft import api

        return api.train(*args, **kwargs)


class _Package(_types.ModuleType):
    # ``train`` is a subpackage and an API function: the package is returned, made callable, whatever the
    # import order (the import system sets the attribute when ``mm_ptft.train`` is first imported).
    @property
    def train(self) -> _types.ModuleType:
        pkg = _sys.modules.get(__name__ + ".train") or _importlib.import_module(__name__ + ".train")
        if not isinstance(pkg, _TrainPackage):
            pkg.__class__ = _TrainPackage
        return pkg

    @train.setter
    def train(self, module: _types.ModuleType) -> None:
        if not isinstance(module, _TrainPackage):
            module.__class__ = _TrainPackage


_sys.modules[__name__].__class__ = _Package

#: import paths of modules moved when the flat root became floors (0.1 → 0.2); each old path still imports the
#: module, with a DeprecationWarning, until the next release
MOVED = {
    **{f"mm_ptft.{m}": f"mm_ptft.run.{m}" for m in ("export", "hub", "prune", "continual", "check_data", "components")},
    **{f"mm_ptft.{m}": f"mm_ptft.workflows.{m}" for m in ("cv", "sweep", "fewshot", "quickstart")},
    "mm_ptft.finetune": "mm_ptft.train.finetune", "mm_ptft.report": "mm_ptft.train.report",
    "mm_ptft.fusion": "mm_ptft.encoders.fusion",
    **{f"mm_ptft.data.generated_{m}": f"mm_ptft.data.generated.{m}" for m in ("images", "audio", "multimodal",
                                                                               "regression")},
}


class _MovedModules(_abc.MetaPathFinder, _abc.Loader):
    """Serves an old import path (``mm_ptft.export``) as the very module at its new one (``mm_ptft.run.export``):
    one module object under both names, so monkeypatching either reaches the same code."""

    def find_spec(self, fullname: str, path: _Any = None, target: _Any = None) -> _Any:
        return _util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec: _Any) -> _types.ModuleType:
        new = MOVED[spec.name]
        _warnings.warn(f"{spec.name} moved to {new}; import it from there (the old path goes in the next release)",
                       DeprecationWarning, stacklevel=2)
        return _importlib.import_module(new)

    def exec_module(self, module: _types.ModuleType) -> None:
        """Already executed under its new name."""


_sys.meta_path.insert(0, _MovedModules())
