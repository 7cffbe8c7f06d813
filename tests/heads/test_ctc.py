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


LM_SENTENCES = ["the cat sat", "a cat ran", "the dog sat", "a dog ran far", "the cat ran far", "the dog ran"]


def _noisy_emissions(texts: list[str], vocab: CharVocab, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two frames per character (then a blank); on ~35% of characters a wrong letter outscores the right one."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for t in texts:
        frames = []
        for c in t.replace(" ", "|"):
            p = torch.full((len(vocab),), 0.02)
            right = vocab.index[c]
            wrong = int(torch.randint(2, len(vocab), (1,), generator=g))
            swap = c != "|" and wrong != right and float(torch.rand(1, generator=g)) < 0.35
            p[right], p[wrong] = (0.35, 0.45) if swap else (0.6, p[wrong])
            frames += [p / p.sum()] * 2 + [torch.eye(len(vocab))[0] * 0.9 + 0.1 / len(vocab)]
        rows.append(torch.stack(frames).log())  # (N, V)
    n = torch.tensor([len(r) for r in rows])
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=-1e4), n  # (B, N, V), (B,)


def test_lm_fusion_wer_beam_lm_le_beam_le_greedy(tmp_path):
    from mm_ptft.heads.ngram_lm import build_lm

    texts = LM_SENTENCES * 3
    vocab = CharVocab.from_texts(texts)
    lm = build_lm(LM_SENTENCES, tmp_path / "lm.arpa", order=3)
    lp, n = _noisy_emissions(texts, vocab)
    wer = {}
    for name, spec in {"greedy": "greedy", "beam": "beam",
                       "beam+lm": {"name": "beam", "lm": str(lm), "lm_weight": 1.0, "word_score": 0.0}}.items():
        wer[name] = jiwer.wer(texts, Transcriber(vocab, spec, beam_size=20)(lp, n))
    assert wer["greedy"] > 0.2  # the noise really corrupts the best path
    assert wer["beam+lm"] <= wer["beam"] <= wer["greedy"], wer
    assert wer["beam+lm"] < 0.5 * wer["greedy"], wer  # the LM's words and grammar repair most errors


def test_lm_decoder_options_lexicon_and_beam_size(tmp_path):
    """decoder.lexicon narrows the LM's words (a file or a list); decoder.beam_size overrides model.beam_size."""
    from mm_ptft.heads.ngram_lm import build_lm

    texts = LM_SENTENCES * 2
    vocab = CharVocab.from_texts(texts)
    lm = str(build_lm(LM_SENTENCES, tmp_path / "lm.arpa"))
    lp, n = _noisy_emissions(texts, vocab)
    words_file = tmp_path / "words.txt"
    words_file.write_text("the\ncat\nsat\n")
    for lexicon in (str(words_file), ["the", "cat", "sat"]):
        tr = Transcriber(vocab, {"name": "beam", "lm": lm, "lm_weight": 1.0, "lexicon": lexicon, "beam_size": 7})
        assert tr.spec.beam_size == 7
        assert {w for h in tr(lp, n) for w in h.split()} <= {"the", "cat", "sat"}


def test_lm_decoder_bad_inputs(tmp_path, caplog):
    from mm_ptft.heads.ngram_lm import build_lm

    missing = tmp_path / "nope.arpa"
    with pytest.raises(FileNotFoundError, match=r"model.decoder.lm='.*nope.arpa' does not exist.*build-lm"):
        Transcriber(VOCAB, {"name": "beam", "lm": str(missing)})
    lm = str(build_lm(["abc cab", "dog"], tmp_path / "lm.arpa"))
    with pytest.raises(ValueError, match=r"lm='.*lm.arpa': 1 of its 3 words use characters outside the CTC "
                                         r"vocabulary \['d', 'g', 'o'\]"):
        Transcriber(VOCAB, {"name": "beam", "lm": lm})
    upper = str(build_lm(["ABC CAB", "BA"], tmp_path / "upper.arpa"))
    with pytest.raises(ValueError, match=r"3 of its 3 words .*data.lowercase"):
        Transcriber(VOCAB, {"name": "beam", "lm": upper})
    with pytest.raises(ValueError, match=r"none of the lexicon's 2 words is in the language model"):
        Transcriber(VOCAB, {"name": "beam", "lm": str(build_lm(["abc cab"], tmp_path / "ok.arpa")),
                            "lexicon": ["ba", "ab"]})
    with pytest.raises(ValueError, match=r"unknown keys \['weight'\]"):
        Transcriber(VOCAB, {"name": "beam", "weight": 1.0})
    with pytest.raises(ValueError, match="needs model.decoder.name=beam"):
        Transcriber(VOCAB, {"name": "greedy", "lm": lm})
    with pytest.raises(ValueError, match=r"model.decoder.lm_weight='heavy': a finite number"):
        Transcriber(VOCAB, {"name": "beam", "lm": lm, "lm_weight": "heavy"})
    with pytest.raises(ValueError, match=r"model.decoder.beam_size=0: a positive integer"):
        Transcriber(VOCAB, {"name": "beam", "beam_size": 0})
    with pytest.raises(ValueError, match=r"lm_weight/word_score need model.decoder.lm"):
        Transcriber(VOCAB, {"name": "beam", "word_score": 1.0})
    with pytest.raises(FileNotFoundError, match=r"model.decoder.lexicon='.*none.txt' does not exist"):
        Transcriber(VOCAB, {"name": "beam", "lexicon": str(tmp_path / "none.txt")})
    binary = tmp_path / "lm.bin"
    binary.write_bytes(b"mmap lm http://kheafield.com/code format version 5\n\0garbage")
    with pytest.raises(ValueError, match=r"lm='.*lm.bin' is a KenLM binary, whose words cannot be read: set "
                                         r"model.decoder.lexicon or model.lexicon"):
        Transcriber(VOCAB, {"name": "beam", "lm": str(binary)})
    with pytest.raises(ValueError, match=r"lm='.*lm.bin': KenLM cannot load it"):  # a corrupt file, words given
        Transcriber(VOCAB, {"name": "beam", "lm": str(binary)}, words=["abc"])
    unigram = tmp_path / "unigram.arpa"
    unigram.write_text("\\data\\\nngram 1=2\n\n\\1-grams:\n-0.3\tabc\n-0.3\t</s>\n\n\\end\\\n")
    with pytest.raises(ValueError, match=r"KenLM cannot load it .*at least a bigram"):
        Transcriber(VOCAB, {"name": "beam", "lm": str(unigram)})
