"""Causal LM: next-token loss against hand values and transformers' own *ForCausalLM heads on the same
weights, the causality check at build time, and token-weighted perplexity."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mm_ptft.encoders import TEXT_ENCODERS, build_encoder
from mm_ptft.encoders.text import train_wordpiece
from mm_ptft.heads.pretraining import PretrainTask
from mm_ptft.objectives import OBJECTIVES, EncodedBatch
from mm_ptft.objectives.causal import IGNORE, clm_loss, next_token_labels
from mm_ptft.types import TEXT, TEXT_MASK

from .conftest import CAPTIONS


def _padded(tok, texts: list[str]) -> dict[str, torch.Tensor]:
    enc = tok(texts, padding=True, return_tensors="pt")
    return {TEXT: enc["input_ids"], TEXT_MASK: enc["attention_mask"]}


def test_next_token_labels_shift_and_ignore_padding() -> None:
    ids = torch.tensor([[2, 7, 8, 3], [2, 9, 3, 0]])
    att = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    assert next_token_labels(ids, att).tolist() == [[7, 8, 3], [9, 3, IGNORE]]


def test_clm_loss_hand_values() -> None:
    ids, att = torch.tensor([[2, 7, 3, 0]]), torch.tensor([[1, 1, 1, 0]])
    logits = torch.zeros(1, 4, 10)
    assert clm_loss(logits, ids, att).item() == pytest.approx(math.log(10), abs=1e-6)
    logits[0, 0, 7] = logits[0, 1, 3] = 100.0  # position t predicts token t+1
    logits[0, 2, 5] = logits[0, 3, 1] = 100.0  # the last real position and the padding predict nothing
    assert clm_loss(logits, ids, att).item() < 1e-6
    logits[0, 0, 7] = 0.0  # one of the two predicted tokens now uniform: mean NLL = log(10) / 2
    assert clm_loss(logits, ids, att).item() == pytest.approx(math.log(10) / 2, abs=1e-5)


def test_tiny_causal_mask_hides_later_tokens(encoders) -> None:
    enc = encoders["text"].eval()
    ids = torch.tensor([[2, 5, 6, 7, 8], [2, 5, 6, 9, 10]])
    batch = {TEXT: ids, TEXT_MASK: torch.ones_like(ids)}
    with torch.no_grad():
        causal, full = enc(batch, causal=True).tokens, enc(batch).tokens  # (2, 5, D)
    enc.train()
    torch.testing.assert_close(causal[0, :3], causal[1, :3])  # same first three tokens → same outputs
    assert (causal[0, 3:] - causal[1, 3:]).abs().max() > 1e-3
    assert (full[0, :3] - full[1, :3]).abs().max() > 1e-3  # without the mask every position sees the change


@pytest.fixture(scope="module")
def tok():
    return train_wordpiece(CAPTIONS, 100)


def _hf_dir(root: Path, model, tok) -> str:
    model.save_pretrained(str(root))
    tok.save_pretrained(str(root))
    return str(root)


def _parity(hf_model, ours_dir: str, tok, spec: dict) -> None:
    """Our clm on the encoder loaded from ``ours_dir`` = the *ForCausalLM's loss with -100 at the padding."""
    text = build_encoder(TEXT_ENCODERS, {"name": "hf", "name_or_path": ours_dir}, "model.text").eval()
    obj = OBJECTIVES.build(spec, "model.objectives.lm", encoders={"text": text}).eval()
    batch = _padded(tok, CAPTIONS[:5])
    assert (batch[TEXT_MASK] == 0).any()  # rows of different lengths: padding must be ignored
    labels = batch[TEXT].masked_fill(batch[TEXT_MASK] == 0, IGNORE)
    with torch.no_grad():
        ref = hf_model.eval()(input_ids=batch[TEXT], attention_mask=batch[TEXT_MASK], labels=labels).loss
        ours = obj(EncodedBatch({"text": text}, batch), batch)["clm_loss"]
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5)
    assert abs(ref.item() - math.log(len(tok))) < 1.0  # a random model: near uniform, so not trivially equal


def test_clm_matches_gpt2_lm_head_model(tmp_path: Path, tok) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                    pad_token_id=tok.pad_token_id))
    _parity(hf, _hf_dir(tmp_path, hf, tok), tok, {"name": "clm"})  # GPT-2's lm_head is tied to wte, like ours


def test_clm_matches_llama_for_causal_lm_with_its_untied_head(tmp_path: Path, tok) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                                      pad_token_id=tok.pad_token_id, tie_word_embeddings=False))
    d = _hf_dir(tmp_path, hf, tok)
    _parity(hf, d, tok, {"name": "clm", "init_from_pretrained_head": True})  # untied, as Llama's config says
    with pytest.raises(ValueError, match=r"model.objectives.lm.init_from_pretrained_head"):
        bare = tmp_path / "bare"
        hf.model.save_pretrained(str(bare))  # the decoder alone: no lm_head in the checkpoint
        text = build_encoder(TEXT_ENCODERS, {"name": "hf", "name_or_path": str(bare), "tokenizer": d}, "model.text")
        OBJECTIVES.build({"name": "clm", "init_from_pretrained_head": True},
                         "model.objectives.lm", encoders={"text": text})


def test_bidirectional_encoder_is_a_build_error_naming_the_key(tok) -> None:
    bert = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 64}
    text = build_encoder(TEXT_ENCODERS, {"name": "hf", "config": bert, "tokenizer": None}, "model.text", corpus=CAPTIONS)
    with pytest.raises(ValueError, match=r"model.objectives.lm: .*see later tokens.*is_decoder=true"):
        OBJECTIVES.build({"name": "clm"}, "model.objectives.lm", encoders={"text": text})
    decoder = build_encoder(TEXT_ENCODERS, {"name": "hf", "config": {**bert, "is_decoder": True}}, "model.text",
                            corpus=CAPTIONS)
    assert OBJECTIVES.build({"name": "clm"}, "x", encoders={"text": decoder}).causal_mask is False  # causal by itself


def test_eval_perplexity_is_token_weighted_over_the_split(encoders) -> None:
    """Two eval batches with different token counts: perplexity = exp(total NLL / total tokens), which
    differs from exp of the mean of the two batch losses."""
    text = encoders["text"]
    task = PretrainTask({"text": text}, {"clm": OBJECTIVES.build({"name": "clm"}, "o", encoders={"text": text})}).eval()
    batches = [_padded(text.tokenizer, CAPTIONS[:1]), _padded(text.tokenizer, CAPTIONS[2:6])]
    metrics, nll, count, means = task.build_metrics(), 0.0, 0, []
    with torch.no_grad():
        for b in batches:
            out = task(b)
            metrics.update(out, b)
            logits = task.objectives["clm"].head(text(b, causal=True).tokens)  # (B, L, V)
            n = int(b[TEXT_MASK][:, 1:].sum())
            loss = clm_loss(logits, b[TEXT], b[TEXT_MASK]).item()
            nll, count = nll + loss * n, count + n
            means.append(loss)
    r = metrics.compute()
    text.train()
    assert r["clm_tokens"] == count
    assert r["clm_perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert abs(r["clm_perplexity"] - math.exp(sum(means) / 2)) > 1e-3 * r["clm_perplexity"]


def test_head_is_tied_as_the_model_config_says_unless_told(encoders, tmp_path: Path, tok) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2, n_positions=32))
    gpt2 = build_encoder(TEXT_ENCODERS, {"name": "hf", "name_or_path": _hf_dir(tmp_path, hf, tok)}, "model.text")
    assert OBJECTIVES.build({"name": "clm"}, "o", encoders={"text": gpt2}).head.weight is gpt2.model.wte.weight
    tiny = encoders["text"]
    assert OBJECTIVES.build({"name": "clm"}, "o", encoders={"text": tiny}).head.weight is not tiny.tok_embed.weight
    tied = OBJECTIVES.build({"name": "clm", "tie_embeddings": True}, "o", encoders={"text": tiny})
    assert tied.head.weight is tiny.tok_embed.weight
