"""mm_ptft/data/sft.py against hand-built expectations: the plain template written out, prompt masks counted by
hand from the tokenizer's own ids, left truncation and its count, bad rows named or counted, padding and packing
laid out position by position, the streamed row function."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mm_ptft.data.sft import (IGNORE, PLAIN_TEMPLATE, UNPACKED, SFTCollator, SFTRow, check_messages, encode_chat,
                              pad_rows, plain_prompt, sft_records, sft_sample)
from mm_ptft.data.tables import DataError
from mm_ptft.encoders.text import train_wordpiece

COLS = {"prompt": "prompt", "response": "response", "messages": "messages"}


@pytest.fixture(scope="module")
def tok():
    t = train_wordpiece(["copy: a b c d", "reverse: c b a", "### user:", "### assistant:", "### system:", "be brief"],
                        300)
    t.eos_token, t.bos_token = t.sep_token, t.cls_token  # what build_causal_lm does for a learned vocabulary
    return t


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_plain_template_is_the_documented_text():
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "copy: a"}]
    assert plain_prompt(msgs) == "### System:\nbe brief\n### User:\ncopy: a\n### Assistant:\n"
    assert PLAIN_TEMPLATE.format(Role="User", content="x") == "### User:\nx\n"


@pytest.mark.parametrize("messages, what", [
    ([], "non-empty list"),
    ("hello", "non-empty list"),
    ([{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "a"}], "unknown message role 'wizard'"),
    ([{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}], "a user message without text"),
    ([{"role": "user", "content": "x"}], "last message must be a non-empty assistant turn"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "content": "  "}], "non-empty assistant turn"),
])
def test_bad_chats_are_errors_naming_the_row(messages, what):
    with pytest.raises(DataError, match=f"f.jsonl: row 7: .*{what}.*skip_bad_samples"):
        check_messages(messages, "f.jsonl", 7)


def test_plain_encoding_and_the_prompt_mask_counted_by_hand(tok):
    row = {"prompt": "copy: a b", "response": "a b"}
    prompt, response = encode_chat(tok, check_messages([{"role": "user", "content": row["prompt"]},
                                                        {"role": "assistant", "content": "a b"}], "f", 0))
    want_prompt = [tok.cls_token_id] + ids(tok, "### User:\ncopy: a b\n### Assistant:\n")
    assert prompt == want_prompt and response == ids(tok, "a b") + [tok.sep_token_id]
    item = sft_sample(tok, row, COLS, 64, "f", 0, {})
    assert item["text"] == want_prompt + response
    assert item["labels"] == [-100] * len(want_prompt) + response  # only the response (and its EOS) is learnt
    assert item["prompt_len"] == len(want_prompt) and item["reference"] == "a b"


def test_long_prompts_lose_their_first_tokens_and_are_counted(tok):
    row = {"prompt": "copy: " + "a b c d " * 10, "response": "a"}
    full = sft_sample(tok, row, COLS, 512, "f", 0, {})
    counters: dict[str, int] = {}
    cut = sft_sample(tok, row, COLS, 20, "f", 0, counters)
    assert len(cut["text"]) == 20 and cut["text"] == full["text"][-20:]  # the prompt's left end went
    assert cut["labels"][-2:] == full["labels"][-2:] and cut["prompt_len"] == 20 - 2
    assert counters == {"truncated_prompts": 1}
    with pytest.raises(DataError, match="row 4: prompt\\+response is .* over data.max_length=20"):
        sft_sample(tok, row, COLS, 20, "f", 4, {}, truncate="error")
    with pytest.raises(DataError, match="row 5: the response is 41 tokens, the context limit 30"):
        sft_sample(tok, {"prompt": "x", "response": "a b c d " * 10}, COLS, 30, "f", 5, {})


def test_bad_rows_are_counted_skips_or_errors_with_their_file_row_number(tok):
    rows = [{"prompt": "copy: a", "response": "a"}, {"prompt": "copy: b", "response": ""},
            {"prompt": None, "response": "a"}, {"prompt": "copy: c", "response": "c"}]
    counters: dict[str, int] = {}
    kept = sft_records(tok, rows, COLS, 64, "f.csv", True, counters)
    assert [k["reference"] for k in kept] == ["a", "c"] and counters == {"skipped_bad_samples": 2}
    with pytest.raises(DataError, match="f.csv: row 12: the last message"):  # the file's row number, not the index
        sft_records(tok, rows, COLS, 64, "f.csv", False, {}, row_numbers=[10, 12, 13, 14])


def test_pad_rows_right_and_left():
    got = pad_rows([[1, 2, 3], [4], []], 0)
    assert got.tolist() == [[1, 2, 3], [4, 0, 0], [0, 0, 0]] and got.dtype == torch.long
    assert pad_rows([[1, 2, 3], [4]], 9, left=True).tolist() == [[1, 2, 3], [9, 9, 4]]


def items_of(*specs: tuple[list[int], int]) -> list[dict]:
    """Samples with given ids and prompt lengths (labels -100 on the prompt)."""
    return [{"text": t, "labels": [IGNORE] * p + t[p:], "prompt_len": p, "reference": str(i)}
            for i, (t, p) in enumerate(specs)]


def test_padded_batch_position_by_position():
    batch = SFTCollator(pad_id=0)(items_of(([5, 6, 7, 8], 2), ([9, 10], 1)))
    assert batch["text"].tolist() == [[5, 6, 7, 8], [9, 10, 0, 0]]
    assert batch["text_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 7, 8], [-100, 10, -100, -100]]
    assert batch["prompt"].tolist() == [[5, 6], [0, 9]]  # left-padded, for generate
    assert batch["prompt_mask"].tolist() == [[1, 1], [0, 1]]
    assert batch["reference"] == ["0", "1"]


def test_packed_rows_first_fit_positions_restart_and_first_labels_are_dropped():
    items = items_of(([1, 2, 3], 1), ([4, 5, 6, 7], 2), ([8, 9], 1))
    batch = SFTCollator(pad_id=0, pack=True, pack_length=6)(items)
    # first fit: [1 2 3] then [4 5 6 7] does not fit beside it (7 > 6), [8 9] does
    assert batch["text"].tolist() == [[1, 2, 3, 8, 9], [4, 5, 6, 7, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3, -100, 9], [-100, -100, 6, 7, -100]]
    assert batch["packed_samples"].tolist() == [2, 1] and "text_mask" not in batch
    for it in items:
        it[UNPACKED] = True
    assert "position_ids" not in SFTCollator(0, pack=True, pack_length=6)(items)  # evaluation stays padded


def test_streamed_rows_are_samples_or_counted_skips(tok):
    shard = SimpleNamespace(name="shard-00001.jsonl")
    counters: dict[str, int] = {}
    fn = SFTRow(tok, COLS, 64, skip_bad=True)
    assert fn(shard, 3, {"prompt": "copy: a", "response": "a"}, counters)["reference"] == "a"
    assert fn(shard, 4, {"prompt": "copy: a", "response": ""}, counters) is None
    assert counters == {"skipped_bad_samples": 1}
    with pytest.raises(DataError, match="shard-00001.jsonl: row 4"):
        SFTRow(tok, COLS, 64, skip_bad=False)(shard, 4, {"prompt": "copy: a", "response": ""}, {})
