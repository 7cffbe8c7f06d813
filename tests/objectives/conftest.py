"""Tiny encoders and a small paired batch shared by the objective tests."""
from __future__ import annotations

import pytest
import torch

from mm_fixtures import one_thread, tiny_encoders  # noqa: F401  (one_thread: autouse)

CAPTIONS = ["a small red circle", "a large blue square", "the triangle is green and small", "a yellow cross"] * 3


@pytest.fixture(scope="module")
def encoders() -> dict:
    return tiny_encoders(32, 32, CAPTIONS)


@pytest.fixture()
def batch(encoders) -> dict:
    from mm_ptft.data.multimodal import MultimodalCollator

    tok = encoders["text"].tokenizer
    g = torch.Generator().manual_seed(0)
    items = [{"text": tok(c)["input_ids"], "image": torch.randn(3, 32, 32, generator=g),
              "audio": torch.randn(1600 + 400 * (i % 3), generator=g) * 0.3, "labels": i % 4}
             for i, c in enumerate(CAPTIONS[:6])]
    return MultimodalCollator(tok.pad_token_id)(items)
