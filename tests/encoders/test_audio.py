"""Audio encoders: registry-generated forward+backward with tiny configs, the contract, reload, freezing."""
from __future__ import annotations

import pytest
import torch

from mm_ptft.encoders.audio import AUDIO_ENCODERS, lengths_to_mask
from mm_ptft.encoders.base import build_encoder
from mm_ptft.types import AUDIO, AUDIO_LENGTHS

_W2V_CONV = [[16, 10, 5], [16, 3, 2], [16, 2, 2]]
TINY_CONFIGS = {
    "tiny": {"dim": 32, "depth": 1, "heads": 2, "n_mels": 16},
    "crnn": {"dim": 16, "depth": 1, "n_mels": 16},
    "conformer": {"dim": 32, "depth": 1, "heads": 2, "ffn_dim": 64, "kernel_size": 7, "n_mels": 16},
    "hf": {"config": {"model_type": "wav2vec2", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                      "intermediate_size": 64, "conv_dim": [16, 16, 16], "conv_kernel": [10, 3, 2],
                      "conv_stride": [5, 2, 2], "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2}},
    "torchaudio_wav2vec2": {"config": {
        "extractor_mode": "group_norm", "extractor_conv_layer_config": _W2V_CONV, "extractor_conv_bias": False,
        "encoder_embed_dim": 32, "encoder_projection_dropout": 0.0, "encoder_pos_conv_kernel": 16,
        "encoder_pos_conv_groups": 2, "encoder_num_layers": 1, "encoder_num_heads": 2,
        "encoder_attention_dropout": 0.0, "encoder_ff_interm_features": 64, "encoder_ff_interm_dropout": 0.0,
        "encoder_dropout": 0.0, "encoder_layer_norm_first": False, "encoder_layer_drop": 0.0}},
}
# other HF families through the same ``hf`` entry
HF_FAMILIES = {
    "hubert": dict(TINY_CONFIGS["hf"]["config"], model_type="hubert"),
    "wavlm": dict(TINY_CONFIGS["hf"]["config"], model_type="wavlm", num_buckets=8, max_bucket_distance=16),
    "whisper": {"model_type": "whisper", "d_model": 32, "encoder_layers": 1, "encoder_attention_heads": 2,
                "decoder_layers": 1, "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64,
                "num_mel_bins": 16, "max_source_positions": 50, "max_target_positions": 16},
}


def _batch(rate: int = 16000) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    wav = torch.randn(2, rate // 4, generator=g)  # (B, T): 0.25 s
    lengths = torch.tensor([rate // 4, rate // 8])
    wav[1, rate // 8:] = 0
    return {AUDIO: wav, AUDIO_LENGTHS: lengths}


def test_every_entry_has_a_tiny_config():
    assert sorted(TINY_CONFIGS) == AUDIO_ENCODERS.names()


def _check_forward_backward(enc) -> None:
    batch = _batch(enc.sample_rate)
    out = enc(batch)
    b, n, d = out.tokens.shape
    assert (b, d) == (2, enc.out_dim) and out.pooled.shape == (2, enc.out_dim)
    assert out.mask.dtype == torch.bool and out.mask.shape == (2, n)
    # the mask counts exactly the frames the encoder says the input lengths map to
    assert out.mask.sum(1).tolist() == enc.frame_lengths(batch[AUDIO_LENGTHS]).clamp(max=n).tolist()
    assert out.mask[0].sum() > out.mask[1].sum() > 0 and not out.mask[1].all()
    # pooled is the masked mean of the tokens (independent recomputation)
    ref = out.tokens[1, out.mask[1]].mean(0)
    assert torch.allclose(out.pooled[1], ref, atol=1e-5)
    (out.pooled.sum() + out.tokens.sum()).backward()
    grads = [p.grad for p in enc.parameters() if p.requires_grad]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", AUDIO_ENCODERS.names())
def test_forward_backward(name):
    enc = build_encoder(AUDIO_ENCODERS, {"name": name, **TINY_CONFIGS.get(name, {})}, "model.audio")
    assert enc.modality == "audio" and enc.input_kind in ("waveform", "features") and enc.sample_rate > 0
    _check_forward_backward(enc)


@pytest.mark.parametrize("family", sorted(HF_FAMILIES))
def test_hf_families(family):
    enc = build_encoder(AUDIO_ENCODERS, {"name": "hf", "config": HF_FAMILIES[family]}, "model.audio")
    _check_forward_backward(enc)


@pytest.mark.parametrize("name", ["tiny", "crnn", "conformer"])
def test_mel_encoders_take_features_input(name):
    enc = build_encoder(AUDIO_ENCODERS, {"name": name, **TINY_CONFIGS[name], "input_kind": "features", "n_mels": 8},
                        "model.audio")
    feats = torch.randn(2, 8, 40)  # (B, F, T)
    out = enc({AUDIO: feats, AUDIO_LENGTHS: torch.tensor([40, 21])})
    # two stride-2 convs (kernel 3, padding 1): 40 → 20 → 10, 21 → 11 → 6
    assert out.tokens.shape[1] == 10 and out.mask.sum(1).tolist() == [10, 6]


@pytest.mark.parametrize("name", ["tiny", "crnn"])
def test_padding_does_not_change_real_frames(name):
    """A row's output must not depend on how much padding its batch adds (mask is honoured; the
    recurrent encoder packs sequences so the backward direction starts at the row's last real frame)."""
    enc = build_encoder(AUDIO_ENCODERS, {"name": name, **TINY_CONFIGS[name]}, "model.audio").eval()
    wav = torch.randn(1, 4000)
    alone = enc({AUDIO: wav, AUDIO_LENGTHS: torch.tensor([4000])})
    padded = enc({AUDIO: torch.cat([wav, torch.zeros(1, 2000)], 1), AUDIO_LENGTHS: torch.tensor([4000])})
    assert torch.allclose(alone.pooled, padded.pooled, atol=1e-4)
    n = int(alone.mask.sum())
    assert torch.allclose(alone.tokens[0, :n], padded.tokens[0, :n], atol=1e-4)


@pytest.mark.parametrize("name", ["hf", "torchaudio_wav2vec2"])
def test_freeze_feature_encoder(name):
    enc = build_encoder(AUDIO_ENCODERS, {"name": name, **TINY_CONFIGS[name], "freeze_feature_encoder": True},
                        "model.audio")
    frozen = [n for n, p in enc.named_parameters() if not p.requires_grad]
    assert frozen and all("feature_extractor" in n for n in frozen)
    assert any(p.requires_grad for p in enc.parameters())


@pytest.mark.parametrize("name", ["tiny", "crnn", "hf"])
def test_save_and_reload(tmp_path, name):
    enc = build_encoder(AUDIO_ENCODERS, {"name": name, **TINY_CONFIGS[name]}, "model.audio").eval()
    enc.save_pretrained(tmp_path / "enc")
    again = build_encoder(AUDIO_ENCODERS, {"name": "tiny", "name_or_path": str(tmp_path / "enc")}, "model.audio").eval()
    batch = _batch()
    assert torch.allclose(enc(batch).pooled, again(batch).pooled, atol=1e-5)


def test_lengths_to_mask():
    assert lengths_to_mask(torch.tensor([2, 0, 3]), 3).tolist() == [[True, True, False], [False] * 3, [True] * 3]


def test_unknown_key_is_named():
    with pytest.raises(KeyError, match="model.audio.dimm"):
        build_encoder(AUDIO_ENCODERS, {"name": "tiny", "dimm": 3}, "model.audio")


@pytest.mark.parametrize("name", AUDIO_ENCODERS.names())
def test_layers_are_visible_to_llrd_and_freezing(name):
    """Every encoder exposes its block depth (``num_layers``) and an embedding-level front end."""
    from mm_ptft.encoders.base import layer_index

    enc = build_encoder(AUDIO_ENCODERS, {"name": name, **TINY_CONFIGS[name]}, "model.audio")
    assert enc.num_layers == 1  # every tiny config has one block
    assert any(layer_index(n) == -1 for n, _ in enc.named_parameters())


def test_hf_wav2vec2_rates_reach_its_config_and_modules():
    enc = build_encoder(AUDIO_ENCODERS, {"name": "hf", **TINY_CONFIGS["hf"], "dropout": 0.3, "attention_dropout": 0.05},
                        "model.audio")
    cfg = enc.model.config
    assert (cfg.hidden_dropout, cfg.attention_dropout) == (0.3, 0.05)
    layer = enc.model.encoder.layers[0]
    assert layer.dropout.p == 0.3 and layer.attention.dropout == 0.05
