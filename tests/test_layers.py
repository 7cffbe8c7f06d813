"""The layering of ``mm_ptft`` (README § Architecture, DESIGN.md § Layout), enforced by walking every import (also
the lazy ones inside functions) with ``ast``: an import only ever points down to a layer the table below allows,
or sideways where the sibling table allows it; and no module imports itself back through others (no circle)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mm_paths import ROOT

PACKAGE = Path(ROOT) / "mm_ptft"

#: top-level module or package of mm_ptft → its layer, highest first
LAYERS = {
    "front": ["cli"],  # the only module that may import any layer
    "workflows": ["workflows"],  # cv, sweep, fewshot, quickstart: built on run/, never on the api facade
    "api": ["api"],  # re-exports only
    "run": ["run"],  # config → recipe → trainer → run dir; export, hub, prune, continual, check_data, components
    "assembly": ["tasks"],
    "task_models": ["heads"],
    "components": ["objectives", "encoders", "data", "metrics", "features"],
    "engine": ["train"],
    "ground": ["contracts", "types", "registry", "config", "env"],
}
#: layer → the layers it may import (besides its own top-level module or package); the ground imports nothing
MAY_IMPORT = {
    "front": set(LAYERS) - {"front"},
    "workflows": {"run", "assembly", "task_models", "components", "engine", "ground"},
    "api": {"run", "assembly", "task_models", "components", "engine", "ground"},
    "run": {"assembly", "task_models", "components", "engine", "ground"},
    "assembly": {"task_models", "components", "engine", "ground"},
    "task_models": {"components", "ground"},
    "components": {"ground"},  # and the siblings below; never the engine
    "engine": {"ground"},  # trains whatever Task it is given: never a component or a task
    "ground": set(),
}
#: components may import these sibling components (lower in the column); shared pieces live in one module below
COMPONENT_SIBLINGS = {
    "objectives": {"encoders", "features"},  # objectives own learnable parts built on encoders' outputs
    "encoders": {"features"},  # audio features: computed the same way as the data pipeline does
    "data": {"features"},
    "metrics": set(),
    "features": set(),
}


def layer_of(top: str) -> str:
    found = [layer for layer, names in LAYERS.items() if top in names]
    assert found, f"mm_ptft.{top} has no layer: add it to LAYERS in {__file__}"
    return found[0]


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(path: Path) -> set[str]:
    """The mm_ptft modules a file imports (``from mm_ptft.run import export`` → ``mm_ptft.run.export``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mm_ptft"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("mm_ptft")}
    return found - ({module_name(path)} if PACKAGE in path.parents else set())


def top(module: str) -> str:
    """``mm_ptft.run.export`` → ``run``; the package root is ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def allowed(src: str, target: str) -> bool:
    if src == "__init__":
        return target in ("env", "api")  # the guard first; the public API on first use
    if target == src:
        return True
    if target == "__init__":  # the package root (``import mm_ptft``): the front only
        return src == "cli"
    layer, other = layer_of(src), layer_of(target)
    if layer == other == "components":
        return target in COMPONENT_SIBLINGS[src]
    return other in MAY_IMPORT[layer]


def test_every_module_has_a_layer():
    for name in MODULES:
        if top(name) != "__init__":
            layer_of(top(name))


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down(name):
    bad = sorted(t for t in imported(MODULES[name]) if not allowed(top(name), top(t)))
    assert not bad, f"{name} ({'root' if top(name) == '__init__' else layer_of(top(name))}) imports {bad}"


def test_only_the_front_may_import_every_layer():
    assert [layer for layer, may in MAY_IMPORT.items() if may == set(LAYERS) - {layer}] == ["front"]
    order = list(LAYERS)
    for layer, may in MAY_IMPORT.items():  # nothing points up the column
        assert all(order.index(other) > order.index(layer) for other in may), layer


def test_no_module_imports_itself_back():
    """No circle of imports between modules (lazy ones included): Tarjan's strongly connected components."""
    graph = {n: {t for t in imported(p) if t in MODULES} for n, p in MODULES.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = stack[stack.index(v):]
            del stack[stack.index(v):]
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, circles


def test_the_checker_sees_a_bad_arrow(tmp_path):
    """The walk finds lazy imports and ``from mm_ptft.x import y`` submodules, and the table refuses an upward one."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from mm_ptft.run import export\n    import mm_ptft.tasks.common\n")
    assert imported(src) == {"mm_ptft.run.export", "mm_ptft.tasks.common"}
    assert not allowed("train", "tasks") and not allowed("encoders", "train") and not allowed("data", "encoders")
    assert not allowed("workflows", "api") and not allowed("contracts", "types") and allowed("cli", "api")


def test_package_root_is_light():
    """``import mm_ptft`` runs the torchaudio guard before anything imports transformers: at module level the
    package root imports only ``env``; the API (``api``, which fills every registry) only inside functions."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    eager = {a.name for node in tree.body if isinstance(node, ast.Import) for a in node.names} | \
        {node.module for node in tree.body if isinstance(node, ast.ImportFrom)}
    assert {m for m in eager if m.startswith("mm_ptft")} == {"mm_ptft.env"}, eager


def test_the_package_root_holds_only_the_front_api_and_ground():
    """Floors are folders: at the root only cli, api, the package root and the ground floor are modules."""
    flat = {p.stem for p in PACKAGE.glob("*.py")}
    assert flat == {"__init__", "cli", "api", *LAYERS["ground"]}, flat


def test_recipes_import_only_the_run_path_tasks_and_trainer():
    """A recipe script is an entry point: it may use the run path, the trainer and a task's config."""
    for script in sorted((Path(ROOT) / "recipes").glob("*/train.py")):
        tops = {top(m) for m in imported(script)}
        assert tops <= {"run", "tasks", "train"}, script
