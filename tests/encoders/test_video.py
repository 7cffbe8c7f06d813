"""Registry-generated tests for every video encoder (forward + backward, save/reload by path), transformers video
models by config, and per-frame encoders: pooling honours the frame mask, and only the transformer sees order."""
import pytest
import torch

from mm_ptft.encoders import build_encoder
from mm_ptft.encoders.video import VIDEO_ENCODERS

HF_SIZES = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
            "image_size": 32, "num_frames": 4}
TINY_CNN = {"name": "tiny_cnn", "widths": [8, 16, 32, 32], "img_size": 32}
# One tiny spec per registered entry (test_every_entry_has_a_spec), plus other shapes of the same builders.
TINY_SPECS = {
    "frames": {"name": "frames", "image": TINY_CNN, "pooling": "transformer", "heads": 2},
    "hf": {"name": "hf", "config": {"model_type": "videomae", "patch_size": 8, "tubelet_size": 2, **HF_SIZES}},
    "tiny_3d": {"name": "tiny_3d", "widths": [8, 16], "img_size": 32},
}
EXTRA_SPECS = {
    "frames_mean": {"name": "frames", "image": TINY_CNN, "pooling": "mean"},
    "frames_attention": {"name": "frames", "image": {"name": "tiny_vit", "img_size": 32, "dim": 32, "heads": 2},
                         "pooling": "attention"},
    "hf_timesformer": {"name": "hf", "config": {"model_type": "timesformer", "patch_size": 8, **HF_SIZES}},
    "hf_vivit": {"name": "hf", "config": {"model_type": "vivit", "tubelet_size": [2, 8, 8], **HF_SIZES}},
}
ALL = {**TINY_SPECS, **EXTRA_SPECS}
MASK = torch.tensor([[True] * 4, [True, True, False, False]])


def test_every_entry_has_a_spec():
    assert set(TINY_SPECS) == set(VIDEO_ENCODERS.names())


@pytest.mark.parametrize("key", sorted(ALL))
def test_forward_backward(key):
    torch.manual_seed(0)
    enc = build_encoder(VIDEO_ENCODERS, ALL[key], "model.video")
    assert enc.modality == "video" and enc.input_keys() == ["video", "video_mask"]
    assert enc.num_frames in (None, 4) and enc.preprocess.size == (32, 32)
    out = enc({"video": torch.randn(2, 4, 3, 32, 32), "video_mask": MASK})
    assert out.pooled.shape == (2, enc.out_dim)
    out.pooled.pow(2).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())


@pytest.mark.parametrize("key", sorted(TINY_SPECS))
def test_save_and_reload_by_path(key, tmp_path):
    torch.manual_seed(0)
    enc = build_encoder(VIDEO_ENCODERS, TINY_SPECS[key], "model.video").eval()
    enc.save_pretrained(tmp_path / "enc")
    again = build_encoder(VIDEO_ENCODERS, {"name": "frames", "name_or_path": str(tmp_path / "enc")}, "model.video").eval()
    x = {"video": torch.randn(2, 4, 3, 32, 32), "video_mask": MASK}
    with torch.no_grad():
        assert torch.allclose(enc(x).pooled, again(x).pooled, atol=1e-6)


def test_videomae_pools_the_normed_mean_of_its_tokens_and_timesformer_its_cls():
    torch.manual_seed(0)
    x = torch.randn(1, 4, 3, 32, 32)
    mae = build_encoder(VIDEO_ENCODERS, TINY_SPECS["hf"], "model.video").eval()
    tokens = mae.model(pixel_values=x).last_hidden_state  # (1, N, D): (4 / 2) * (32 / 8) ** 2 tubes
    # VideoMAEForVideoClassification's pooling: the token mean through its fc_norm LayerNorm
    assert tokens.shape[1] == 32 and torch.allclose(mae({"video": x}).pooled, mae.fc_norm(tokens.mean(1)), atol=1e-6)
    tsf = build_encoder(VIDEO_ENCODERS, EXTRA_SPECS["hf_timesformer"], "model.video").eval()
    assert torch.allclose(tsf({"video": x}).pooled, tsf.model(pixel_values=x).last_hidden_state[:, 0], atol=1e-6)


@pytest.mark.parametrize("pooling", ["mean", "attention", "transformer"])
def test_padded_frames_do_not_change_the_embedding(pooling):
    torch.manual_seed(0)
    enc = build_encoder(VIDEO_ENCODERS, {"name": "frames", "image": TINY_CNN, "pooling": pooling, "heads": 2},
                        "model.video").eval()
    clip = torch.randn(1, 2, 3, 32, 32)
    padded = torch.cat([clip, torch.randn(1, 2, 3, 32, 32)], 1)  # (1, 4, ...) with 2 junk frames
    with torch.no_grad():
        short = enc({"video": clip}).pooled
        masked = enc({"video": padded, "video_mask": torch.tensor([[True, True, False, False]])}).pooled
        # the mean pooling by hand: the image encoder's embeddings of the two real frames, averaged
        ref = enc.image.encode(clip[0]).pooled.mean(0) if pooling == "mean" else short[0]
    assert torch.allclose(masked, short, atol=1e-5) and torch.allclose(short[0], ref, atol=1e-5)


def test_only_the_temporal_transformer_sees_frame_order():
    torch.manual_seed(0)
    clip = torch.randn(1, 4, 3, 32, 32)
    rev = clip.flip(1)
    for pooling, order_matters in (("mean", False), ("attention", False), ("transformer", True)):
        enc = build_encoder(VIDEO_ENCODERS, {"name": "frames", "image": TINY_CNN, "pooling": pooling, "heads": 2},
                            "model.video").eval()
        with torch.no_grad():
            same = torch.allclose(enc({"video": clip}).pooled, enc({"video": rev}).pooled, atol=1e-5)
        assert same != order_matters, pooling


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="model.video.pooling='max'"):
        build_encoder(VIDEO_ENCODERS, {"name": "frames", "image": TINY_CNN, "pooling": "max"}, "model.video")
    with pytest.raises(KeyError, match="model.video"):
        build_encoder(VIDEO_ENCODERS, {"name": "frames", "poolng": "mean"}, "model.video")


def test_tiny_3d_ignores_padded_frames_and_pools_its_real_tokens():
    torch.manual_seed(0)
    enc = build_encoder(VIDEO_ENCODERS, TINY_SPECS["tiny_3d"], "model.video").eval()
    clip = torch.randn(1, 4, 3, 32, 32)
    junk = clip.clone()
    junk[:, 2:] = torch.randn(1, 2, 3, 32, 32)  # different content in the two padded frames
    mask = torch.tensor([[True, True, False, False]])
    with torch.no_grad():
        a, b = enc({"video": clip, "video_mask": mask}), enc({"video": junk, "video_mask": mask})
    assert torch.equal(a.pooled, b.pooled)
    cells = (32 // 4) ** 2  # two stride-2 stages: an 8x8 grid per frame
    assert a.tokens.shape == (1, 4 * cells, 16) and a.mask.sum() == 2 * cells
    assert torch.allclose(a.pooled[0], a.tokens[0, : 2 * cells].mean(0), atol=1e-6)  # frame-major: real first


def test_tiny_3d_sees_frame_order():
    torch.manual_seed(0)
    enc = build_encoder(VIDEO_ENCODERS, TINY_SPECS["tiny_3d"], "model.video").eval()
    clip = torch.randn(1, 4, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(enc({"video": clip}).pooled, enc({"video": clip.flip(1)}).pooled, atol=1e-4)
