"""Shared fixtures: tiny configs and generated data, all offline."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT_TINY = os.path.join(ROOT, "recipes", "text_classification", "tiny.yaml")


@pytest.fixture(scope="session")
def topics_data(tmp_path_factory) -> dict[str, str]:
    """The generated four-topic CSVs (train/eval), written once per session."""
    from mm_ptft.data.generated import generate

    return generate({"name": "text_topics", "n_train": 400, "n_eval": 120, "seed": 1}, tmp_path_factory.mktemp("topics"))
