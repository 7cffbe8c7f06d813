"""Every registered component: ``load_components`` imports each module that registers one, so all registries
are filled; the lookups below (by kind, by modality) and encoder building/reloading serve the Python API.

Discovery is by package walk: a new encoder, objective, head, data generator or task module is
registered by adding its file; no central list to edit."""
from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any, Optional

from mm_ptft.encoders.base import ENCODER_FILE, Encoder
from mm_ptft.encoders.base import build_encoder as _build_encoder
from mm_ptft.registry import Registry, all_registries, import_submodules

PACKAGES = ["mm_ptft.encoders", "mm_ptft.heads", "mm_ptft.objectives", "mm_ptft.data", "mm_ptft.tasks"]
MODULES = ["mm_ptft.encoders.fusion", "mm_ptft.train.finetune", "mm_ptft.train.optim", "mm_ptft.train.parallel",
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


def registries() -> dict[str, Registry[Any]]:
    """Every registry by kind (``text_encoder``, ``image_encoder``, ``objective``, ``task``…), all filled."""
    return dict(sorted(all_registries().items()))


def list_components(kind: Optional[str] = None) -> dict[str, list[str]] | list[str]:
    """Registered names: of one ``kind`` (e.g. ``"image_encoder"``), or of every kind as ``{kind: names}``."""
    if kind is None:
        return {k: reg.names() for k, reg in registries().items()}
    return _registry(kind).names()


def _registry(kind: str) -> Registry[Any]:
    regs = all_registries()
    if kind not in regs:  # not imported yet in this process (e.g. ``mm-ptft fewshot`` on an image encoder)
        load_components()
        regs = all_registries()
    if kind not in regs:
        raise KeyError(f"no registry {kind!r}; known: {', '.join(sorted(regs))}")
    return regs[kind]


def encoder_registry(modality: str) -> Registry[Encoder]:
    """The encoder registry of ``modality`` (``text``, ``image`` or ``audio``)."""
    return _registry(f"{modality}_encoder")


def build_encoder(modality: str, name: str, **kwargs: Any) -> Encoder:
    """An encoder from its registry name and options, e.g. ``build_encoder("image", "timm",
    name_or_path="resnet50", pretrained=False)``. ``corpus=[texts]`` (text encoders without a tokenizer)
    trains a vocabulary; it is a runtime argument, not part of the saved spec."""
    runtime = {k: kwargs.pop(k) for k in ("corpus",) if k in kwargs}
    return _build_encoder(encoder_registry(modality), {"name": name, **kwargs}, f"{modality}_encoder", **runtime)


def load_encoder(path: str | os.PathLike, modality: Optional[str] = None, trust_remote_code: bool = False) -> Encoder:
    """Reload an encoder directory written by ``Encoder.save_pretrained`` (also a run's ``encoders/<modality>/``).
    Given a run directory, its one saved encoder, or the one of ``modality``. A directory is data, not code:
    its stored ``trust_remote_code`` is ignored; pass ``trust_remote_code=True`` to allow it."""
    path = Path(path)
    if not (path / ENCODER_FILE).is_file():
        saved = sorted(p.parent.name for p in path.glob(f"encoders/*/{ENCODER_FILE}"))
        if modality in saved or (modality is None and len(saved) == 1):
            path = path / "encoders" / (modality or saved[0])
        else:
            hint = f"; its encoders/ holds {', '.join(saved)}: pass modality=" if saved else ""
            raise FileNotFoundError(f"{path}: no {ENCODER_FILE} (not an encoder directory){hint}")
    found = json.loads((path / ENCODER_FILE).read_text()).get("modality") or modality
    if found is None:
        raise ValueError(f"{path}/{ENCODER_FILE} does not say its modality: pass modality=")
    if modality is not None and found != modality:
        raise ValueError(f"{path} holds a {found} encoder, not a {modality} one")
    spec: dict[str, Any] = {"name_or_path": str(path)}
    if trust_remote_code:
        spec["trust_remote_code"] = True
    return _build_encoder(encoder_registry(found), spec, f"{found}_encoder")
