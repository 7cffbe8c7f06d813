"""ARPA writer/reader: probabilities against a hand computation, every context normalised, KenLM agrees; the checks
of an LM's words against a CTC vocabulary and a lexicon."""
from __future__ import annotations

import itertools
import logging
import math

import pytest

from mm_ptft.heads.ngram_lm import BOS, EOS, UNK, build_lm, check_lexicon_in_lm, estimate, is_arpa, lm_words, \
    read_arpa, spellable, write_arpa

CORPUS = [["a", "b"], ["a"]]


def test_bigram_probabilities_by_hand(tmp_path):
    # unigrams (add-one over a b </s> <unk>): counts a2 b1 </s>2 → 3/9 2/9 3/9 1/9
    # bigrams, D=0.5: P(a|<s>) = 1.5/2; alpha(<s>) = 0.25 / (1 - 3/9) = 0.375 → P(b|<s>) = 0.375 * 2/9
    # P(b|a) = P(</s>|a) = 0.5/2; alpha(a) = 0.5 / (1 - 5/9) = 9/8 → P(a|a) = 9/8 * 3/9
    lm = read_arpa(write_arpa(estimate(CORPUS, order=2, discount=0.5), tmp_path / "lm.arpa"))
    p = lambda w, *ctx: 10 ** lm.log10_prob(w, ctx)  # noqa: E731
    assert p("a") == pytest.approx(3 / 9, rel=1e-5) and p(UNK) == pytest.approx(1 / 9, rel=1e-5)
    assert p("a", BOS) == pytest.approx(0.75, rel=1e-5)
    assert p("b", BOS) == pytest.approx(0.375 * 2 / 9, rel=1e-5)
    assert p("a", "a") == pytest.approx(9 / 8 * 3 / 9, rel=1e-5)
    assert p("zzz", "a") == pytest.approx(9 / 8 * 1 / 9, rel=1e-5)  # unknown word → <unk>
    # P(a b </s>) = 0.75 * 0.25 * P(</s>|b) = 0.75 * 0.25 * 0.5
    assert 10 ** lm.sentence_log10(["a", "b"]) == pytest.approx(0.09375, rel=1e-5)
    assert lm_words(tmp_path / "lm.arpa") == ["a", "b"] and is_arpa(tmp_path / "lm.arpa")


def test_trigram_probabilities_by_hand(tmp_path):
    # trigrams of CORPUS: (<s> a b) (a b </s>) (<s> a </s>), D=0.5. Context (<s> a): b 1, </s> 1 → 0.25 each;
    # alpha(<s> a) = (1 - 0.5) / (1 - P(b|a) - P(</s>|a)) = 0.5 / 0.5 = 1. Context (a b): P(</s>|a b) = 0.5,
    # alpha(a b) = 0.5 / (1 - P(</s>|b)) = 0.5 / 0.5 = 1
    lm = read_arpa(write_arpa(estimate(CORPUS, order=3, discount=0.5), tmp_path / "lm.arpa"))
    p = lambda w, *ctx: 10 ** lm.log10_prob(w, ctx)  # noqa: E731
    assert p("b", BOS, "a") == pytest.approx(0.25, rel=1e-5) and p(EOS, "a", "b") == pytest.approx(0.5, rel=1e-5)
    assert p("a", BOS, "a") == pytest.approx(1 * 9 / 8 * 3 / 9, rel=1e-5)  # backs off through alpha(<s> a) to a|a
    assert p("b", "b", "a") == pytest.approx(0.25, rel=1e-5)  # context (b a) unseen: P(b|a) with no penalty
    assert 10 ** lm.backoff[(BOS, "a")] == pytest.approx(1.0) and 10 ** lm.backoff[("a", "b")] == pytest.approx(1.0)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_every_context_sums_to_one(order):
    corpus = [s.split() for s in ["the cat sat", "the dog sat", "a cat ran", "the cat ran far", "dog"]]
    lm = estimate(corpus, order=order, discount=0.4)
    words = [*lm.words(), EOS, UNK]
    for ctx in itertools.chain([()], ((BOS,),), itertools.product([BOS, *lm.words()], repeat=min(order - 1, 2))):
        if ctx[1:2] == (BOS,):
            continue  # <s> only starts a sentence
        total = sum(10 ** lm.log10_prob(w, ctx) for w in words)
        assert total == pytest.approx(1.0, abs=1e-9), ctx


@pytest.mark.parametrize("order", [2, 3])
def test_kenlm_scores_our_arpa_file_the_same(tmp_path, order):
    kenlm = pytest.importorskip("kenlm", reason="the kenlm Python module (pip install kenlm) is not installed")
    corpus = [s.split() for s in ["the cat sat", "the dog sat", "a cat ran", "the cat ran far", "dog"]]
    path = write_arpa(estimate(corpus, order=order), tmp_path / "lm.arpa")
    ours, theirs = read_arpa(path), kenlm.Model(str(path))
    assert theirs.order == order
    for s in ["the cat sat", "a dog ran far", "cat the", "far far away", "the cat ran", "dog dog dog"]:
        assert theirs.score(s, bos=True, eos=True) == pytest.approx(ours.sentence_log10(s.split()), abs=1e-4), s


def test_build_lm_and_bad_inputs(tmp_path):
    path = build_lm(["one two", "", "two three"], tmp_path / "x.arpa", order=3)
    assert read_arpa(path).order == 3 and lm_words(path) == ["one", "three", "two"]
    assert not (tmp_path / "x.arpa.part").exists()
    with pytest.raises(ValueError, match="orders 1-3"):
        estimate(CORPUS, order=4)
    with pytest.raises(ValueError, match="order=1: build an order 2 or 3 model"):
        build_lm(["a b"], tmp_path / "uni.arpa", order=1)
    with pytest.raises(ValueError, match="no sentences"):
        build_lm(["", "  "], tmp_path / "y.arpa")
    with pytest.raises(ValueError, match=r"discount=1"):
        estimate(CORPUS, discount=1)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_arpa(tmp_path / "missing.arpa")
    (tmp_path / "bad.arpa").write_text("\\data\\\n\\1-grams:\n-0.5 a b c d\n")
    with pytest.raises(ValueError, match="bad.arpa:3"):
        read_arpa(tmp_path / "bad.arpa")
    with pytest.raises(ValueError, match="bad.arpa:3"):
        lm_words(tmp_path / "bad.arpa")
    (tmp_path / "words.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match=r"words.txt: no \\1-grams: section"):
        lm_words(tmp_path / "words.txt")
    assert not is_arpa(tmp_path / "words.txt")
    assert math.isclose(sum(10 ** v for g, v in estimate(CORPUS, 1).logp.items() if g != (BOS,)), 1.0)


def test_spellable_skips_a_few_and_refuses_a_mismatch(caplog):
    words = [f"w{'ab'[i % 2]}{i % 7}" for i in range(100)]  # letters w a b and digits 0-6
    chars = set("wab0123456")
    assert spellable(words, chars, "lm") == words
    with caplog.at_level(logging.WARNING, logger="mm_ptft"):
        kept = spellable([*words[:97], "wX", "wY", "wZ"], chars, "model.decoder.lm='x.arpa'")
    assert kept == words[:97] and "skipped 3 of 100 words" in caplog.text
    with pytest.raises(ValueError, match=r"lm='x.arpa': 6 of its 100 words .* outside the CTC vocabulary \['X'\]"):
        spellable([*words[:94], *["wX"] * 6], chars, "lm='x.arpa'")
    with pytest.raises(ValueError, match="no words"):
        spellable([], chars, "lm")


def test_lexicon_against_lm_words(caplog):
    with caplog.at_level(logging.WARNING, logger="mm_ptft"):
        check_lexicon_in_lm(["cat", "dog", "emu"], ["cat", "dog"], "lexicon")
    assert "1 of the lexicon's 3 words are not in the language model" in caplog.text
    with pytest.raises(ValueError, match="none of the lexicon's 2 words is in the language model"):
        check_lexicon_in_lm(["CAT", "DOG"], ["cat", "dog"], "lexicon")
