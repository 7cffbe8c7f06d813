"""What the generative text tasks share (contracts.GenerativeTask): a transformers LM and its tokenizer seen as the
task's one text encoder (``HFLM``), its construction from a hub id, a directory or a random-init config
(``build_hf_lm``), and a task base (``GenerativeLMTask``) that decodes through the model's own ``generate``,
writes the model with the run's decoding as its ``generation_config``, and checks an export's greedy tokens.

A subclass says where the inputs of ``generate`` are in a batch (``generation_inputs``) and which of the ids
``generate`` returns are new (``new_tokens``): a causal LM's output repeats its prompt, an encoder-decoder's starts
with the decoder start token."""
from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from mm_ptft.contracts import GenerationConfig, Task
from mm_ptft.encoders.base import Encoder
from mm_ptft.metrics.generation import GENERATED, GenerationMetrics
from mm_ptft.types import IGNORE_INDEX as IGNORE

SPEC_KEYS = {"name_or_path", "config", "tokenizer", "vocab_size", "attn_implementation", "trust_remote_code"}


class HFLM(nn.Module):
    """A transformers LM (``*ForCausalLM``, ``*ForConditionalGeneration``…) and its tokenizer, seen as the task's one
    (text) encoder: what fine-tuning strategies (``lora_targets``) and saving need."""

    modality = "text"
    hf_format = True

    def __init__(self, model: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        cfg = model.config
        self.out_dim = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "n_embd", 0) or getattr(cfg, "d_model", 0))
        self.max_length = int(getattr(cfg, "max_position_embeddings", 0) or getattr(cfg, "n_positions", 0) or 2048)

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
        """A transformers directory (``AutoModelFor*.from_pretrained`` loads it) with the tokenizer."""
        self.model.save_pretrained(str(path))
        self.tokenizer.save_pretrained(str(path))

    def hf_save_processing(self, path: Path, max_length: Optional[int] = None) -> None:
        tok = copy.copy(self.tokenizer)
        if max_length:
            tok.model_max_length = int(max_length)
        self.export_tokenizer(tok)
        tok.save_pretrained(str(path))

    def export_tokenizer(self, tok: Any) -> None:
        """What an exported copy of the tokenizer gains (in place) before it is saved; nothing here."""


def build_hf_lm(spec: Mapping[str, Any], corpus: Optional[list[str]], where: str, auto_class: str,
                extra_config: Optional[Callable[[Any], dict[str, Any]]] = None) -> tuple[nn.Module, Any]:
    """(model, tokenizer): ``transformers.<auto_class>`` from ``name_or_path`` (hub id or directory, with its
    tokenizer unless ``tokenizer`` names one), or random-init from ``config`` ({model_type, sizes}) with
    ``tokenizer`` or a WordPiece vocabulary learned from ``corpus`` (its [SEP] the EOS token, [CLS] the BOS token).
    ``extra_config(tokenizer)`` fields join a random-init config (e.g. an encoder-decoder's start token)."""
    import transformers
    from transformers import AutoConfig

    from mm_ptft.encoders.base import remote_code
    from mm_ptft.encoders.text import load_tokenizer

    spec = dict(spec)
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}")
    auto = getattr(transformers, auto_class)
    trust = remote_code(bool(spec.get("trust_remote_code")), where, spec.get("name_or_path"))
    attn = {"attn_implementation": spec["attn_implementation"]} if spec.get("attn_implementation") else {}
    if spec.get("name_or_path"):
        tok = load_tokenizer(spec.get("tokenizer") or spec["name_or_path"], None, 0, where)
        model = auto.from_pretrained(spec["name_or_path"], trust_remote_code=trust, **attn)
    elif spec.get("config"):
        cfg = dict(spec["config"])
        tok = load_tokenizer(spec.get("tokenizer"), corpus, int(spec.get("vocab_size", 2000)), where)
        if tok.eos_token_id is None and tok.sep_token is not None:  # a learned WordPiece: [SEP] ends a text
            tok.eos_token, tok.bos_token = tok.sep_token, tok.cls_token
        ids = {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id,
               "bos_token_id": tok.bos_token_id, **(extra_config(tok) if extra_config else {})}
        hf_cfg = AutoConfig.for_model(cfg.pop("model_type"), **{**ids, **cfg})
        model = auto.from_config(hf_cfg, trust_remote_code=trust, **attn)
    else:
        raise ValueError(f"{where}: give name_or_path (hub id or directory) or config (random init)")
    if tok.pad_token_id is None:  # GPT-2, Llama tokenizers: pad with EOS (padding is never attended nor learned)
        tok.pad_token = tok.eos_token
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def label_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the NLL of ``labels`` (B, L) under ``logits`` (B, L, V) where a label is not -100, their count)."""
    nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE,
                          reduction="sum")
    return nll, (labels != IGNORE).sum()


class GenerativeLMTask(Task):
    """Generation through the model's own ``generate``, the generation metrics, and ``--format hf`` export (the
    transformers model with the run's decoding as its ``generation_config``, checked token for token)."""

    main_metric = "exact_match"
    greater_is_better = True
    hf_auto_class = "AutoModel"  # what loads the exported directory (model cards name it)

    def __init__(self, lm: HFLM, generation: Optional[GenerationConfig] = None) -> None:
        super().__init__()
        self.lm = lm
        self.generation = generation or GenerationConfig()
        self.generation.hf_kwargs()  # a bad strategy fails here, not at the first evaluation

    def target_nll(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed NLL of the batch's learnt tokens, their count)."""
        raise NotImplementedError

    def generation_inputs(self, batch: Mapping[str, Any]) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """(input ids (B, P), attention mask (B, P)) that ``generate`` starts from; None where the batch has none."""
        raise NotImplementedError

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """``lm_loss`` (token mean); in eval also ``nll_sum``/``tokens`` and the ``generated`` texts."""
        nll, count = self.target_nll(batch)  # the (B, L, V) logits are dropped inside
        loss = nll / count.clamp(min=1)
        out: dict[str, Any] = {"loss": loss, "lm_loss": loss}
        if not self.training:
            out.update(nll_sum=nll.detach(), tokens=count)
            if self.generation_inputs(batch) is not None:
                out[GENERATED] = self.generate(batch)
        return out

    def new_tokens(self, out: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """The generated ids of ``generate``'s output (B, T), without what the model was given."""
        raise NotImplementedError

    def build_metrics(self) -> GenerationMetrics:
        return GenerationMetrics()

    @torch.no_grad()
    def generate(self, batch: Mapping[str, Any], gen: Optional[GenerationConfig] = None) -> list[str]:
        """The text the model's own ``generate`` writes for each sample of ``batch`` (its input left out)."""
        ids = self.generate_ids(*self.generation_inputs(batch), gen or self.generation)  # (B, new)
        return self.lm.tokenizer.batch_decode(ids, skip_special_tokens=True)

    @torch.no_grad()
    def generate_ids(self, inputs: torch.Tensor, mask: torch.Tensor, gen: GenerationConfig) -> torch.Tensor:
        """The new token ids (padding after EOS) for inputs (B, P); sampling seeded by ``gen.seed`` on each call."""
        tok = self.lm.tokenizer
        fork = torch.random.fork_rng(devices=[inputs.device] if inputs.is_cuda else [])
        with fork if gen.strategy == "sample" else contextlib.nullcontext():
            torch.manual_seed(gen.seed) if gen.strategy == "sample" else None
            out = self.lm.model.generate(input_ids=inputs, attention_mask=mask, pad_token_id=tok.pad_token_id,
                                         eos_token_id=tok.eos_token_id, **gen.hf_kwargs())  # (B, T)
        return self.new_tokens(out, inputs)

    def export_hf(self) -> nn.Module:
        """The transformers model itself, its ``generation_config`` set to this run's decoding."""
        model = self.lm.model
        for key, value in {**self.generation.hf_kwargs(), "pad_token_id": self.lm.tokenizer.pad_token_id,
                           "eos_token_id": self.lm.tokenizer.eos_token_id}.items():
            setattr(model.generation_config, key, value)
        return model.eval()

    def export_hf_files(self, path: Any, max_length: Optional[int] = None) -> None:
        self.lm.hf_save_processing(Path(path), max_length)

    @torch.no_grad()
    def hf_parity(self, model: nn.Module, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Greedy generation of the exported model against the run's own on the batch's inputs: same tokens?"""
        inputs, mask = self.generation_inputs(batch)
        greedy = GenerationConfig(max_new_tokens=self.generation.max_new_tokens)
        ours = self.generate_ids(inputs, mask, greedy)
        theirs = self.new_tokens(model.generate(input_ids=inputs, attention_mask=mask, do_sample=False, num_beams=1,
                                                max_new_tokens=greedy.max_new_tokens), inputs)
        same = ours.shape == theirs.shape and bool((ours == theirs).all())
        return {"samples": int(ours.shape[0]), "same_generated_tokens": same, "ok": same}


__all__ = ["GenerativeLMTask", "HFLM", "build_hf_lm", "label_nll"]
