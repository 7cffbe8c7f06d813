"""``one_clip_per_model``: the open_clip image and text encoders of one model share one created CLIP (half the
peak memory of building both towers); outside it each builds its own; the towers are what they were."""
import open_clip
import pytest
import torch

from mm_ptft.encoders import TEXT_ENCODERS, build_encoder
from mm_ptft.encoders.base import one_clip_per_model
from mm_ptft.encoders.image import IMAGE_ENCODERS

TINY = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def build_pair(monkeypatch):
    calls = []
    real = open_clip.create_model
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **kw: calls.append(a) or real(*a, **kw))
    spec = {"name": "open_clip", "name_or_path": "ViT-B-32", "model_cfg": TINY}
    image = build_encoder(IMAGE_ENCODERS, spec, "model.image")
    text = build_encoder(TEXT_ENCODERS, spec, "model.text")
    return image, text, calls


@pytest.mark.parametrize("shared", [True, False])
def test_one_clip_is_created_inside_the_block_and_the_towers_are_unchanged(monkeypatch, shared):
    if shared:
        with one_clip_per_model():
            image, text, calls = build_pair(monkeypatch)
    else:
        image, text, calls = build_pair(monkeypatch)
    assert len(calls) == (1 if shared else 2)
    assert not any(k.startswith("visual.") for k in text.state_dict())  # the text side only
    assert any(k.startswith("visual.") for k in image.state_dict())
    from mm_ptft.data.multimodal import MultimodalCollator

    ids = text.tokenizer(["a red circle", "a dog"])["input_ids"]
    batch = MultimodalCollator(text.tokenizer.pad_token_id)([{"text": i} for i in ids])
    assert text(batch).pooled.shape == (2, 32)  # (B, E)
    assert image({"image": torch.randn(2, 3, 32, 32)}).pooled.shape == (2, 32)
