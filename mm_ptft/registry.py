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
        self._fallbacks: list[tuple[str, Callable[[str], Callable[..., T] | None]]] = []
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

    def fallback(self, describe: str) -> Callable[[Callable[[str], Callable[..., T] | None]], Callable[[str], Any]]:
        """Decorator: ``resolve(name)`` returns a builder for a name no entry has, or None; it opens the registry to
        a whole family (e.g. any torch optimizer by class name). ``describe`` names that family in error messages."""

        def deco(resolve: Callable[[str], Callable[..., T] | None]) -> Callable[[str], Any]:
            self._fallbacks.append((describe, resolve))
            return resolve

        return deco

    def _resolve(self, name: str) -> Callable[..., T] | None:
        if name in self._builders:
            return self._builders[name]
        return next((fn for _, resolve in self._fallbacks if (fn := resolve(name)) is not None), None)

    def get(self, name: str) -> Callable[..., T]:
        fn = self._resolve(name)
        if fn is None:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {self.choices()}")
        return fn

    def names(self) -> list[str]:
        """The registered entries (names that only a fallback resolves are not listed)."""
        return sorted(self._builders)

    def choices(self) -> str:
        """The registered names, then what each fallback accepts, for error messages."""
        return ", ".join([*self.names(), *(d for d, _ in self._fallbacks)]) or "(none)"

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._resolve(name) is not None

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
    """Every registry created so far (import ``mm_ptft.run.components`` first to fill them)."""
    return dict(_ALL)


def import_submodules(package: str) -> None:
    """Import every module of ``package`` and its subpackages, so the registries its modules fill are complete."""
    pkg = importlib.import_module(package)
    for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}."):
        importlib.import_module(info.name)
