"""The layering of ``mm_ptft`` (README § Architecture), enforced by walking every import (also the lazy
ones inside functions) with ``ast``: an import only ever points down a layer, or sideways where the
table below allows it."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mm_paths import ROOT

PACKAGE = Path(ROOT) / "mm_ptft"

#: top-level module or package of mm_ptft → its layer (lowest first)
LAYERS = {
    "ground": ["contracts", "types", "registry", "config", "env"],
    "components": ["encoders", "fusion", "objectives", "heads", "data", "metrics"],
    "engine": ["train", "finetune", "report"],
    "assembly": ["tasks"],
    # ``__init__`` is entry-level through lazy attributes only: it imports ``env`` eagerly (the torchaudio
    # guard runs first) and ``api`` inside ``__getattr__``/``train`` (see test_package_root_is_light)
    "entry": ["cli", "run", "quickstart", "export", "hub", "components", "api", "sweep", "prune", "cv", "fewshot",
              "check_data", "continual", "__init__"],
}
ORDER = list(LAYERS)
#: components may import these sibling components (besides their own package and the ground floor)
COMPONENT_SIBLINGS = {
    "encoders": set(),
    "fusion": set(),
    "metrics": set(),
    "data": {"encoders"},  # audio features are computed as the encoder expects them
    "objectives": {"encoders", "fusion"},
    "heads": {"encoders", "fusion", "objectives", "metrics"},  # task models are built from blocks
}
#: the engine's own allowed imports (besides the ground floor): it never imports components
ENGINE_DEPENDS = {"train": {"train", "report"}, "finetune": {"train"}, "report": set()}
ENTRY = set(LAYERS["entry"])


def layer_of(top: str) -> str:
    return next(layer for layer, names in LAYERS.items() if top in names)


def ours(path: Path) -> set[str]:
    """Top-level mm_ptft names a file imports (``mm_ptft.heads.ctc`` → ``heads``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
            [a.name for a in node.names] if isinstance(node, ast.Import) else []
        for name in names:
            parts = name.split(".")
            if parts[0] == "mm_ptft":
                if len(parts) == 1:  # ``from mm_ptft import config``
                    found |= {a.name for a in node.names}
                else:
                    found.add(parts[1])
    return found


def modules() -> list[tuple[str, Path]]:
    return [(p.relative_to(PACKAGE).parts[0].removesuffix(".py"), p) for p in sorted(PACKAGE.rglob("*.py"))]


def allowed(top: str, target: str) -> bool:
    layer, other = layer_of(top), layer_of(target)
    if top == "__init__":
        return target in ("env", "api")  # the guard first; the public API on first use
    if layer == "ground":
        return False  # the ground floor imports nothing of ours
    if other == "ground" or target == top:
        return True
    if layer == "components":
        return target in COMPONENT_SIBLINGS[top]
    if layer == "engine":
        return target in ENGINE_DEPENDS[top]
    if layer == "assembly":
        return other in ("components", "engine")
    return True  # entry points may import anything


def test_every_module_has_a_layer():
    assert {top for top, _ in modules()} <= {n for names in LAYERS.values() for n in names}


@pytest.mark.parametrize("top, path", modules(), ids=[str(p.relative_to(PACKAGE)) for _, p in modules()])
def test_imports_point_down(top, path):
    bad = sorted(t for t in ours(path) if not allowed(top, t))
    assert not bad, f"{path.relative_to(PACKAGE)} ({layer_of(top)}) imports {bad}"


def test_package_root_is_light():
    """``import mm_ptft`` runs the torchaudio guard before anything imports transformers: at module level the
    package root imports only ``env``; the API (``api``, which fills every registry) only inside functions."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    eager = {a.name for node in tree.body if isinstance(node, ast.Import) for a in node.names} | \
        {node.module for node in tree.body if isinstance(node, ast.ImportFrom)}
    assert {m for m in eager if m.startswith("mm_ptft")} == {"mm_ptft.env"}, eager


def test_only_entry_points_import_entry_points():
    for top, path in modules():
        if top not in ENTRY:
            assert not ours(path) & ENTRY, path


def test_the_engine_never_imports_a_component_or_a_task():
    for top, path in modules():
        if layer_of(top) == "engine":
            assert not {layer_of(t) for t in ours(path)} & {"components", "assembly", "entry"}, path


def test_recipes_import_only_mm_ptft_entry_or_assembly_modules():
    """A recipe script is an entry point: it may use the run path, the trainer and a task's config."""
    for script in sorted((Path(ROOT) / "recipes").glob("*/train.py")):
        assert ours(script) <= {"run", "tasks", "finetune", "train"}, script
