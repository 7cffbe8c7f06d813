"""The seq2seq loss against transformers' own (labels padded -100) for random-init T5, BART and Marian; greedy
generation equals the model's own ``generate``."""
from __future__ import annotations

import pytest
import torch

from mm_ptft.contracts import GenerationConfig
from mm_ptft.data.seq2seq import Seq2SeqCollator, seq2seq_records
from mm_ptft.heads.seq2seq import Seq2SeqTask, build_seq2seq_lm

SIZES = {"d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
         "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "max_position_embeddings": 64,
         "dropout": 0.0}
CONFIGS = {"t5": {"model_type": "t5", "d_model": 32, "d_ff": 64, "num_layers": 2, "num_heads": 2, "d_kv": 16,
                  "dropout_rate": 0.0},
           "bart": {"model_type": "bart", **SIZES}, "marian": {"model_type": "marian", **SIZES}}
ROWS = [{"source": "reverse: a b c", "target": "c b a"}, {"source": "reverse: d e", "target": "e d"},
        {"source": "reverse: f g h a", "target": "a h g f"}]


def build(kind: str) -> tuple[Seq2SeqTask, dict]:
    torch.manual_seed(0)
    lm = build_seq2seq_lm({"config": CONFIGS[kind]}, [t for r in ROWS for t in r.values()])
    items = seq2seq_records(lm.tokenizer, ROWS, {"source": "source", "target": "target"}, (32, 32), "f", False, {})
    return Seq2SeqTask(lm, GenerationConfig(max_new_tokens=5)), Seq2SeqCollator(lm.tokenizer.pad_token_id)(items)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_loss_equals_transformers_own_loss_with_padding_ignored(kind):
    task, batch = build(kind)
    task.train()
    assert (batch["labels"] == -100).any()  # targets of different lengths: padding is labelled -100
    ours = float(task(batch)["loss"].detach())
    theirs = float(task.lm.model(input_ids=batch["text"], attention_mask=batch["text_mask"],
                                 labels=batch["labels"]).loss.detach())
    assert abs(ours - theirs) <= 1e-5


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_greedy_generation_is_the_models_own_generate(kind):
    task, batch = build(kind)
    task.eval()
    ours = task.generate_ids(batch["text"], batch["text_mask"], task.generation)
    ref = task.lm.model.generate(input_ids=batch["text"], attention_mask=batch["text_mask"], do_sample=False,
                                 num_beams=1, max_new_tokens=5)[:, 1:]
    assert torch.equal(ours, ref)
    assert task(batch)["generated"] == task.lm.tokenizer.batch_decode(ref, skip_special_tokens=True)


def test_eval_output_holds_no_logits():
    """The generation contract: an eval forward hands the metrics scalars and strings only (the (B, L, V) logits
    are dropped inside), so evaluation memory does not grow with the eval set."""
    task, batch = build("bart")
    task.eval()
    out = task(batch)
    tensors = {k: tuple(v.shape) for k, v in out.items() if isinstance(v, torch.Tensor)}
    assert tensors and all(shape == () for shape in tensors.values()), tensors
    assert isinstance(out["generated"], list) and len(out["generated"]) == batch["text"].shape[0]
