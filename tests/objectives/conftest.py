"""Tiny encoders and a small paired batch shared by the objective tests."""
from __future__ import annotations

import pytest
import torch

CAPTIONS = ["a small red circle", "a large blue square", "the triangle is green and small", "a yellow cross"] * 3


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is faster, and far faster on a shared, busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def encoders() -> dict:
    from mm_ptft.encoders import TEXT_ENCODERS, build_encoder
    from mm_ptft.encoders.audio import AUDIO_ENCODERS
    from mm_ptft.encoders.image import IMAGE_ENCODERS

    torch.manual_seed(0)
    return {
        "text": build_encoder(TEXT_ENCODERS, {"name": "tiny", "dim": 32, "depth": 1, "heads": 2, "vocab_size": 100},
                              "model.text", corpus=CAPTIONS),
        "image": build_encoder(IMAGE_ENCODERS, {"name": "tiny_cnn", "widths": [8, 16], "img_size": 32}, "model.image"),
        "audio": build_encoder(AUDIO_ENCODERS, {"name": "tiny", "sample_rate": 8000, "n_mels": 16, "dim": 32,
                                                "depth": 1, "heads": 2}, "model.audio"),
    }


@pytest.fixture()
def batch(encoders) -> dict:
    from mm_ptft.data.multimodal import MultimodalCollator

    tok = encoders["text"].tokenizer
    g = torch.Generator().manual_seed(0)
    items = [{"text": tok(c)["input_ids"], "image": torch.randn(3, 32, 32, generator=g),
              "audio": torch.randn(1600 + 400 * (i % 3), generator=g) * 0.3, "labels": i % 4}
             for i, c in enumerate(CAPTIONS[:6])]
    return MultimodalCollator(tok.pad_token_id)(items)
