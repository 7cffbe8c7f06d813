"""NSP and SOP: segment splitting and pair layout by hand, label statistics, and loss parity with
transformers' BertForPreTraining / BertForNextSentencePrediction / BertForMaskedLM on the same weights."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mm_ptft.encoders import TEXT_ENCODERS, build_encoder
from mm_ptft.encoders.text import train_wordpiece
from mm_ptft.objectives import OBJECTIVES, EncodedBatch
from mm_ptft.objectives.masked import mask_tokens, mlm_loss
from mm_ptft.objectives.sentence import encode_pairs, nsp_pairs, sop_pairs, split_segments, truncate_pair
from mm_ptft.types import TEXT, TEXT_MASK, TEXT_SEGMENTS

DOT = 9
TEXTS = ["the circle is red. it is small", "a blue square! it is large", "a yellow cross",
         "the small triangle. is green", "red", "a large circle. a small square. a cross"]


def test_split_at_the_sentence_end_nearest_the_middle_else_the_middle() -> None:
    assert split_segments([5, 6, DOT, 7, 8, 9 + 1], {DOT}) == ([5, 6, DOT], [7, 8, 10])
    assert split_segments([5, 6, 7, DOT, 8, DOT, 1, 2], {DOT}) == ([5, 6, 7, DOT], [8, DOT, 1, 2])  # cuts 4, 6
    assert split_segments([5, DOT, 6, 7, 8, DOT, 1, 2], {DOT}) == ([5, DOT], [6, 7, 8, DOT, 1, 2])  # tie: earlier
    assert split_segments([5, DOT, 6, DOT], {DOT}) == ([5, DOT], [6, DOT])  # a final '.' is no cut
    assert split_segments([5, 6, 7, 8, 11], set()) == ([5, 6], [7, 8, 11])
    assert split_segments([5, 6], {DOT}) == ([5], [6])


def test_truncate_pair_drops_from_the_longer_end() -> None:
    assert truncate_pair([1, 2, 3, 4, 5], [6, 7], 5) == ([1, 2, 3], [6, 7])
    assert truncate_pair([1, 2], [3, 4, 5], 3) == ([1, 2], [3])  # on a tie B loses (BERT's reference)


def test_encode_pairs_is_cls_a_sep_b_sep_with_segment_ids() -> None:
    out = encode_pairs([([5, 6], [7]), ([8], [9, 10, 11])], 2, 3, 0, 64, torch.device("cpu"))
    assert out[TEXT].tolist() == [[2, 5, 6, 3, 7, 3, 0], [2, 8, 3, 9, 10, 11, 3]]
    assert out[TEXT_SEGMENTS].tolist() == [[0, 0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1, 1]]
    assert out[TEXT_MASK].tolist() == [[1, 1, 1, 1, 1, 1, 0], [1] * 7]
    assert encode_pairs([([5, 6, 7, 8], [9, 10])], 2, 3, 0, 7, torch.device("cpu"))[TEXT].tolist() == [
        [2, 5, 6, 3, 9, 10, 3]]


def test_nsp_and_sop_labels_are_balanced_and_say_what_was_done() -> None:
    halves = [([i], [10_000 + i]) for i in range(2000)]
    g = torch.Generator().manual_seed(0)
    pairs, labels = nsp_pairs(halves, g)
    assert abs(labels.float().mean().item() - 0.5) < 0.035  # sd of the share: 0.011
    for (a, b), y in zip(pairs, labels.tolist()):
        assert (b[0] - 10_000 == a[0]) == (y == 0)  # 0: its own next segment; 1: another row's
    pairs, labels = sop_pairs(halves, g)
    assert abs(labels.float().mean().item() - 0.5) < 0.035
    assert all((a[0] >= 10_000) == (y == 1) for (a, _), y in zip(pairs, labels.tolist()))  # 1: swapped
    assert nsp_pairs(halves[:1], g)[1].tolist() == [0]  # one row: no other row to draw from


@pytest.mark.parametrize("name", ["nsp", "sop"])
def test_rows_too_short_to_split_are_skipped_and_counted(encoders, name: str) -> None:
    text = encoders["text"]
    obj = OBJECTIVES.build({"name": name}, "o", encoders={"text": text}).eval()
    enc = text.tokenizer(["a", "a small red circle", "b"], padding=True, return_tensors="pt")
    batch = {TEXT: enc["input_ids"], TEXT_MASK: enc["attention_mask"]}
    with torch.no_grad():
        out = obj(EncodedBatch({"text": text}, batch), batch)
    assert out[f"{name}_rows_skipped"].item() == 2 and torch.isfinite(out[f"{name}_loss"])
    short = {TEXT: batch[TEXT][[0, 2]], TEXT_MASK: batch[TEXT_MASK][[0, 2]]}
    assert obj.train()(EncodedBatch({"text": text}, short), short)[f"{name}_loss"].item() == 0.0


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> tuple[str, object]:
    """A tiny random BertForPreTraining saved with a WordPiece tokenizer learned on TEXTS."""
    from transformers import BertConfig, BertForPreTraining

    tok = train_wordpiece(TEXTS, 100)
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=2, intermediate_size=64, pad_token_id=tok.pad_token_id))
    with torch.no_grad():  # a random init has zero biases: make the loaded biases count
        for p in model.cls.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    d = tmp_path_factory.mktemp("bert")
    model.save_pretrained(str(d))
    tok.save_pretrained(str(d))
    return str(d), model.eval()


def _ours(d: str):
    text = build_encoder(TEXT_ENCODERS, {"name": "hf", "name_or_path": d, "pooling": "pooler"}, "model.text").eval()
    build = {k: OBJECTIVES.build({"name": k, "init_from_pretrained_head": True}, f"model.objectives.{k}",
                                 encoders={"text": text}).eval() for k in ("mlm", "nsp")}
    return text, build


def _batch(tok) -> dict:
    enc = tok(TEXTS * 2, padding=True, return_tensors="pt")
    return {TEXT: enc["input_ids"], TEXT_MASK: enc["attention_mask"]}


def test_mlm_plus_nsp_equals_bert_for_pretraining_loss(bert_dir) -> None:
    d, hf = bert_dir
    text, obj = _ours(d)
    tok = text.tokenizer
    pairs, nsp_labels, skipped = obj["nsp"].pair_batch(_batch(tok))
    assert skipped == 2 and set(nsp_labels.tolist()) == {0, 1}  # the one-word row can't be split
    ids, labels = mask_tokens(pairs[TEXT], pairs[TEXT_MASK], tok.all_special_ids, tok.mask_token_id, len(tok), 0.3,
                              torch.Generator().manual_seed(0))
    assert (labels != -100).sum() >= 5
    inputs = {**pairs, TEXT: ids}
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=pairs[TEXT_MASK], token_type_ids=pairs[TEXT_SEGMENTS], labels=labels,
                 next_sentence_label=nsp_labels).loss
        out = text(inputs)
        ours = mlm_loss(obj["mlm"].head(out.tokens), labels) + torch.nn.functional.cross_entropy(
            obj["nsp"].logits(text, inputs), nsp_labels)
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5)


def test_objectives_forward_equal_transformers_single_task_heads(bert_dir) -> None:
    """Each objective's own forward (its pairs, its eval masks) = the transformers class with that head alone,
    loaded from the same BertForPreTraining checkpoint."""
    from transformers import BertForMaskedLM, BertForNextSentencePrediction

    d, _ = bert_dir
    text, obj = _ours(d)
    batch, feats = _batch(text.tokenizer), EncodedBatch({"text": text}, _batch(text.tokenizer))
    with torch.no_grad():
        pairs, labels, _ = obj["nsp"].pair_batch(batch)
        obj["nsp"].train().eval()  # restart the fixed eval sequence: forward draws the same pairs
        ours_nsp = obj["nsp"](feats, batch)["nsp_loss"]
        ref_nsp = BertForNextSentencePrediction.from_pretrained(d).eval()(
            input_ids=pairs[TEXT], attention_mask=pairs[TEXT_MASK], token_type_ids=pairs[TEXT_SEGMENTS],
            labels=labels).loss
        inputs, mlm_labels = obj["mlm"].masked_batch(batch)
        obj["mlm"].train().eval()
        ours_mlm = obj["mlm"](feats, batch)["mlm_loss"]
        ref_mlm = BertForMaskedLM.from_pretrained(d).eval()(input_ids=inputs[TEXT], attention_mask=inputs[TEXT_MASK],
                                                              labels=mlm_labels).loss
    assert ours_nsp.item() == pytest.approx(ref_nsp.item(), abs=1e-5)
    assert ours_mlm.item() == pytest.approx(ref_mlm.item(), abs=1e-5)


def test_init_from_pretrained_head_needs_the_head_in_the_checkpoint(bert_dir, tmp_path: Path) -> None:
    d, hf = bert_dir
    hf.bert.save_pretrained(str(tmp_path))  # the encoder alone
    text = build_encoder(TEXT_ENCODERS, {"name": "hf", "name_or_path": str(tmp_path), "tokenizer": d}, "model.text")
    for name, missing in (("nsp", "cls.seq_relationship"), ("mlm", "cls.predictions"), ("sop", "sop_classifier")):
        with pytest.raises(ValueError, match=rf"model.objectives.{name}.init_from_pretrained_head: .*{missing}"):
            OBJECTIVES.build({"name": name, "init_from_pretrained_head": True}, f"model.objectives.{name}",
                             encoders={"text": text})


def test_sop_head_loads_albert_and_gives_its_sop_logits(tmp_path: Path) -> None:
    """sop with init_from_pretrained_head on an AlbertForPreTraining checkpoint: our logits on our pairs equal
    the model's own ``sop_logits`` (its loss needs MLM labels too, so the logits are compared)."""
    from transformers import AlbertConfig, AlbertForPreTraining

    tok = train_wordpiece(TEXTS, 100)
    torch.manual_seed(0)
    hf = AlbertForPreTraining(AlbertConfig(vocab_size=len(tok), embedding_size=16, hidden_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, intermediate_size=64, pad_token_id=tok.pad_token_id))
    with torch.no_grad():
        hf.sop_classifier.classifier.bias.add_(torch.tensor([0.3, -0.2]))
    hf.save_pretrained(str(tmp_path))
    tok.save_pretrained(str(tmp_path))
    text = build_encoder(TEXT_ENCODERS, {"name": "hf", "name_or_path": str(tmp_path), "pooling": "pooler"},
                         "model.text").eval()
    sop = OBJECTIVES.build({"name": "sop", "init_from_pretrained_head": True}, "o", encoders={"text": text}).eval()
    pairs, labels, _ = sop.pair_batch(_batch(tok))
    assert set(labels.tolist()) == {0, 1}
    with torch.no_grad():
        ref = hf.eval()(input_ids=pairs[TEXT], attention_mask=pairs[TEXT_MASK], token_type_ids=pairs[TEXT_SEGMENTS])
        torch.testing.assert_close(sop.logits(text, pairs), ref.sop_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type,extra", [("roberta", {"type_vocab_size": 1}), ("gpt2", {})])
def test_pairs_run_on_encoders_without_two_segment_types(model_type: str, extra: dict) -> None:
    """RoBERTa has one token type (segment id 1 would index past its table) and GPT-2 would embed segment ids
    as tokens: the pairs reach them without segment ids, marked by [SEP] alone."""
    sizes = ({"n_embd": 16, "n_layer": 1, "n_head": 2} if model_type == "gpt2" else
             {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32})
    text = build_encoder(TEXT_ENCODERS, {"name": "hf", "config": {"model_type": model_type, **sizes, **extra}},
                         "model.text", corpus=TEXTS).eval()
    sop = OBJECTIVES.build({"name": "sop"}, "o", encoders={"text": text}).eval()
    batch = _batch(text.tokenizer)
    pairs, _, _ = sop.pair_batch(batch)
    with torch.no_grad():
        with_segments = sop.logits(text, pairs)
        without = sop.logits(text, {k: v for k, v in pairs.items() if k != TEXT_SEGMENTS})
    torch.testing.assert_close(with_segments, without)
