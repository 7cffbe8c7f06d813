"""The QA head: its loss and logits equal transformers' own BertForQuestionAnswering on the same weights, and the
span search picks the best span across windows (hand-made logits), with SQuAD 2.0's null answer."""
import pytest
import torch

from mm_ptft.data.qa import CONTEXT, END, EXAMPLE, OFFSETS, START
from mm_ptft.encoders.text import train_wordpiece
from mm_ptft.heads.question_answering import QuestionAnsweringTask, SpanSearch, best_spans
from mm_ptft.types import TEXT, TEXT_MASK, TEXT_SEGMENTS

CONTEXT_TEXT = "abc def ghi"
# two windows of one context: [CLS] abc def | [CLS] def ghi (offsets -1 off the context)
OFFS = torch.tensor([[[-1, -1], [0, 3], [4, 7]], [[-1, -1], [4, 7], [8, 11]]])


def spans(start, end, search):
    return best_spans(torch.tensor(start), torch.tensor(end), OFFS, torch.tensor([0, 0]), [CONTEXT_TEXT], search)[0]


def test_best_span_across_windows():
    start, end = [[0.0, 1, 2], [0, 3, 1]], [[0.0, 1, 2.5], [0, 0, 3]]
    # window 0: best "def" (2 + 2.5 = 4.5); window 1: "def ghi" (3 + 3 = 6) wins
    assert spans(start, end, SpanSearch()) == {"answer": "def ghi", "start": 4, "end": 11, "score": 6.0}
    # one token at most: window 1 gives 4 ("ghi") or 3 ("def"), window 0's "def" 4.5 wins
    assert spans(start, end, SpanSearch(max_answer_length=1))["answer"] == "def"
    # an end before its start is no span: window 1's start on "ghi", end on "def" (5 + 5) is dropped; the best
    # left is "ghi" alone (5 - 9 = -4), above anything of window 0 (-18)
    got = spans([[0.0, -9, -9], [0, -9, 5]], [[0.0, -9, -9], [0, 5, -9]], SpanSearch())
    assert (got["answer"], got["score"]) == ("ghi", -4.0)


def test_null_answer_of_squad2():
    start, end = [[5.0, 1, 2], [3.5, 3, 1]], [[5.0, 1, 2.5], [3.5, 0, 3]]  # null: min(10, 7) = 7 vs best span 6
    assert spans(start, end, SpanSearch(null_answers=True))["answer"] == ""
    assert spans(start, end, SpanSearch(null_answers=True, null_threshold=2.0))["answer"] == "def ghi"  # 7 - 6 < 2
    assert spans(start, end, SpanSearch())["answer"] == "def ghi"  # v1: never null


@pytest.fixture(scope="module")
def task():
    torch.manual_seed(0)
    tok = train_wordpiece(["what colour is the owl", "the owl is blue and the fox is red"], 200)
    from mm_ptft.encoders.text import HFTextEncoder
    from transformers import AutoModel, BertConfig

    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    enc = HFTextEncoder(AutoModel.from_config(cfg), tok)
    return QuestionAnsweringTask(enc).eval()


def test_loss_and_logits_equal_transformers(task):
    tok = task.encoder.tokenizer
    enc = tok(["what colour is the owl", "the fox"], ["the owl is blue and the fox is red", "the fox is red"],
              padding=True, return_token_type_ids=True, return_tensors="pt")
    batch = {TEXT: enc["input_ids"], TEXT_MASK: enc["attention_mask"], TEXT_SEGMENTS: enc["token_type_ids"],
             START: torch.tensor([9, 6]), END: torch.tensor([9, 7])}
    model = task.export_hf()
    assert type(model).__name__ == "BertForQuestionAnswering"
    ref = model(input_ids=batch[TEXT], attention_mask=batch[TEXT_MASK], token_type_ids=batch[TEXT_SEGMENTS],
                start_positions=batch[START], end_positions=batch[END])
    ours = task(batch)
    assert torch.allclose(ours["start_logits"], ref.start_logits, atol=1e-5)
    assert torch.allclose(ours["end_logits"], ref.end_logits, atol=1e-5)
    assert float(ours["loss"]) == pytest.approx(float(ref.loss), abs=1e-5)
    check = task.hf_parity(model, batch)
    assert check["ok"] and check["max_abs_diff_logit"] <= 1e-5


def test_eval_forward_gives_one_answer_per_context(task):
    tok = task.encoder.tokenizer
    ctx = "the owl is blue"
    enc = tok(["what colour is the owl"], [ctx], return_offsets_mapping=True, return_token_type_ids=True, return_tensors="pt")
    seq = enc.sequence_ids(0)
    offs = torch.tensor([[list(o) if s == 1 else [-1, -1] for o, s in zip(enc["offset_mapping"][0].tolist(), seq)]])
    batch = {TEXT: enc["input_ids"], TEXT_MASK: enc["attention_mask"], TEXT_SEGMENTS: enc["token_type_ids"],
             OFFSETS: offs, EXAMPLE: torch.tensor([0]), CONTEXT: [ctx]}
    (answer,) = task(batch)["answer_spans"]
    assert answer["answer"] == ctx[answer["start"]: answer["end"]] and answer["answer"]
