"""Supervised fine-tuning of any transformers ``AutoModelForCausalLM``: the loss on response tokens only, packed
batches kept sample-to-sample apart, and generation through the model's own ``generate`` (contracts.GenerativeTask).

``CausalLM`` wraps the transformers model with what fine-tuning strategies and saving need of an encoder
(``modality``, ``lora_targets``, ``save_pretrained`` as a transformers directory), so ``finetune.strategy=lora``
adapts it like any encoder and export merges the adapters."""
from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from mm_ptft.contracts import GenerationConfig, Task
from mm_ptft.encoders.base import Encoder
from mm_ptft.metrics.generation import GENERATED, GenerationMetrics
from mm_ptft.types import IGNORE_INDEX as IGNORE, LABELS, POSITIONS, PROMPT, PROMPT_MASK, TEXT, TEXT_MASK


class CausalLM(nn.Module):
    """A transformers causal LM and its tokenizer, seen as the task's one (text) encoder."""

    modality = "text"
    hf_format = True

    def __init__(self, model: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.out_dim = int(getattr(model.config, "hidden_size", 0) or getattr(model.config, "n_embd", 0))
        self.max_length = int(getattr(model.config, "max_position_embeddings", 0)
                              or getattr(model.config, "n_positions", 0) or 2048)

    def lora_targets(self) -> list[str]:
        """peft's default targets for this model type, else the attention projections found."""
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

        found = DEFAULTS.get(getattr(self.model.config, "model_type", ""))
        return list(found) if found else Encoder.lora_targets(self)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        if enabled:
            self.model.gradient_checkpointing_enable()
        else:
            self.model.gradient_checkpointing_disable()

    def save_pretrained(self, path: Any) -> None:
        """A transformers directory (``AutoModelForCausalLM.from_pretrained`` loads it) with the tokenizer."""
        self.model.save_pretrained(str(path))
        self.tokenizer.save_pretrained(str(path))

    def hf_save_processing(self, path: Path, max_length: Optional[int] = None) -> None:
        tok = copy.copy(self.tokenizer)
        if max_length:
            tok.model_max_length = int(max_length)
        tok.save_pretrained(str(path))


def masked_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of next-token NLL over labelled positions, their count): token t's logits predict label t+1."""
    pred, gold = logits[:, :-1].float(), labels[:, 1:]  # (B, L-1, V), (B, L-1)
    nll = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), gold.reshape(-1), ignore_index=IGNORE, reduction="sum")
    return nll, (gold != IGNORE).sum()


class CausalLMTask(Task):
    """Response-only next-token loss (``lm_loss``); in eval also ``nll_sum``/``tokens`` (perplexity) and the text
    generated for each prompt (``generated``) when the batch carries prompts."""

    main_metric = "exact_match"
    greater_is_better = True

    def __init__(self, lm: CausalLM, generation: Optional[GenerationConfig] = None) -> None:
        super().__init__()
        self.lm = lm
        self.generation = generation or GenerationConfig()
        self.generation.hf_kwargs()  # a bad strategy fails here, not at the first evaluation

    def logits(self, batch: Mapping[str, Any]) -> torch.Tensor:
        if POSITIONS in batch:  # packed: no attention mask, positions restart per sample (checked at build time)
            return self.lm.model(input_ids=batch[TEXT], position_ids=batch[POSITIONS], use_cache=False).logits
        return self.lm.model(input_ids=batch[TEXT], attention_mask=batch[TEXT_MASK], use_cache=False).logits

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        nll, count = masked_nll(self.logits(batch), batch[LABELS])  # (B, L, V) logits dropped here
        loss = nll / count.clamp(min=1)
        out: dict[str, Any] = {"loss": loss, "lm_loss": loss}
        if not self.training:
            out.update(nll_sum=nll.detach(), tokens=count)
            if PROMPT in batch:
                out[GENERATED] = self.generate(batch)
        return out

    @torch.no_grad()
    def generate(self, batch: Mapping[str, Any], gen: Optional[GenerationConfig] = None) -> list[str]:
        """The response text the model's own ``generate`` writes for each left-padded prompt of ``batch``."""
        gen = gen or self.generation
        ids = self.generate_ids(batch[PROMPT], batch[PROMPT_MASK], gen)  # (B, new)
        return self.lm.tokenizer.batch_decode(ids, skip_special_tokens=True)

    @torch.no_grad()
    def generate_ids(self, prompt: torch.Tensor, mask: torch.Tensor, gen: GenerationConfig) -> torch.Tensor:
        """The new token ids (prompt cut off; padding after EOS) for prompts (B, P)."""
        tok = self.lm.tokenizer
        fork = torch.random.fork_rng(devices=[prompt.device] if prompt.is_cuda else [])
        with fork if gen.strategy == "sample" else contextlib.nullcontext():
            torch.manual_seed(gen.seed) if gen.strategy == "sample" else None
            out = self.lm.model.generate(input_ids=prompt, attention_mask=mask, pad_token_id=tok.pad_token_id,
                                         eos_token_id=tok.eos_token_id, **gen.hf_kwargs())  # (B, P + new)
        return out[:, prompt.shape[1]:]

    def build_metrics(self) -> GenerationMetrics:
        return GenerationMetrics()

    def export_hf(self) -> nn.Module:
        """The transformers causal LM itself, its ``generation_config`` set to this run's decoding."""
        model = self.lm.model
        kw = self.generation.hf_kwargs()
        for key, value in {**kw, "pad_token_id": self.lm.tokenizer.pad_token_id,
                           "eos_token_id": self.lm.tokenizer.eos_token_id}.items():
            setattr(model.generation_config, key, value)
        return model.eval()

    def export_hf_files(self, path: Any, max_length: Optional[int] = None) -> None:
        self.lm.hf_save_processing(Path(path), max_length)

    @torch.no_grad()
    def hf_parity(self, model: nn.Module, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Greedy generation of the exported model against the run's own on the batch's prompts: same tokens?"""
        greedy = GenerationConfig(max_new_tokens=self.generation.max_new_tokens)
        ours = self.generate_ids(batch[PROMPT], batch[PROMPT_MASK], greedy)
        theirs = model.generate(input_ids=batch[PROMPT], attention_mask=batch[PROMPT_MASK], do_sample=False,
                                num_beams=1, max_new_tokens=greedy.max_new_tokens)[:, batch[PROMPT].shape[1]:]
        same = ours.shape == theirs.shape and bool((ours == theirs).all())
        return {"samples": int(ours.shape[0]), "same_generated_tokens": same, "ok": same}


def check_packing(model: nn.Module, where: str) -> None:
    """Refuse packing where the model's attention would let a packed sample see the one before it: two short
    sequences packed with restarting ``position_ids`` must give the logits each gives alone."""
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
        raise ValueError(f"{where}=true: {type(model).__name__} with attn_implementation={impl!r} lets a packed sample "
                         f"attend to the one before it (it does not isolate samples by position_ids); set {where}=false, "
                         f"or an attention implementation that does (transformers' sdpa/eager/flash_attention_2 masks)")




def build_causal_lm(spec: Mapping[str, Any], corpus: Optional[list[str]] = None, where: str = "model.lm") -> CausalLM:
    """``AutoModelForCausalLM`` from ``name_or_path`` (hub id or directory, with its tokenizer unless ``tokenizer``
    names one), or random-init from ``config`` ({model_type: gpt2|llama|qwen2|mistral…, sizes}) with ``tokenizer``
    or a WordPiece vocabulary learned from ``corpus`` (its [SEP] the EOS token). ``attn_implementation`` passes to
    transformers (sdpa, eager, flash_attention_2)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from mm_ptft.encoders.base import remote_code
    from mm_ptft.encoders.text import load_tokenizer

    spec = dict(spec)
    unknown = set(spec) - {"name_or_path", "config", "tokenizer", "vocab_size", "attn_implementation",
                           "trust_remote_code"}
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}")
    trust = remote_code(bool(spec.get("trust_remote_code")), where, spec.get("name_or_path"))
    attn = {"attn_implementation": spec["attn_implementation"]} if spec.get("attn_implementation") else {}
    if spec.get("name_or_path"):
        tok = load_tokenizer(spec.get("tokenizer") or spec["name_or_path"], None, 0, where)
        model = AutoModelForCausalLM.from_pretrained(spec["name_or_path"], trust_remote_code=trust, **attn)
    elif spec.get("config"):
        cfg = dict(spec["config"])
        tok = load_tokenizer(spec.get("tokenizer"), corpus, int(spec.get("vocab_size", 2000)), where)
        if tok.eos_token_id is None and tok.sep_token is not None:  # a learned WordPiece: [SEP] ends a response
            tok.eos_token, tok.bos_token = tok.sep_token, tok.cls_token
        hf_cfg = AutoConfig.for_model(cfg.pop("model_type"), **cfg, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
        model = AutoModelForCausalLM.from_config(hf_cfg, trust_remote_code=trust, **attn)
    else:
        raise ValueError(f"{where}: give name_or_path (hub id or directory) or config (random init)")
    if tok.pad_token_id is None:  # GPT-2, Llama tokenizers: pad with EOS (padding is never attended nor learned)
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # prompts are left-padded for generation
    model.generation_config.pad_token_id = tok.pad_token_id
    return CausalLM(model, tok)


__all__ = ["CausalLM", "CausalLMTask", "build_causal_lm", "check_packing", "masked_nll"]
