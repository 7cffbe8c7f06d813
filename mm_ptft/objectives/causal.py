"""Causal language modelling: predict each next token from the ones before it (GPT-style).

Works with a decoder (GPT-2, Llama… through the ``hf`` text encoder; their own attention is causal)
and with any text encoder that can apply a causal attention mask (``supports_causal_mask``: the
tiny built-in; BERT-family models built with ``is_decoder: true``). Whether an encoder really hides
later tokens is checked at build time by a probe (change the last token, see whether earlier outputs
move), so a bidirectional encoder is a build error rather than a loss that quietly reads the answer.
The LM head is tied to the encoder's input embeddings where the model's own config ties them
(``tie_word_embeddings``: GPT-2 yes, Llama no; the tiny encoder, whose embeddings have PyTorch's N(0, 1)
init and would start with huge logits, no) unless ``tie_embeddings`` says otherwise.
Evaluation also returns the summed token NLL and token count, from which the metrics report
``clm_perplexity`` = exp(total NLL / total tokens) over the whole eval split.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from mm_ptft.encoders.base import Encoder
from mm_ptft.objectives import OBJECTIVES, EncodedBatch, Objective, require_encoders
from mm_ptft.objectives.hf_heads import pretrained_head_weights
from mm_ptft.types import TEXT, TEXT_MASK, EncoderOutput

IGNORE = -100


def next_token_labels(ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The target of position t is token t+1; padding is ignored (-100). ids, mask (B, L) → (B, L-1)."""
    return ids[:, 1:].masked_fill(~attention_mask[:, 1:].bool(), IGNORE)  # (B, L-1)


def causal_lm_nll(logits: torch.Tensor, ids: torch.Tensor, attention_mask: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed NLL, number of predicted tokens) of next-token prediction. logits (B, L, V), ids/mask (B, L)."""
    labels = next_token_labels(ids, attention_mask)  # (B, L-1)
    nll = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE,
                          reduction="sum")
    return nll, (labels != IGNORE).sum()


def clm_loss(logits: torch.Tensor, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the real tokens (what ``*ForCausalLM(labels=ids)`` computes with
    -100 at the padding). Zero (with gradient) when no row has two real tokens."""
    nll, count = causal_lm_nll(logits, ids, attention_mask)
    return nll / count.clamp_min(1)


@torch.no_grad()
def causal_problem(encoder: Encoder, causal: bool) -> str:
    """Why the encoder cannot do next-token prediction ('' when it can): no per-token outputs, or its outputs
    at earlier positions change with the last token (it attends to later tokens). Probes two 4-token rows
    that differ only in their last token, in eval mode."""
    was_training = encoder.training
    encoder.eval()
    try:
        device = next(encoder.parameters()).device
        ids = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 9]], device=device) % len(encoder.tokenizer)  # (2, 4)
        batch = {TEXT: ids, TEXT_MASK: torch.ones_like(ids)}
        out: EncoderOutput = encoder(batch, causal=True) if causal else encoder(batch)
    finally:
        encoder.train(was_training)
    if out.tokens is None:
        return "gives no per-token outputs"
    early = out.tokens[:, :3].float()  # (2, 3, D)
    if not torch.allclose(early[0], early[1], atol=1e-5, rtol=1e-4):
        return "lets each token see later tokens, so next-token prediction would read its answer"
    return ""


class CausalLMObjective(Objective):
    """Next-token prediction on the text encoder's tokens: returns ``clm_loss`` (and, in eval, the summed
    NLL and token count behind ``clm_perplexity``)."""

    modalities = ("text",)

    def __init__(self, text_encoder: Encoder, tie_embeddings: Optional[bool] = None,
                 where: str = "model.objectives.clm") -> None:
        super().__init__()
        self.causal_mask = bool(getattr(text_encoder, "supports_causal_mask", False))
        problem = causal_problem(text_encoder, self.causal_mask)
        if problem:
            raise ValueError(f"{where}: the text encoder ({type(text_encoder).__name__}) {problem}; use a decoder "
                             f"(hf with a gpt2/llama model), model.text.config.is_decoder=true for a BERT-family hf "
                             f"model, or the tiny encoder (causal mask built in)")
        if tie_embeddings is None:  # as the model's own config says (HF), else untied
            hf_config = getattr(getattr(text_encoder, "model", None), "config", None)
            tie_embeddings = bool(getattr(hf_config, "tie_word_embeddings", False))
        emb = text_encoder.input_embeddings() if tie_embeddings else None  # type: ignore[operator]
        if tie_embeddings and (emb is None or emb.weight.shape[1] != text_encoder.out_dim):
            raise ValueError(f"{where}.tie_embeddings=true: the text encoder exposes no input embedding table of its "
                             f"output width {text_encoder.out_dim}; set {where}.tie_embeddings=false")
        vocab = emb.weight.shape[0] if emb is not None else len(text_encoder.tokenizer)  # type: ignore[attr-defined]
        self.head = nn.Linear(text_encoder.out_dim, vocab, bias=False)
        if emb is not None:
            self.head.weight = emb.weight  # (V, D), GPT-2's tied LM head

    def forward(self, feats: EncodedBatch, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        ids, att = batch[TEXT], batch[TEXT_MASK]  # (B, L)
        if self.causal_mask:
            tokens = feats.encoders["text"]({TEXT: ids, TEXT_MASK: att}, causal=True).tokens  # (B, L, D)
        else:  # the encoder is causal by itself: share its cached forward with the other objectives
            tokens = feats["text"].tokens  # (B, L, D)
        nll, count = causal_lm_nll(self.head(tokens), ids, att)
        out = {"clm_loss": nll / count.clamp_min(1)}
        if not self.training:
            out.update(clm_nll_sum=nll.detach(), clm_tokens=count.detach().to(nll.dtype))
        return out

    def load_pretrained_head(self, encoder: Encoder, where: str) -> None:
        """``lm_head.weight`` of the ``*ForCausalLM`` checkpoint the encoder was loaded from. A head tied to the
        embeddings already holds its pretrained weights (transformers saves no separate tied head)."""
        if self.head.weight is getattr(encoder.input_embeddings(), "weight", None):  # type: ignore[operator]
            return
        found = pretrained_head_weights(encoder, "lm_head.", where)
        if "weight" not in found:
            raise ValueError(f"{where}.init_from_pretrained_head: the checkpoint has no lm_head.weight (its head is "
                             f"tied to the embeddings): set {where}.tie_embeddings=true")
        with torch.no_grad():
            self.head.weight.copy_(found["weight"])  # (V, D)


@OBJECTIVES.register()
def clm(encoders: Mapping[str, Encoder], tie_embeddings: Optional[bool] = None, init_from_pretrained_head: bool = False,
        where: str = "model.objectives.clm") -> CausalLMObjective:
    """Causal (next-token) language modelling on the text encoder; perplexity in eval."""
    require_encoders(encoders, ["text"], where)
    obj = CausalLMObjective(encoders["text"], tie_embeddings, where)
    if init_from_pretrained_head:
        obj.load_pretrained_head(encoders["text"], where)
    return obj
