"""Small named registries: ``@REG.register()`` on a builder function, ``REG.build(spec)`` to call it.

A component in a config is ``{name: <registry key>, ...kwargs}``. Building checks the kwargs against
the builder's signature, so a typo in a config names the key instead of failing deep inside a model.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any, Callable, Generic, Iterator, Mapping, TypeVar

T = TypeVar("T")

_ALL: dict[str, "Registry[Any]"] = {}


class Registry(Generic[T]):
    """Maps public names to builder functions of one kind of component."""

    def __init__(self, kind: str, record_spec: bool = False) -> None:
        """``record_spec``: ``build`` sets ``.spec`` (``{name, **kwargs}``, runtime arguments left out) on
        what it builds, so the object knows how to rebuild itself (encoders save it beside their weights)."""
        if kind in _ALL:
            raise ValueError(f"a registry named {kind!r} exists already")
        self.kind, self.record_spec = kind, record_spec
        self._builders: dict[str, Callable[..., T]] = {}
        _ALL[kind] = self

    def register(self, name: str | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: register ``fn`` under ``name`` (default: the function's own name)."""

        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            key = name or fn.__name__
            if key in self._builders:
                raise ValueError(f"{self.kind}: {key!r} is registered twice")
            self._builders[key] = fn
            return fn

        return deco

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._builders:
            known = ", ".join(sorted(self._builders)) or "(none)"
            raise KeyError(f"unknown {self.kind} {name!r}; known: {known}")
        return self._builders[name]

    def names(self) -> list[str]:
        return sorted(self._builders)

    def __contains__(self, name: object) -> bool:
        return name in self._builders

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def build(self, spec: Mapping[str, Any] | str, where: str = "", **extra: Any) -> T:
        """Build from ``{name: key, **kwargs}`` (or a bare name). ``extra`` are runtime arguments
        (e.g. a corpus) passed only when the builder accepts them. ``where`` is the config path
        used in error messages, e.g. ``model.text``."""
        spec = {"name": spec} if isinstance(spec, str) else dict(spec)
        where = where or self.kind
        if "name" not in spec:
            raise KeyError(f"{where}: missing required key 'name' (one of: {', '.join(self.names())})")
        name = spec.pop("name")
        fn = self.get(name)
        params = inspect.signature(fn).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        if not takes_any:
            unknown = sorted(k for k in spec if k not in params or k == "where")  # where: the config path itself
            if unknown:
                allowed = ", ".join(k for k in params if k not in extra and k != "where")
                raise KeyError(f"{where}: unknown key(s) {', '.join(where + '.' + k for k in unknown)}; "
                               f"accepted: {allowed}")
        runtime = {k: v for k, v in extra.items() if takes_any or k in params}
        if "where" in params:  # a builder that names its config path in its errors
            runtime["where"] = where
        built = fn(**spec, **runtime)
        if self.record_spec:
            built.spec = {"name": name, **spec}
        return built


def all_registries() -> dict[str, Registry[Any]]:
    """Every registry created so far (import ``mm_ptft.components`` first to fill them)."""
    return dict(_ALL)


def import_submodules(package: str) -> None:
    """Import every module of ``package``, so the registries its modules fill are complete."""
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{package}.{info.name}")
