"""Small named registries: ``@REG.register()`` on a builder function, ``REG.build(spec)`` to call it.

A component in a config is ``{name: <registry key>, ...kwargs}``. Building checks the kwargs against
the builder's signature, so a typo in a config names the key instead of failing deep inside a model.
Every registry also takes ``name: my_pkg.module:builder`` (a module path, ``:``, an attribute): the user's own
builder, imported and called like a registered one. That is code the config names, so while a run directory
received from elsewhere is loaded (``untrusted_source``: data, not code) it is refused unless the command
runs with ``--trust-remote-code``, like an HF model's remote code.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import inspect
import pkgutil
import re
from typing import Any, Callable, Generic, Iterator, Mapping, TypeVar

T = TypeVar("T")

_ALL: dict[str, "Registry[Any]"] = {}


class RegistryError(KeyError):
    """A ``module.path:attribute`` name the registry refuses (cannot import it, not callable, refused in a received
    run directory); the message names the config key. A KeyError like the registry's unknown-name error, printed
    as its message (the command line's exit 2)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# ---- code named by a config: ``module.path:attribute`` ---------------------------------------------------------
#: what is being loaded while code its config names stays off ("" outside such a load)
_UNTRUSTED: contextvars.ContextVar[str] = contextvars.ContextVar("mm_ptft_untrusted", default="")
_DOTTED = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")


@contextlib.contextmanager
def untrusted_source(source: str) -> Iterator[None]:
    """While loading ``source`` (a run directory: data, not code), no code its config names runs: dotted-path
    builders and HF ``trust_remote_code`` are refused (the refusal names ``--trust-remote-code``)."""
    token = _UNTRUSTED.set(source)
    try:
        yield
    finally:
        _UNTRUSTED.reset(token)


def untrusted() -> str:
    """The source being loaded inside ``untrusted_source``, "" outside it."""
    return _UNTRUSTED.get()


def is_dotted_path(name: object) -> bool:
    """Whether ``name`` is ``module.path:attribute`` (a user's builder outside the registries)."""
    return isinstance(name, str) and _DOTTED.match(name) is not None


def import_builder(name: str, where: str) -> Callable[..., Any]:
    """The callable that ``module.path:attribute`` names (``where``: its config key, e.g. ``model.text``)."""
    module, _, attr = name.partition(":")
    source = untrusted()
    if source:
        raise RegistryError(f"{where}.name={name!r} names code outside mm_ptft (module {module}), and {source} is a "
                            f"run directory: data, not code, so its config cannot import code: pass "
                            f"--trust-remote-code to this command if you trust module {module}")
    try:
        obj: Any = importlib.import_module(module)
    except ImportError as err:
        raise RegistryError(f"{where}.name={name!r}: cannot import module {module!r} ({err}); is it on "
                            f"PYTHONPATH?") from err
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise RegistryError(f"{where}.name={name!r}: module {module!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise RegistryError(f"{where}.name={name!r} is a {type(obj).__name__}, not a callable builder")
    return obj


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

    def get(self, name: str, where: str = "") -> Callable[..., T]:
        """The builder of ``name``: a registered entry, a fallback's, or a ``module.path:attribute`` that
        ``import_builder`` imports (``where``: the config key named in its errors)."""
        fn = self._resolve(name)
        if fn is None and is_dotted_path(name):
            return import_builder(name, where or self.kind)
        if fn is None:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {self.choices()}")
        return fn

    def names(self) -> list[str]:
        """The registered entries (names that only a fallback resolves are not listed)."""
        return sorted(self._builders)

    def choices(self) -> str:
        """The registered names, then what each fallback accepts, for error messages."""
        return ", ".join([*self.names(), *(d for d, _ in self._fallbacks), "module.path:builder"])

    def __contains__(self, name: object) -> bool:
        """A registered or fallback name, or a dotted path by its form alone (no code is imported to answer:
        ``get``/``build`` import it and name what is wrong)."""
        return isinstance(name, str) and (self._resolve(name) is not None or is_dotted_path(name))

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
        fn = self.get(name, where)
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
