"""The public Python API, re-exported lazily by ``mm_ptft`` (``mm_ptft.build_encoder(...)``, ``mm_ptft.train(...)``).

Importing this module fills every registry, so nothing else has to be imported first. Everything built here
saves and reloads: encoders carry the spec they were built from (``Encoder.save_pretrained`` → ``load_encoder``).
Entry layer: it may use any part of the package.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import yaml

from mm_ptft import run
from mm_ptft.components import load_components
from mm_ptft.config import ConfigError, RunConfig, to_dict
from mm_ptft.contracts import Callback
from mm_ptft.encoders.base import ENCODER_FILE, Encoder
from mm_ptft.encoders.base import build_encoder as _build_encoder
from mm_ptft.registry import Registry, all_registries
from mm_ptft.tasks import load_config as _load_config

load_components()

evaluate = run.evaluate  # (run_dir, overrides=(), checkpoint=None) -> metrics of a trained run
predict = run.predict  # (run_dir, inputs) -> one dict per raw input (text, image or audio path)
load_run = run.load_run  # (run_dir, ...) -> (cfg, prepared, recipe) with the best checkpoint loaded, in eval mode
Overrides = Sequence[str] | Mapping[str, Any]


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


def override_strings(overrides: Overrides = (), **values: Any) -> list[str]:
    """``key.sub=value`` strings from strings as given, or from ``{dotted key: Python value}`` (values written as
    YAML, which the config loader reads back to the same value)."""
    if isinstance(overrides, str):
        raise TypeError(f"overrides must be a list of key=value strings or a mapping, not the string {overrides!r}")
    pairs = {**overrides, **values} if isinstance(overrides, Mapping) else values
    strings = [] if isinstance(overrides, Mapping) else [str(o) for o in overrides]
    return strings + [f"{k}={yaml.safe_dump(v, default_flow_style=True, width=1 << 30)}" for k, v in pairs.items()]


def load_config(config: str | os.PathLike | RunConfig | Mapping[str, Any], overrides: Overrides = (),
                **values: Any) -> RunConfig:
    """A validated run config from a recipe YAML path, a config dataclass or a dict, plus overrides
    (``["optim.lr=1e-4"]``, ``{"optim.lr": 1e-4}`` or ``**{"optim.lr": 1e-4}``); errors name the key."""
    strings = override_strings(overrides, **values)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return _load_config(to_dict(config), strings, schema=type(config))
    if isinstance(config, (str, os.PathLike)) and not Path(config).is_file():
        raise ConfigError(f"config file {config} does not exist")
    return _load_config(config, strings)


def train(config_or_path: str | os.PathLike | RunConfig | Mapping[str, Any], overrides: Overrides = (), *,
          callbacks: Sequence[Callback] = (), **values: Any) -> dict[str, float]:
    """Train a recipe from a YAML path, a config dataclass or a dict, with overrides as in ``load_config``;
    ``callbacks`` join the recipe's own. Writes the run directory (``output_dir``) and returns its final
    evaluation, as ``mm-ptft train`` does."""
    return run.train(load_config(config_or_path, overrides, **values), callbacks)


def from_pretrained(path: str, trust_remote_code: bool = False):  # -> mm_ptft.hub.Pretrained
    """Load a directory written by ``mm-ptft export RUN --format mm_ptft``: ``.predict(raw inputs)``, ``.task``."""
    from mm_ptft.hub import from_pretrained as load

    return load(path, trust_remote_code=trust_remote_code)


__all__ = ["build_encoder", "encoder_registry", "evaluate", "from_pretrained", "list_components", "load_config",
           "load_encoder", "load_run", "override_strings", "predict", "registries", "train"]
