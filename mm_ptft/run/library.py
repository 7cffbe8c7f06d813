"""The Python API's calls that take a config in any form (a recipe YAML path, a config dataclass or a dict, plus
overrides as strings or a mapping); ``mm_ptft.api`` re-exports them."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from mm_ptft import run
from mm_ptft.config import ConfigError, RunConfig, to_dict
from mm_ptft.contracts import Callback
from mm_ptft.tasks import load_config as _load_config

Overrides = Sequence[str] | Mapping[str, Any]


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


def from_pretrained(path: str, trust_remote_code: bool = False):  # -> mm_ptft.run.hub.Pretrained
    """Load a directory written by ``mm-ptft export RUN --format mm_ptft``: ``.predict(raw inputs)``, ``.task``."""
    from mm_ptft.run.hub import from_pretrained as load

    return load(path, trust_remote_code=trust_remote_code)
