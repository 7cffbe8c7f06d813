"""Supervised fine-tuning of any transformers ``AutoModelForCausalLM``: the loss on response tokens only, packed
batches kept sample-to-sample apart, and generation through the model's own ``generate`` (contracts.GenerativeTask).

``CausalLM`` wraps the transformers model with what fine-tuning strategies and saving need of an encoder
(``modality``, ``lora_targets``, ``save_pretrained`` as a transformers directory), so ``finetune.strategy=lora``
adapts it like any encoder and export merges the adapters."""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
from torch import nn

from mm_ptft.data.sft import PLAIN_CHAT_TEMPLATE, encode_chat
from mm_ptft.heads.generative import HFLM, GenerativeLMTask, build_hf_lm, label_nll
from mm_ptft.types import LABELS, POSITIONS, PROMPT, PROMPT_MASK, TEXT, TEXT_MASK


class CausalLM(HFLM):
    """A transformers causal LM and its tokenizer, seen as the task's one (text) encoder."""

    def export_tokenizer(self, tok: Any) -> None:
        """A tokenizer without a chat template gets the plain template as its ``chat_template`` (checked to render a
        chat's prompt to the very ids training used), so plain transformers formats prompts as ``predict`` does."""
        if not getattr(tok, "chat_template", None):
            probe = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "add: 3 4"},
                     {"role": "assistant", "content": "7"}]
            want = encode_chat(tok, probe)[0]
            tok.chat_template = PLAIN_CHAT_TEMPLATE
            got = tok.apply_chat_template(probe[:-1], add_generation_prompt=True, tokenize=True)
            if list(got["input_ids"] if hasattr(got, "keys") else got) != want:
                tok.chat_template = None  # this tokenizer renders the template's text otherwise: leave it out


def masked_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of next-token NLL over labelled positions, their count): token t's logits predict label t+1."""
    return label_nll(logits[:, :-1], labels[:, 1:])  # (B, L-1, V), (B, L-1)


class CausalLMTask(GenerativeLMTask):
    """Response-only next-token loss (``lm_loss``); in eval also ``nll_sum``/``tokens`` (perplexity) and the text
    generated for each prompt (``generated``) when the batch carries prompts."""

    hf_auto_class = "AutoModelForCausalLM"

    def logits(self, batch: Mapping[str, Any]) -> torch.Tensor:
        if POSITIONS in batch:  # packed: no attention mask, positions restart per sample (checked at build time)
            return self.lm.model(input_ids=batch[TEXT], position_ids=batch[POSITIONS], use_cache=False).logits
        return self.lm.model(input_ids=batch[TEXT], attention_mask=batch[TEXT_MASK], use_cache=False).logits

    def target_nll(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return masked_nll(self.logits(batch), batch[LABELS])  # (B, L, V) logits dropped here

    def generation_inputs(self, batch: Mapping[str, Any]) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        return (batch[PROMPT], batch[PROMPT_MASK]) if PROMPT in batch else None  # left-padded prompts (B, P)

    def new_tokens(self, out: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        return out[:, inputs.shape[1]:]  # (B, new): the prompt cut off


def check_packing(model: nn.Module, where: str, attn_key: str = "model.lm.attn_implementation") -> None:
    """Refuse packing where the model's attention would let a packed sample see the one before it: two short
    sequences packed with restarting ``position_ids`` must give the logits each gives alone. The error names
    ``where`` (the packing key) and ``attn_key`` (the key choosing the attention implementation)."""
    vocab = int(model.config.vocab_size)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, vocab, (1, 5), generator=g), torch.randint(0, vocab, (1, 4), generator=g)
    dev = next(model.parameters()).device
    was = model.training
    model.eval()
    with torch.no_grad():
        packed = model(input_ids=torch.cat([a, b], 1).to(dev), use_cache=False,
                       position_ids=torch.tensor([[*range(5), *range(4)]], device=dev)).logits[0, 5:]  # (4, V)
        alone = model(input_ids=b.to(dev), use_cache=False).logits[0]  # (4, V)
    model.train(was)
    if not torch.allclose(packed.float(), alone.float(), atol=1e-4):
        impl = getattr(model.config, "_attn_implementation", "?")
        raise ValueError(f"{where}=true: {type(model).__name__} with {attn_key}={impl!r} lets a packed sample attend "
                         f"to the one before it (it does not keep samples apart by their restarting position_ids); "
                         f"set {where}=false, or {attn_key} to an implementation that does (transformers' sdpa, "
                         f"eager or flash_attention_2 for Llama/Qwen/Mistral/GPT-2)")


def build_causal_lm(spec: Mapping[str, Any], corpus: Optional[list[str]] = None, where: str = "model.lm") -> CausalLM:
    """``AutoModelForCausalLM`` from ``name_or_path`` (hub id or directory, with its tokenizer unless ``tokenizer``
    names one), or random-init from ``config`` ({model_type: gpt2|llama|qwen2|mistral…, sizes}) with ``tokenizer``
    or a WordPiece vocabulary learned from ``corpus`` (its [SEP] the EOS token). ``attn_implementation`` passes to
    transformers (sdpa, eager, flash_attention_2)."""
    model, tok = build_hf_lm(spec, corpus, where, "AutoModelForCausalLM")
    tok.padding_side = "left"  # prompts are left-padded for generation
    return CausalLM(model, tok)


__all__ = ["CausalLM", "CausalLMTask", "build_causal_lm", "check_packing", "masked_nll"]
