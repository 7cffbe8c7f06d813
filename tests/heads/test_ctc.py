"""CTC head: vocabulary, normalisation, greedy and beam decoding, WER/CER, the loss."""
from __future__ import annotations

import math

import jiwer
import pytest
import torch

from mm_ptft.encoders.audio import AUDIO_ENCODERS
from mm_ptft.encoders.base import build_encoder
from mm_ptft.heads.ctc import (BeamDecoder, CharVocab, CTCTask, Transcriber, greedy_decode, needed_frames,
                               normalize_text)
from mm_ptft.metrics.ctc import CTCMetrics
from mm_ptft.types import AUDIO, AUDIO_LENGTHS, LABELS

from mm_fixtures import ctc_tokenizer_dir

VOCAB = CharVocab(["<blank>", "|", "a", "b", "c"])


def _log_probs(frames: list[list[float]]) -> torch.Tensor:
    return torch.tensor(frames).log().unsqueeze(0)  # (1, N, V)


def test_vocab_from_texts_and_round_trip():
    v = CharVocab.from_texts(["ba c", "cab"])
    assert v.tokens == ["<blank>", "|", "a", "b", "c"]
    ids, unknown = v.encode("ab cx")
    assert ids == [2, 3, 1, 4] and unknown == 1
    assert v.decode(ids) == "ab c"
    with pytest.raises(ValueError, match="<blank>"):
        CharVocab(["a", "b"])


def test_vocab_from_hf_ctc_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ctc_tokenizer_dir(tmp_path, "etaoin'"))
    vocab = CharVocab.from_tokenizer(tok)
    # pad → blank (id 0), "|" → word boundary, <s> </s> <unk> dropped, characters in the tokenizer's order
    assert vocab.tokens == ["<blank>", "|", "e", "t", "a", "o", "i", "n", "'"]
    assert vocab.encode("tea on") == ([3, 2, 4, 1, 5, 7], 0)


def test_vocab_from_subword_tokenizer_is_refused():
    class WordPiece:
        pad_token, all_special_tokens = "[PAD]", ["[PAD]"]

        def get_vocab(self):
            return {"[PAD]": 0, "a": 1, "##ing": 2}

    with pytest.raises(ValueError, match="multi-character tokens.*##ing"):
        CharVocab.from_tokenizer(WordPiece())


def test_normalize_text():
    assert normalize_text("  Hello, World!  It's   me.") == "hello world it's me"
    assert normalize_text("Hello, World", lowercase=False, strip_punctuation=False) == "Hello, World"


def test_greedy_decoding_hand_example():
    # frames argmax: a a _ a b b | _ c  → merge repeats, drop blanks → "aab c" … with blank between a's
    ids = [2, 2, 0, 2, 3, 3, 1, 0, 4]
    frames = [[0.9 if i == k else 0.025 for i in range(5)] for k in ids]
    out = greedy_decode(_log_probs(frames), torch.tensor([len(ids)]))
    assert out == [[2, 2, 3, 1, 4]] and VOCAB.decode(out[0]) == "aab c"
    # the length cuts off frames beyond it
    assert greedy_decode(_log_probs(frames), torch.tensor([4])) == [[2, 2]]


def test_beam_search_sums_paths_where_greedy_does_not():
    # two frames, each: blank 0.4, "a" 0.35, "|" 0.25 → best path is blank blank (""), p = 0.16,
    # but P("a") = 0.35*0.35 + 0.35*0.4 + 0.4*0.35 = 0.4025 summed over its three paths
    frames = [[0.4, 0.25, 0.35, 0.0, 0.0]] * 2
    lp, n = _log_probs([[max(p, 1e-9) for p in f] for f in frames]), torch.tensor([2])
    assert Transcriber(VOCAB, "greedy")(lp, n) == [""]
    assert BeamDecoder(VOCAB, beam_size=10)(lp, n) == ["a"]


def test_beam_search_matches_greedy_on_peaky_output():
    ids = [2, 0, 3, 1, 4, 4]
    frames = [[0.96 if i == k else 0.01 for i in range(5)] for k in ids]
    assert Transcriber(VOCAB, "beam", 5)(_log_probs(frames), torch.tensor([6])) == ["ab c"]


def test_wer_cer_against_hand_computed_values_and_jiwer():
    refs, hyps = ["the cat sat", "a dog"], ["the bat sat", "a dog ran"]
    metrics = CTCMetrics(Transcriber(VOCAB))
    metrics.transcriber = lambda lp, n: hyps  # metrics only: decoding is tested above
    metrics.update({"log_probs": None, "frame_lengths": None}, {"transcripts": refs})
    r = metrics.compute()
    # words: 1 substitution + 1 insertion over 5 reference words; chars: 1 substitution + 4 insertions over 16
    assert r["wer"] == pytest.approx(2 / 5) and r["cer"] == pytest.approx(5 / 16)
    assert r["wer"] == pytest.approx(jiwer.wer(refs, hyps)) and r["cer"] == pytest.approx(jiwer.cer(refs, hyps))


def test_needed_frames():
    assert needed_frames([2, 2, 3]) == 4 and needed_frames([2, 3, 4]) == 3 and needed_frames([]) == 0


def test_ctc_task_loss_and_eval_outputs():
    torch.manual_seed(0)
    enc = build_encoder(AUDIO_ENCODERS, {"name": "tiny", "dim": 16, "depth": 1, "heads": 2, "n_mels": 8},
                        "model.audio")
    task = CTCTask(enc, VOCAB, dropout=0.0)
    batch = {AUDIO: torch.randn(2, 4000), AUDIO_LENGTHS: torch.tensor([4000, 3000]),
             LABELS: torch.tensor([[2, 3, 4], [2, 0, 0]]), "label_lengths": torch.tensor([3, 1])}
    out = task(batch)
    ref = torch.nn.functional.ctc_loss(out["log_probs"].transpose(0, 1), batch[LABELS], out["frame_lengths"],
                                       batch["label_lengths"], reduction="none")
    assert out["loss"].item() == pytest.approx((ref / torch.tensor([3.0, 1.0])).mean().item(), rel=1e-5)
    assert math.isfinite(out["loss"].item()) and set(out) == {"loss", "ctc_loss", "log_probs", "frame_lengths"}
    assert out["frame_lengths"].tolist() == enc.frame_lengths(batch[AUDIO_LENGTHS]).tolist()
    out["loss"].backward()
    assert task.main_metric == "wer" and task.greater_is_better is False
    assert len(task.eval().transcribe(batch)) == 2


def test_lexicon_decoder_only_emits_known_words():
    # emissions spell "cac ab": "cac" is not a word, so the lexicon decoder picks the nearest known spelling
    ids = [4, 2, 4, 1, 2, 3]
    frames = [[0.8 if i == k else 0.05 for i in range(5)] for k in ids]
    lp, n = _log_probs(frames), torch.tensor([6])
    assert Transcriber(VOCAB, "beam", 5)(lp, n) == ["cac ab"]
    assert Transcriber(VOCAB, "lexicon", 5, words=["ab", "cab"])(lp, n) == ["cab ab"]
    with pytest.raises(ValueError, match="lexicon"):
        Transcriber(VOCAB, "lexicon")
