"""Shared fixtures: tiny configs and generated data, all offline."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from mm_paths import ROOT, TEXT_TINY  # noqa: E402,F401  (re-exported for older imports)
from remote_fixtures import http_root, s3, s3_proxy, s3_server  # noqa: E402,F401  (S3/HTTP servers on 127.0.0.1)


@pytest.fixture(scope="session")
def topics_data(tmp_path_factory) -> dict[str, str]:
    """The generated four-topic CSVs (train/eval), written once per session."""
    from mm_ptft.data.generated import generate

    return generate({"name": "text_topics", "n_train": 400, "n_eval": 120, "seed": 1}, tmp_path_factory.mktemp("topics"))
