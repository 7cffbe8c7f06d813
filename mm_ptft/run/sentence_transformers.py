"""``mm-ptft export RUN --format sentence_transformers``: a text classifier over a transformers encoder as a
sentence-transformers directory — ``Transformer`` (the encoder and its tokenizer, the run's token limit),
``Pooling`` (the run's own pooling: mean over real tokens, or [CLS]) and a ``Dense`` layer with an identity
activation holding the classifier. ``SentenceTransformer(DIR).encode(texts)`` gives the class logits; their softmax
is the run's probabilities (checked on evaluation samples before anything is written)."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mm_ptft.contracts import ExportError, parity_batch

#: mm_ptft text pooling → sentence-transformers ``Pooling`` mode
POOLING = {"mean": "mean", "cls": "cls"}
PARITY_TOL = 1e-5  # max |Δ probability| between the sentence-transformers model and the run's task


def sentence_transformer(task: nn.Module, max_length: int | None) -> Any:
    """The ``SentenceTransformer`` (Transformer + Pooling + Dense) computing ``task.export_forward``'s logits;
    ExportError naming the reason for a task that is not a linear head over a pooled transformers text encoder."""
    from sentence_transformers import SentenceTransformer

    from mm_ptft.encoders.text import HFTextEncoder

    try:  # sentence-transformers >= 5.3; sentence_transformers.models before
        from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer
    except ImportError:  # pragma: no cover - older releases
        from sentence_transformers.models import Dense, Pooling, Transformer

    enc, head = getattr(task, "encoder", None), getattr(getattr(task, "head", None), "proj", None)
    if not isinstance(enc, HFTextEncoder) or not isinstance(head, nn.Linear):
        raise ExportError(f"--format sentence_transformers: {type(task).__name__} is not one linear head over a "
                          f"transformers text encoder (model.text.name=hf); export --format mm_ptft")
    if enc.pooling not in POOLING:
        raise ExportError(f"--format sentence_transformers: model.text.pooling={enc.pooling!r} has no "
                          f"sentence-transformers Pooling mode (mean and cls do); export --format hf for pooler")
    with tempfile.TemporaryDirectory() as tmp:
        enc.model.save_pretrained(tmp)
        enc.tokenizer.save_pretrained(tmp)
        body = Transformer(tmp, max_seq_length=max_length or enc.max_length)
    pool = Pooling(enc.out_dim, pooling_mode=POOLING[enc.pooling])
    dense = Dense(head.in_features, head.out_features, bias=head.bias is not None,
                         activation_function=nn.Identity())
    dense.linear.load_state_dict(head.state_dict())
    return SentenceTransformer(modules=[body, pool, dense], device="cpu").eval()


@torch.no_grad()
def st_parity(task: nn.Module, model: Any, batch: dict[str, Any]) -> dict[str, Any]:
    """How far the sentence-transformers model's class probabilities are from the task's on the same tokens."""
    ref = task.export_forward({k: batch[k] for k in task.export_spec().keys}).float().softmax(-1)  # (B, C)
    enc = task.encoder
    got = model(enc.hf_model_inputs(batch))["sentence_embedding"].float().softmax(-1)  # (B, C)
    return {"samples": int(ref.shape[0]), "max_abs_diff_prob": float((got - ref).abs().max()),
            "same_argmax": bool((got.argmax(-1) == ref.argmax(-1)).all())}


def write_sentence_transformers(task: nn.Module, max_length: int | None, prepared: Any, out: Path) -> dict[str, Any]:
    """Check the sentence-transformers model against the run on evaluation samples, then ``save`` it to ``out``."""
    from mm_ptft.train.finetune import merged_copy

    task = merged_copy(task)  # LoRA adapters folded into the weights
    model = sentence_transformer(task, max_length)
    batch = parity_batch(prepared, "sentence_transformers")
    check = st_parity(task, model, batch)
    if not (check["same_argmax"] and check["max_abs_diff_prob"] <= PARITY_TOL):
        raise ExportError(f"--format sentence_transformers: the model predicts otherwise than the run (max |Δprob| "
                          f"{check['max_abs_diff_prob']:.2e} on {check['samples']} samples); nothing written")
    out.mkdir(parents=True, exist_ok=True)
    model.save(str(out))
    return {"class": "SentenceTransformer", "pooling": task.encoder.pooling, "parity": check}
