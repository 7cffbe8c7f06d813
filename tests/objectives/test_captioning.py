"""Captioning: teacher-forcing inputs/labels by hand, the caption loss against open_clip's CoCaLoss on the same
logits/labels, an HF (GPT-2, cross-attention) decoder's loss against the model's own ``labels=`` loss, its
``generate`` against the shared greedy loop, audio captioning through the same objective, build-time errors."""
from __future__ import annotations

import pytest
import torch

from mm_ptft.objectives import EncodedBatch
from mm_ptft.objectives.captioning import (IGNORE, caption_io, caption_loss, captioning, greedy_decode)
from mm_ptft.types import TEXT, TEXT_MASK

GPT2 = {"name": "hf", "config": {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 32}}


def test_caption_io_shifts_and_ignores_padding() -> None:
    ids, mask = torch.tensor([[2, 7, 8, 3], [2, 9, 3, 0]]), torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    inputs, in_mask, labels = caption_io(ids, mask, bos=2, eos=3, wrap=False)
    assert inputs.tolist() == [[2, 7, 8], [2, 9, 3]]
    assert labels.tolist() == [[7, 8, 3], [9, 3, IGNORE]]
    assert in_mask.tolist() == [[1, 1, 1], [1, 1, 1]]


def test_caption_io_wraps_a_tokenizer_without_specials() -> None:
    ids, mask = torch.tensor([[7, 8], [9, 0]]), torch.tensor([[1, 1], [1, 0]])
    inputs, in_mask, labels = caption_io(ids, mask, bos=50, eos=51, wrap=True)
    assert inputs.tolist() == [[50, 7, 8], [50, 9, 51]]  # the shorter row's EOS is input (its label is ignored)
    assert in_mask.tolist() == [[1, 1, 1], [1, 1, 1]]
    assert labels.tolist() == [[7, 8, 51], [9, 51, IGNORE]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_caption_loss_matches_open_clip_coca_loss(seed: int) -> None:
    from open_clip.loss import CoCaLoss

    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, 7, 30, generator=g) * 3  # (B, L, V)
    labels = torch.randint(1, 30, (4, 7), generator=g)
    labels[1, 5:] = 0  # open_clip's padding id (ignored)
    labels[3, 2:] = 0
    feats = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    ref = CoCaLoss(caption_loss_weight=1.0, clip_loss_weight=0.0, pad_id=0)
    _, theirs = ref(feats, feats, logits, labels, torch.tensor(10.0))
    ours = caption_loss(logits, labels.masked_fill(labels == 0, IGNORE))
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-6)


def test_caption_loss_label_smoothing_and_empty() -> None:
    logits, labels = torch.randn(2, 3, 5), torch.tensor([[1, 2, IGNORE], [4, IGNORE, IGNORE]])
    ref = torch.nn.CrossEntropyLoss(ignore_index=IGNORE, label_smoothing=0.1)(logits.permute(0, 2, 1), labels)
    assert caption_loss(logits, labels, 0.1).item() == pytest.approx(ref.item(), abs=1e-6)
    none = caption_loss(logits.requires_grad_(), torch.full((2, 3), IGNORE))
    assert none.item() == 0.0 and none.requires_grad


def _eval_batch(encoders, batch):
    for e in encoders.values():
        e.eval()
    return EncodedBatch(encoders, batch)


def test_hf_decoder_loss_equals_the_models_own_loss(encoders, batch) -> None:
    torch.manual_seed(0)
    obj = captioning(encoders, decoder=GPT2, max_new_tokens=5).eval()
    feats = _eval_batch(encoders, batch)
    with torch.no_grad():
        out = obj(feats, batch)
        memory, mem_mask = obj.memory(feats)
        ids, mask = batch[TEXT], batch[TEXT_MASK]
        hf = obj.decoder.model(input_ids=ids, attention_mask=mask, encoder_hidden_states=memory,
                               encoder_attention_mask=mem_mask.long(), labels=ids.masked_fill(mask == 0, IGNORE))
    assert out["caption_image_loss"].item() == pytest.approx(hf.loss.item(), abs=1e-5)
    assert out["caption_image_nll_sum"].item() / out["caption_image_tokens"].item() == pytest.approx(
        out["caption_image_loss"].item(), abs=1e-5)
    assert len(out["caption_image_generated"]) == len(out["caption_image_references"]) == ids.shape[0]


def test_hf_generate_equals_the_greedy_loop(encoders, batch) -> None:
    torch.manual_seed(1)
    obj = captioning(encoders, decoder=GPT2, max_new_tokens=6).eval()
    memory, mem_mask = obj.memory(_eval_batch(encoders, batch))
    mem_mask[1, 2:] = False  # a padded memory row
    theirs = obj.decoder.generate(memory, mem_mask, obj.bos, obj.eos, 6)
    ours = greedy_decode(obj.decoder, memory, mem_mask, obj.bos, obj.eos, 6)
    n = min(theirs.shape[1], ours.shape[1])  # generate stops when every row ended; the loop likewise
    assert torch.equal(theirs[:, :n], ours[:, :n])


@pytest.mark.parametrize("modality", ["image", "audio"])
def test_tiny_decoder_trains_source_encoder_and_captions(encoders, batch, modality: str) -> None:
    torch.manual_seed(0)
    obj = captioning(encoders, modality=modality, decoder={"name": "tiny", "dim": 32, "depth": 1, "heads": 2},
                     max_new_tokens=4)
    for e in encoders.values():
        e.train()
        e.zero_grad()
    out = obj(EncodedBatch(encoders, batch), batch)
    assert set(out) == {f"caption_{modality}_loss"}
    out[f"caption_{modality}_loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoders[modality].parameters())
    captions = obj.caption(EncodedBatch(encoders, batch))
    assert len(captions) == batch[TEXT].shape[0] and all(isinstance(c, str) for c in captions)


def test_build_errors_name_the_problem(encoders) -> None:
    with pytest.raises(ValueError, match="no cross-attention"):
        captioning(encoders, decoder={"name": "hf", "config": {"model_type": "llama", "hidden_size": 32,
                                                                 "intermediate_size": 64, "num_hidden_layers": 1,
                                                                 "num_attention_heads": 2}})
    with pytest.raises(ValueError, match="image or audio"):
        captioning(encoders, modality="text")
    with pytest.raises(ValueError, match="max_new_tokens"):
        captioning(encoders, decoder={"name": "tiny", "max_length": 8}, max_new_tokens=8)
    with pytest.raises(KeyError, match="model.image"):
        captioning({"text": encoders["text"]})
