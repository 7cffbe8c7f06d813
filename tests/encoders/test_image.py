"""Registry-generated tests for every image encoder: forward/backward, feature pyramids, save/reload,
and preprocessing read from the encoder's own pretrained config."""
import json
import math
import re

import pytest
import torch

from mm_ptft.encoders import build_encoder
from mm_ptft.encoders.image import IMAGE_ENCODERS, ImageEncoder

HF_VIT = {"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
          "intermediate_size": 64, "image_size": 32, "patch_size": 8}
CLIP_TINY = {"embed_dim": 24, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
             "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}
# One tiny spec per registered entry: a new entry without a spec here fails test_every_entry_has_a_spec.
TINY_SPECS = {
    "tiny_cnn": {"name": "tiny_cnn", "widths": [8, 16, 32, 32], "img_size": 64},
    "tiny_vit": {"name": "tiny_vit", "img_size": 32, "patch_size": 8, "dim": 32, "depth": 2, "heads": 2},
    "timm": {"name": "timm", "name_or_path": "resnet10t", "pretrained": False, "img_size": None},
    "torchvision": {"name": "torchvision", "name_or_path": "resnet18", "weights": None, "img_size": 64},
    "hf": {"name": "hf", "config": HF_VIT},
    "open_clip": {"name": "open_clip", "name_or_path": "ViT-B-32", "pretrained": None, "model_cfg": CLIP_TINY},
}
EXTRA_SPECS = {  # other shapes of the same builders that detection relies on
    "timm_vit": {"name": "timm", "name_or_path": "vit_tiny_patch16_224", "img_size": 32},
    "timm_features_only": {"name": "timm", "name_or_path": "resnet10t", "features_only": True},
    "hf_resnet": {"name": "hf", "config": {"model_type": "resnet", "embedding_size": 8, "hidden_sizes": [8, 16, 24, 32],
                                           "depths": [1, 1, 1, 1], "layer_type": "basic"}},
}
ALL = {**TINY_SPECS, **EXTRA_SPECS}
# Expected pyramid strides: CNNs give their last maps at strides 8/16/32, ViTs their patch grid.
STRIDES = {"tiny_cnn": [8, 16, 32], "tiny_vit": [8], "timm": [8, 16, 32], "torchvision": [8, 16, 32], "hf": [8],
           "open_clip": [8], "timm_vit": [16], "timm_features_only": [2, 4, 8, 16, 32], "hf_resnet": [8, 16, 32]}


def images_for(enc: ImageEncoder, batch: int = 2) -> torch.Tensor:
    h, w = (min(s, 64) for s in enc.preprocess.size)
    return torch.randn(batch, 3, h, w)


def test_every_entry_has_a_spec():
    assert set(TINY_SPECS) == set(IMAGE_ENCODERS.names())


@pytest.mark.parametrize("key", sorted(ALL))
def test_forward_backward_and_feature_maps(key):
    torch.manual_seed(0)
    enc = build_encoder(IMAGE_ENCODERS, ALL[key], "model.image")
    assert enc.modality == "image"
    x = images_for(enc)
    out = enc({"image": x})
    assert out.pooled.shape == (2, enc.out_dim)
    if out.tokens is not None:
        assert out.tokens.shape[0] == 2 and out.tokens.shape[2] == enc.token_dim
    out.pooled.pow(2).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())
    # every entry serves detection: channels/strides declared match the maps actually produced
    maps = enc.features(x)
    assert [m.shape[1] for m in maps.values()] == enc.out_channels
    for m, s in zip(maps.values(), enc.out_strides):
        assert m.shape[-2] == math.ceil(x.shape[-2] / s) and m.shape[-1] == math.ceil(x.shape[-1] / s)
    assert enc.out_strides == STRIDES[key]


@pytest.mark.parametrize("key", sorted(TINY_SPECS))
def test_save_and_reload_by_path(key, tmp_path):
    torch.manual_seed(0)
    enc = build_encoder(IMAGE_ENCODERS, TINY_SPECS[key], "model.image").eval()
    enc.save_pretrained(tmp_path / "enc")
    meta = json.loads((tmp_path / "enc" / "mm_ptft_encoder.json").read_text())
    if "name_or_path" in TINY_SPECS[key] and meta["format"] != "hf":  # the architecture name is kept, offline
        assert meta["kwargs"]["name_or_path"] == TINY_SPECS[key]["name_or_path"]
        assert not meta["kwargs"].get("pretrained") and not meta["kwargs"].get("weights")
    again = build_encoder(IMAGE_ENCODERS, {"name": "tiny_cnn", "name_or_path": str(tmp_path / "enc")}, "model.image").eval()
    assert type(again) is type(enc) and again.preprocess == enc.preprocess
    x = images_for(enc, 1)
    with torch.no_grad():
        torch.testing.assert_close(again({"image": x}).pooled, enc({"image": x}).pooled)


def test_timm_preprocess_comes_from_pretrained_cfg():
    import timm

    enc = build_encoder(IMAGE_ENCODERS, {"name": "timm", "name_or_path": "vit_tiny_patch16_224"}, "model.image")
    ref = timm.get_pretrained_cfg("vit_tiny_patch16_224")
    assert enc.preprocess.mean == tuple(ref.mean) and enc.preprocess.std == tuple(ref.std)
    assert enc.preprocess.size == tuple(ref.input_size[1:]) and enc.preprocess.crop_pct == ref.crop_pct


def test_hf_preprocess_comes_from_the_saved_image_processor(tmp_path):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    ViTModel(ViTConfig(**{k: v for k, v in HF_VIT.items() if k != "model_type"})).save_pretrained(tmp_path)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.1, 0.2, 0.3],
                      image_std=[0.4, 0.5, 0.6]).save_pretrained(tmp_path)
    enc = build_encoder(IMAGE_ENCODERS, {"name": "hf", "name_or_path": str(tmp_path)}, "model.image")
    assert enc.preprocess.size == (32, 32)
    assert enc.preprocess.mean == pytest.approx((0.1, 0.2, 0.3)) and enc.preprocess.std == pytest.approx((0.4, 0.5, 0.6))


def test_open_clip_preprocess_and_embedding_width():
    enc = build_encoder(IMAGE_ENCODERS, TINY_SPECS["open_clip"], "model.image")
    from open_clip.constants import OPENAI_DATASET_MEAN

    assert enc.preprocess.size == (32, 32) and enc.preprocess.mean == pytest.approx(OPENAI_DATASET_MEAN)
    assert enc.out_dim == 24 and enc.token_dim == 32  # projected pooled embedding vs. unprojected tokens


def test_bad_kwarg_is_named():
    with pytest.raises(KeyError, match="model.image.widht"):
        build_encoder(IMAGE_ENCODERS, {"name": "tiny_cnn", "widht": 3}, "model.image")


# ---- per-encoder dropout rates -------------------------------------------------------------------------------
def test_timm_vit_rates_reach_its_modules():
    """timm ViT: dropout → drop_rate (head_drop), attention_dropout → attn_drop in every block, drop_path → stochastic
    depth rising linearly to the rate over the blocks (timm's rule, computed here by hand)."""
    from timm.layers import DropPath
    enc = build_encoder(IMAGE_ENCODERS, {**EXTRA_SPECS["timm_vit"], "dropout": 0.2, "attention_dropout": 0.1,
                                         "drop_path": 0.3}, "model.image")
    m = enc.model
    assert m.head_drop.p == 0.2 and [b.attn.attn_drop.p for b in m.blocks] == [0.1] * len(m.blocks)
    n = len(m.blocks)
    expected = [0.3 * i / (n - 1) for i in range(n)]
    got = [b.drop_path1.drop_prob if isinstance(b.drop_path1, DropPath) else 0.0 for b in m.blocks]
    assert got == pytest.approx(expected)
    tiny = build_encoder(IMAGE_ENCODERS, {**TINY_SPECS["tiny_vit"], "attention_dropout": 0.15}, "model.image")
    assert [b.attn.attn_drop.p for b in tiny.model.blocks] == [0.15, 0.15]


def test_timm_resnet_rates_and_the_one_it_lacks():
    from mm_ptft.config import ConfigError
    enc = build_encoder(IMAGE_ENCODERS, {**TINY_SPECS["timm"], "dropout": 0.4, "drop_path": 0.1}, "model.image")
    assert enc.model.drop_rate == 0.4
    with pytest.raises(ConfigError, match=r"model\.image\.attention_dropout=0\.1: this timm architecture has no "
                                          r"attn_drop_rate"):
        build_encoder(IMAGE_ENCODERS, {**TINY_SPECS["timm"], "attention_dropout": 0.1}, "model.image")
    with pytest.raises(ConfigError, match=r"model\.image\.dropout"):  # tiny_cnn has no dropout at all
        build_encoder(IMAGE_ENCODERS, {**TINY_SPECS["tiny_cnn"], "dropout": 0.1}, "model.image")


def test_hf_vit_rates():
    enc = build_encoder(IMAGE_ENCODERS, {"name": "hf", "config": HF_VIT, "dropout": 0.2, "attention_dropout": 0.1},
                        "model.image")
    ps = {n: m.p for n, m in enc.model.named_modules() if isinstance(m, torch.nn.Dropout)}
    assert len(ps) == 3 and set(ps.values()) == {0.2}  # embeddings and each layer's hidden dropout
    assert [layer.attention.attention_dropout for layer in enc.model.layers] == [0.1, 0.1]  # the attention probs' rate


@pytest.mark.parametrize("spec, key", [
    ({"name": "timm", "name_or_path": "resnet18", "img_size": 32}, "model.image.img_size"),
    ({"name": "timm", "name_or_path": "resnet10t", "model_kwargs": {"patch_size": 4}}, "model.image.model_kwargs.patch_size"),
    ({"name": "torchvision", "name_or_path": "resnet18", "model_kwargs": {"dropout": 0.2}},
     "model.image.model_kwargs.dropout"),
    ({"name": "hf", "config": {**HF_VIT, "num_stages": 3}}, "model.image.config.num_stages"),
    ({"name": "open_clip", "name_or_path": "ViT-B-32", "model_cfg": {**CLIP_TINY, "depth": 2}},
     "model.image.model_cfg.depth"),
])
def test_an_option_the_architecture_does_not_take_names_its_key(spec, key):
    """Each library's refusal (timm/torchvision/open_clip's TypeError, a field HF's config would keep unused) is a
    ConfigError naming the config key, not a raw TypeError from inside the library."""
    from mm_ptft.config import ConfigError

    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: ") as err:
        build_encoder(IMAGE_ENCODERS, spec, "model.image")
    assert key.rsplit(".", 1)[1] in str(err.value).split(": ", 1)[1]  # the message says which option


def test_options_the_architecture_takes_still_pass():
    """The same keys where the architecture has them: a ViT takes img_size, efficientnet a dropout."""
    assert build_encoder(IMAGE_ENCODERS, {"name": "timm", "name_or_path": "vit_tiny_patch16_224", "img_size": 32},
                         "model.image").preprocess.size == (32, 32)
    enc = build_encoder(IMAGE_ENCODERS, {"name": "torchvision", "name_or_path": "efficientnet_b0",
                                         "model_kwargs": {"dropout": 0.3}, "img_size": 32}, "model.image")
    assert enc.model.classifier is not None
