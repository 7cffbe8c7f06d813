"""Registry-generated tests for every text encoder, plus save/reload round trips."""
import pytest
import torch

from mm_ptft.encoders import TEXT_ENCODERS, build_encoder
from mm_ptft.data.text import TextCollator

CORPUS = ["the cat sat on the mat", "a dog ran in the park", "stock market bond rally", "bake the bread in an oven"] * 5
# One tiny spec per registered entry: a new entry without a spec here fails test_every_entry_has_a_spec.
TINY_SPECS = {
    "hf": {"name": "hf", "vocab_size": 200, "config": {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2,
                                                       "num_attention_heads": 2, "intermediate_size": 64,
                                                       "max_position_embeddings": 64}},
    "tiny": {"name": "tiny", "dim": 32, "depth": 2, "heads": 2, "max_length": 64, "vocab_size": 200},
    "open_clip": {"name": "open_clip", "name_or_path": "ViT-S-32", "model_cfg": {
        "embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}},
}
TOKEN_LEVEL = {"hf", "tiny"}  # encoders that also return per-token outputs


def batch_for(enc, texts):
    ids = enc.tokenizer(texts)["input_ids"]
    return TextCollator(enc.tokenizer.pad_token_id)([{"text": i} for i in ids])


def test_every_entry_has_a_spec():
    assert set(TINY_SPECS) == set(TEXT_ENCODERS.names())


@pytest.mark.parametrize("name", sorted(TINY_SPECS))
def test_forward_backward(name):
    torch.manual_seed(0)
    enc = build_encoder(TEXT_ENCODERS, TINY_SPECS[name], "model.text", corpus=CORPUS)
    batch = batch_for(enc, ["the cat sat", "a dog ran in the park today"])
    out = enc(batch)
    B, L = batch["text"].shape
    assert out.pooled.shape == (B, enc.out_dim)
    if name in TOKEN_LEVEL:
        assert out.tokens.shape == (B, L, enc.out_dim) and out.mask.shape == (B, L)
    out.pooled.sum().backward()
    grads = [p.grad for p in enc.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert enc.num_layers == 2


@pytest.mark.parametrize("name", sorted(TINY_SPECS))
def test_padding_does_not_change_pooling(name):
    """Pooling ignores padding: a text alone equals the same text batched with a longer one."""
    spec = {**TINY_SPECS[name], **({"pooling": "mean"} if name in TOKEN_LEVEL else {})}
    enc = build_encoder(TEXT_ENCODERS, spec, "model.text", corpus=CORPUS).eval()
    alone = enc(batch_for(enc, ["the cat sat"])).pooled[0]
    padded = enc(batch_for(enc, ["the cat sat", "a dog ran in the park on the mat"])).pooled[0]
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(TINY_SPECS))
def test_save_and_reload_by_path(name, tmp_path):
    enc = build_encoder(TEXT_ENCODERS, TINY_SPECS[name], "model.text", corpus=CORPUS).eval()
    enc.save_pretrained(tmp_path / "enc")
    again = build_encoder(TEXT_ENCODERS, {"name": "hf", "name_or_path": str(tmp_path / "enc")}, "model.text").eval()
    assert again.num_layers == enc.num_layers
    assert type(again) is type(enc)
    batch = batch_for(enc, ["a dog sat on the bread"])
    assert again.tokenizer(["a dog"])["input_ids"] == enc.tokenizer(["a dog"])["input_ids"]
    torch.testing.assert_close(again(batch).pooled, enc(batch).pooled)


def test_hf_needs_a_source():
    with pytest.raises(ValueError, match="name_or_path"):
        build_encoder(TEXT_ENCODERS, {"name": "hf"}, "model.text")


def test_trained_wordpiece_round_trips_words():
    from mm_ptft.encoders.text import train_wordpiece

    tok = train_wordpiece(CORPUS, 200)
    ids = tok("the cat sat")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "the cat sat"


def test_learned_vocabulary_is_deterministic_and_splits_unseen_words():
    from mm_ptft.encoders.text import train_wordpiece

    a, b = train_wordpiece(CORPUS, 60), train_wordpiece(list(CORPUS), 60)
    assert a.get_vocab() == b.get_vocab()
    pieces = a.tokenize("catmat")  # unseen word → known pieces, not [UNK]
    assert "[UNK]" not in pieces and pieces[0] in ("c", "cat") and all(p.startswith("##") for p in pieces[1:])


def test_open_clip_text_matches_open_clip_encode_text():
    """Our dynamic-padding batches give exactly open_clip's own encode_text on its tokenizer output."""
    import open_clip

    enc = build_encoder(TEXT_ENCODERS, TINY_SPECS["open_clip"], "model.text").eval()
    texts = ["a photo of a cat", "a small dog on a sofa"]
    ref = enc.model.encode_text(open_clip.get_tokenizer("ViT-S-32", context_length=24)(texts))
    torch.testing.assert_close(enc(batch_for(enc, texts)).pooled, ref)


# ---- per-encoder dropout rates -------------------------------------------------------------------------------
def dropout_ps(module: torch.nn.Module) -> dict[str, float]:
    return {n: m.p for n, m in module.named_modules() if isinstance(m, torch.nn.Dropout)}


def test_hf_bert_rates_reach_every_dropout_module(tmp_path):
    """BERT: dropout → embeddings/attention-output/FFN dropouts, attention_dropout → the attention probabilities."""
    enc = build_encoder(TEXT_ENCODERS, {**TINY_SPECS["hf"], "dropout": 0.25, "attention_dropout": 0.05},
                        "model.text", corpus=CORPUS)
    ps = dropout_ps(enc.model)
    attn = {n: p for n, p in ps.items() if n.endswith("attention.self.dropout")}
    assert len(attn) == 2 and set(attn.values()) == {0.05}
    assert len(ps) == 7 and {p for n, p in ps.items() if n not in attn} == {0.25}
    # a saved directory rebuilds with its rates; a recipe's rate wins over the saved one
    enc.save_pretrained(tmp_path / "enc")
    again = build_encoder(TEXT_ENCODERS, {"name": "hf", "name_or_path": str(tmp_path / "enc")}, "model.text")
    assert dropout_ps(again.model) == ps
    lower = build_encoder(TEXT_ENCODERS, {"name": "hf", "name_or_path": str(tmp_path / "enc"), "dropout": 0.0},
                          "model.text")
    assert {p for n, p in dropout_ps(lower.model).items() if n not in attn} == {0.0}
    assert {dropout_ps(lower.model)[n] for n in attn} == {0.05}


def test_hf_rate_the_architecture_lacks_names_the_key():
    from mm_ptft.config import ConfigError
    with pytest.raises(ConfigError, match=r"model\.text\.drop_path=0\.1: BertConfig has no such rate"):
        build_encoder(TEXT_ENCODERS, {**TINY_SPECS["hf"], "drop_path": 0.1}, "model.text", corpus=CORPUS)


def test_tiny_text_rates():
    enc = build_encoder(TEXT_ENCODERS, {**TINY_SPECS["tiny"], "dropout": 0.3, "attention_dropout": 0.0},
                        "model.text", corpus=CORPUS)
    for layer in enc.encoder.layers:
        assert layer.dropout.p == layer.dropout1.p == layer.dropout2.p == 0.3 and layer.self_attn.dropout == 0.0
    from mm_ptft.config import ConfigError
    with pytest.raises(ConfigError, match=r"model\.text\.drop_path"):
        build_encoder(TEXT_ENCODERS, {**TINY_SPECS["tiny"], "drop_path": 0.1}, "model.text", corpus=CORPUS)


def test_an_hf_config_field_the_architecture_lacks_names_its_key():
    from mm_ptft.config import ConfigError
    from mm_ptft.encoders import TEXT_ENCODERS, build_encoder

    spec = {"name": "hf", "vocab_size": 200, "corpus": ["a b c"] * 4,
            "config": {"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "intermediate_size": 32, "num_hidden_layer": 2}}
    with pytest.raises(ConfigError, match=r"^model\.text\.config\.num_hidden_layer: BertConfig has no field"):
        build_encoder(TEXT_ENCODERS, spec, "model.text")
