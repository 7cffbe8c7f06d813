"""Text augmentation: rates within binomial bounds, special tokens untouched, seeded per (epoch, index)."""
import math
from types import SimpleNamespace

import numpy as np
import pytest

from mm_ptft.config import ConfigError
from mm_ptft.data.text import AugmentedText, FollowEpoch, Records, TextAugment, TextAugmenter
from mm_ptft.types import LABELS, TEXT

CLS, SEP, PAD, UNK, MASK = 1, 2, 0, 3, 4
TOK = SimpleNamespace(all_special_ids=[PAD, CLS, SEP, UNK, MASK], mask_token_id=MASK, unk_token_id=UNK)
N = 20_000
BIG = [CLS, *range(10, 10 + N), SEP, PAD, PAD]  # distinct ordinary tokens 10.., specials at both ends


def within_binomial(k: int, n: int, p: float, z: float = 5.0) -> bool:
    return abs(k - n * p) <= z * math.sqrt(n * p * (1 - p))


def run(cfg: TextAugment, seed: int = 0) -> list[int]:
    return TextAugmenter(cfg, TOK)(BIG, np.random.default_rng(seed))


@pytest.mark.parametrize("mask, drop", [(0.15, 0.0), (0.0, 0.1), (0.2, 0.1)])
def test_mask_and_dropout_rates_are_binomial_and_exclusive(mask, drop):
    out = run(TextAugment(token_mask=mask, token_dropout=drop))
    assert len(out) == len(BIG) and out[0] == CLS and out[-3:] == [SEP, PAD, PAD]
    body = out[1:-3]
    masked, unk = body.count(MASK), body.count(UNK)
    kept = sum(t == o for t, o in zip(body, BIG[1:-3]))
    assert masked + unk + kept == N  # every token is masked, unknown or itself
    assert within_binomial(masked, N, mask) and within_binomial(unk, N, drop)


def test_deletion_rate_and_specials_kept():
    out = run(TextAugment(random_deletion=0.3))
    assert out[0] == CLS and out[-3:] == [SEP, PAD, PAD]
    body = out[1:-3]
    assert body == sorted(body)  # survivors keep their order
    assert within_binomial(N - len(body), N, 0.3)


def test_deletion_never_empties_a_sentence():
    aug = TextAugmenter(TextAugment(random_deletion=0.99), TOK)
    for s in range(200):
        out = aug([CLS, 10, 11, SEP], np.random.default_rng(s))
        assert out[0] == CLS and out[-1] == SEP and len(out) == 3


def test_swaps_permute_ordinary_tokens_only():
    out = run(TextAugment(random_swap=7))
    assert out[0] == CLS and out[-3:] == [SEP, PAD, PAD] and sorted(out[1:-3]) == BIG[1:-3]
    moved = sum(a != b for a, b in zip(out, BIG))
    assert 2 <= moved <= 14  # 7 swaps move at most 14 tokens (distinct tokens: a swap of two moves both)


def test_all_at_once_never_touches_specials():
    specials = [CLS, 10, SEP, 11, 12, PAD, 13, SEP]  # specials in the middle too
    aug = TextAugmenter(TextAugment(token_mask=0.3, token_dropout=0.3, random_swap=3, random_deletion=0.3), TOK)
    for s in range(300):
        out = aug(specials, np.random.default_rng(s))
        assert [t for t in out if t in (CLS, SEP, PAD)] == [CLS, SEP, PAD, SEP]
        assert [i for i, t in enumerate(out) if t == CLS] == [0]


def test_same_seed_epoch_index_gives_the_same_sample_and_eval_data_is_separate():
    base = Records([{TEXT: BIG[:200], LABELS: 1}, {TEXT: BIG[:200], LABELS: 0}])
    ds = AugmentedText(base, TextAugmenter(TextAugment(token_mask=0.2, random_swap=2), TOK), seed=5)
    again = AugmentedText(base, TextAugmenter(TextAugment(token_mask=0.2, random_swap=2), TOK), seed=5)
    assert ds[0] == again[0] and ds.sample(0, 3) == again.sample(0, 3)
    assert ds[0][TEXT] != ds[1][TEXT]  # same tokens, different index: different noise
    assert ds.sample(0, 0)[TEXT] != ds.sample(0, 1)[TEXT]  # a new epoch draws new noise
    trainer = SimpleNamespace(train_loader=SimpleNamespace(batch_sampler=SimpleNamespace(epoch=1)))
    FollowEpoch(ds).on_train_start(trainer)
    assert ds[0] == ds.sample(0, 1)  # the epoch is the sampler's
    assert base[0][TEXT] == BIG[:200]  # the records themselves are never changed
    assert ds[0][LABELS] == 1 and ds.count() == 2


def test_bad_settings_name_the_key():
    with pytest.raises(ConfigError, match="data.augment.token_mask=0.1: the tokenizer has no mask token"):
        TextAugmenter(TextAugment(token_mask=0.1), SimpleNamespace(all_special_ids=[0], mask_token_id=None, unk_token_id=1))
    with pytest.raises(ConfigError, match="token_mask \\+ token_dropout"):
        TextAugmenter(TextAugment(token_mask=0.6, token_dropout=0.5), TOK)
