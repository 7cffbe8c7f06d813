"""Fine-tuning of any transformers ``AutoModelForSeq2SeqLM`` (T5, BART, Marian, …) for translation and
summarisation: the token-mean cross-entropy of the target (padding labelled -100 ignored) with the decoder fed the
model's own right-shifted labels, and generation from the source through the model's own ``generate``
(contracts.GenerativeTask), scored by BLEU, ROUGE-L and exact match."""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from mm_ptft.heads.generative import HFLM, GenerativeLMTask, build_hf_lm, label_nll
from mm_ptft.metrics.generation import GenerationMetrics
from mm_ptft.types import LABELS, TEXT, TEXT_MASK


class Seq2SeqLM(HFLM):
    """A transformers encoder-decoder and its tokenizer, seen as the task's one (text) encoder."""


class Seq2SeqTask(GenerativeLMTask):
    """Target cross-entropy (``lm_loss``); in eval also ``nll_sum``/``tokens`` (target perplexity) and the text
    generated from each source (``generated``). Main metric: BLEU."""

    main_metric = "bleu"
    hf_auto_class = "AutoModelForSeq2SeqLM"

    def logits(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """(B, T, V): the decoder reads the labels shifted right behind the start token, as the model's own loss."""
        decoder_in = self.lm.model.prepare_decoder_input_ids_from_labels(labels=batch[LABELS])  # (B, T)
        return self.lm.model(input_ids=batch[TEXT], attention_mask=batch[TEXT_MASK], decoder_input_ids=decoder_in,
                             use_cache=False).logits

    def target_nll(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return label_nll(self.logits(batch), batch[LABELS])  # (B, T, V) logits dropped here

    def generation_inputs(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return batch[TEXT], batch[TEXT_MASK]  # right-padded sources (B, S)

    def new_tokens(self, out: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        return out[:, 1:]  # (B, new): the decoder start token cut off

    def build_metrics(self) -> GenerationMetrics:
        return GenerationMetrics(bleu=True)


def build_seq2seq_lm(spec: Mapping[str, Any], corpus: Optional[list[str]] = None,
                     where: str = "model.lm") -> Seq2SeqLM:
    """``AutoModelForSeq2SeqLM`` from ``name_or_path`` (hub id or directory, with its tokenizer unless
    ``tokenizer`` names one), or random-init from ``config`` ({model_type: t5|bart|marian…, sizes}) with
    ``tokenizer`` or a WordPiece vocabulary learned from ``corpus``; a random-init decoder starts from the pad
    token (T5's and Marian's convention) and a forced EOS (BART's default) is the tokenizer's EOS."""
    model, tok = build_hf_lm(spec, corpus, where, "AutoModelForSeq2SeqLM",
                             lambda t: {"decoder_start_token_id": t.pad_token_id, "is_encoder_decoder": True})
    if not spec.get("name_or_path"):
        for cfg in (model.config, model.generation_config):
            if getattr(cfg, "forced_eos_token_id", None) is not None:
                cfg.forced_eos_token_id = tok.eos_token_id
    tok.padding_side = "right"
    return Seq2SeqLM(model, tok)


__all__ = ["Seq2SeqLM", "Seq2SeqTask", "build_seq2seq_lm"]
