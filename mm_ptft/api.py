"""The public Python API, re-exported lazily by ``mm_ptft`` (``mm_ptft.build_encoder(...)``, ``mm_ptft.train(...)``).

Re-exports only: the functions live in ``mm_ptft.run`` (the run path), ``mm_ptft.run.components`` (registries,
encoders) and ``mm_ptft.run.library`` (calls that take a config in any form). Importing this module fills every
registry, so nothing else has to be imported first. Everything built here saves and reloads: encoders carry the
spec they were built from (``Encoder.save_pretrained`` → ``load_encoder``).
"""
from __future__ import annotations

from mm_ptft.run import evaluate, load_run, predict
from mm_ptft.run.components import (build_encoder, encoder_registry, list_components, load_components, load_encoder,
                                    registries)
from mm_ptft.run.library import Overrides, from_pretrained, load_config, override_strings, train

load_components()

__all__ = ["Overrides", "build_encoder", "encoder_registry", "evaluate", "from_pretrained", "list_components",
           "load_config", "load_encoder", "load_run", "override_strings", "predict", "registries", "train"]
