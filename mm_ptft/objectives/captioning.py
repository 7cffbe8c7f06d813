"""Captioning: a causal text decoder that cross-attends to an image or audio encoder's tokens (CoCa's captioning half,
the language-modelling loss of BLIP/SimVLM), combinable with ``clip`` in one run (CoCa = contrastive + captioning,
each with its ``weight`` in ``model.objectives``).

The decoder reads the run's caption token ids (the text encoder's tokenizer: its ``[CLS]``/BOS starts a caption and
its ``[SEP]``/EOS ends one; a tokenizer that adds neither, like GPT-2's, gets them added here) and the source
encoder's tokens (B, N, D) projected to the decoder width. It is a small built-in transformer decoder (``tiny``) or
any transformers causal LM built with cross-attention (``hf``: ``add_cross_attention: true``, e.g. GPT-2).
The loss is token cross-entropy over the real caption tokens (padding ignored; optional label smoothing), as
open_clip's ``CoCaLoss`` computes it. Evaluation also returns the summed token NLL and count (→
``caption_<modality>_perplexity``) and, with ``generate_in_eval``, the greedy caption of each sample next to its
reference text (→ BLEU-4 and CIDEr in the metrics).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from mm_ptft.encoders.base import Encoder
from mm_ptft.objectives import MODALITY_KEYS, OBJECTIVES, EncodedBatch, Objective, require_encoders, token_sequence
from mm_ptft.registry import Registry
from mm_ptft.types import IGNORE_INDEX as IGNORE, REFERENCE, TEXT, TEXT_MASK

CAPTION_DECODERS: Registry["CaptionDecoder"] = Registry("caption decoder")


# ---- pure functions ----------------------------------------------------------------------------------------------

def caption_io(ids: torch.Tensor, mask: torch.Tensor, bos: int, eos: int, wrap: bool
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher-forcing inputs, their mask and labels (B, L') of captions ids/mask (B, L): position t predicts token
    t+1 (open_clip's CoCa: ``labels = text[:, 1:]`` from ``text[:, :-1]``), padding labelled -100. With ``wrap``
    (a tokenizer that adds no specials) each row is first framed as BOS + caption + EOS."""
    mask = mask.bool()
    if wrap:
        n = mask.sum(1)  # (B,)
        framed = F.pad(ids, (1, 1), value=0).masked_fill(F.pad(~mask, (1, 1), value=True), 0)  # (B, L + 2)
        framed[:, 0] = bos
        framed[torch.arange(ids.shape[0], device=ids.device), n + 1] = eos
        ids = framed
        mask = torch.arange(ids.shape[1], device=ids.device)[None] < (n + 2)[:, None]  # (B, L + 2)
    labels = ids[:, 1:].masked_fill(~mask[:, 1:], IGNORE)  # (B, L' )
    return ids[:, :-1], mask[:, :-1].long(), labels


def caption_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed token NLL, number of labelled tokens). logits (B, L, V), labels (B, L) with -100 at padding."""
    nll = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum")
    return nll, (labels != IGNORE).sum()


def caption_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean token cross-entropy over the labelled tokens (open_clip's ``CoCaLoss`` caption part: CrossEntropyLoss
    with the padding ignored). logits (B, L, V), labels (B, L). Zero (with gradient) when nothing is labelled."""
    if not (labels != IGNORE).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE,
                           label_smoothing=label_smoothing)


# ---- decoders ----------------------------------------------------------------------------------------------------

class CaptionDecoder(nn.Module):
    """A causal text decoder with cross-attention: ``forward(ids, mask, memory, memory_mask) -> logits`` (B, L, V);
    ``dim`` is the width its memory must have, ``max_length`` the longest sequence it takes."""

    dim: int
    vocab_size: int
    max_length: int

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, memory: torch.Tensor,
                memory_mask: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    @torch.no_grad()
    def generate(self, memory: torch.Tensor, memory_mask: torch.Tensor, bos: int, eos: int,
                 max_new_tokens: int) -> torch.Tensor:
        """Greedy decoding from BOS, at most ``max_new_tokens`` tokens: (B, T) new ids (EOS then padding after the
        end of a row). The prefix is re-run each step (no cache: captions are short)."""
        return greedy_decode(self, memory, memory_mask, bos, eos, max_new_tokens)


def greedy_decode(decoder: CaptionDecoder, memory: torch.Tensor, memory_mask: torch.Tensor, bos: int, eos: int,
                  max_new_tokens: int) -> torch.Tensor:
    """The argmax token at each step until every row has written EOS or ``max_new_tokens`` are out. (B, T)"""
    b = memory.shape[0]
    ids = torch.full((b, 1), bos, dtype=torch.long, device=memory.device)  # (B, 1)
    done = torch.zeros(b, dtype=torch.bool, device=memory.device)
    for _ in range(max_new_tokens):
        logits = decoder(ids, torch.ones_like(ids), memory, memory_mask)[:, -1]  # (B, V)
        nxt = logits.argmax(-1).masked_fill(done, eos)  # (B,)
        ids = torch.cat([ids, nxt[:, None]], 1)
        done |= nxt == eos
        if bool(done.all()):
            break
    return ids[:, 1:]


class TinyCaptionDecoder(CaptionDecoder):
    """Token + position embeddings, ``depth`` pre-norm transformer decoder blocks (causal self-attention,
    cross-attention to the memory), a final LayerNorm and an untied vocabulary projection."""

    def __init__(self, vocab_size: int, dim: int = 128, depth: int = 2, heads: int = 4, max_length: int = 64,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.dim, self.vocab_size, self.max_length = dim, vocab_size, max_length
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.zeros(1, max_length, dim))
        block = nn.TransformerDecoderLayer(dim, heads, 4 * dim, dropout, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerDecoder(block, depth)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        for w in (self.embed.weight, self.pos, self.head.weight):
            nn.init.normal_(w, std=0.02)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, memory: torch.Tensor,
                memory_mask: torch.Tensor) -> torch.Tensor:
        n = ids.shape[1]
        if n > self.max_length:
            raise ValueError(f"a caption of {n} tokens is longer than the decoder's max_length={self.max_length}; "
                             f"raise model.objectives.<name>.decoder.max_length or lower data.max_length")
        x = self.embed(ids) + self.pos[:, :n]  # (B, L, D)
        causal = nn.Transformer.generate_square_subsequent_mask(n, device=ids.device, dtype=x.dtype)  # (L, L)
        # later padding is hidden by the causal mask already; only the memory needs a padding mask
        x = self.blocks(x, memory, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=~memory_mask.bool())
        return self.head(self.norm(x))  # (B, L, V)


class HFCaptionDecoder(CaptionDecoder):
    """A transformers causal LM built with cross-attention (``add_cross_attention``): the memory goes in as
    ``encoder_hidden_states``; generation through the model's own ``generate``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        cfg = model.config
        self.dim = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "n_embd"))
        self.vocab_size = int(cfg.vocab_size)
        self.max_length = int(getattr(cfg, "max_position_embeddings", 0) or getattr(cfg, "n_positions", 0) or 512)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, memory: torch.Tensor,
                memory_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, attention_mask=mask, encoder_hidden_states=memory,
                          encoder_attention_mask=memory_mask.long(), use_cache=False).logits  # (B, L, V)

    @torch.no_grad()
    def generate(self, memory: torch.Tensor, memory_mask: torch.Tensor, bos: int, eos: int,
                 max_new_tokens: int) -> torch.Tensor:
        start = torch.full((memory.shape[0], 1), bos, dtype=torch.long, device=memory.device)  # (B, 1)
        out = self.model.generate(input_ids=start, attention_mask=torch.ones_like(start), encoder_hidden_states=memory,
                                  encoder_attention_mask=memory_mask.long(), max_new_tokens=max_new_tokens,
                                  do_sample=False, num_beams=1, eos_token_id=eos, pad_token_id=eos)  # (B, 1 + T)
        return out[:, 1:]


@CAPTION_DECODERS.register()
def tiny(vocab_size: int, dim: int = 128, depth: int = 2, heads: int = 4, max_length: int = 64,
         dropout: float = 0.0) -> TinyCaptionDecoder:
    """The built-in decoder (random init)."""
    return TinyCaptionDecoder(vocab_size, dim, depth, heads, max_length, dropout)


@CAPTION_DECODERS.register()
def hf(vocab_size: int, name_or_path: Optional[str] = None, config: Optional[dict[str, Any]] = None,
       key: str = "decoder") -> HFCaptionDecoder:
    """Any ``AutoModelForCausalLM`` with cross-attention: ``name_or_path`` (hub id or a ``save_pretrained``
    directory; loaded with ``add_cross_attention=True``, the new cross-attention layers random) or ``config``
    ({model_type: gpt2, n_embd, n_layer, …} for random init, vocabulary = the caption tokenizer's)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    where = key
    if name_or_path:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, add_cross_attention=True)
        if int(model.config.vocab_size) < vocab_size:
            raise ValueError(f"{where}.name_or_path={name_or_path!r} has a {model.config.vocab_size}-token vocabulary "
                             f"but the caption tokenizer has {vocab_size}: give model.text the decoder's own tokenizer "
                             f"(e.g. model.text.name_or_path={name_or_path!r})")
    elif config:
        cfg = dict(config)
        if "model_type" not in cfg:
            raise ValueError(f"{where}.config needs model_type (e.g. gpt2)")
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **{
            **cfg, "vocab_size": vocab_size, "add_cross_attention": True, "is_decoder": True}))
    else:
        raise ValueError(f"{where}: give name_or_path (hub id or directory) or config (random init)")
    if not getattr(model.config, "add_cross_attention", False) or not _has_cross_attention(model):
        raise ValueError(f"{where}: {type(model).__name__} has no cross-attention layers; use a causal LM that "
                         f"supports add_cross_attention (gpt2, bert/roberta with is_decoder) or decoder.name=tiny")
    return HFCaptionDecoder(model)


def _has_cross_attention(model: nn.Module) -> bool:
    return any("crossattention" in n.replace("_", "").lower() for n, _ in model.named_modules())


# ---- objective ---------------------------------------------------------------------------------------------------

def special_ids(tokenizer: Any, where: str) -> tuple[int, int, bool]:
    """(BOS, EOS, wrap) of the caption tokenizer: [CLS]/BOS and [SEP]/EOS; ``wrap`` when its encodings carry
    neither, so the objective frames each caption itself."""
    bos = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    eos = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if bos is None or eos is None:
        raise ValueError(f"{where}: the text encoder's tokenizer has no start ([CLS]/BOS) or end ([SEP]/EOS) token; "
                         f"captioning needs both")
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    return int(bos), int(eos), not (probe and probe[0] == bos and probe[-1] == eos)


class CaptioningObjective(Objective):
    """Captions of ``source`` (image or audio) from its encoder's tokens: returns ``caption_<source>_loss``; in eval
    also ``caption_<source>_nll_sum``/``_tokens`` and, with ``generate_in_eval``, ``caption_<source>_generated`` and
    ``caption_<source>_references`` (lists of strings, one per sample)."""

    def __init__(self, source: Encoder, tokenizer: Any, decoder: CaptionDecoder, label_smoothing: float = 0.0,
                 max_new_tokens: int = 0, generate_in_eval: bool = True, where: str = "model.objectives.caption") -> None:
        super().__init__()
        max_new_tokens = max_new_tokens or min(32, decoder.max_length - 1)  # 0: as long as the decoder allows, ≤ 32
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"{where}.label_smoothing={label_smoothing}: must be in [0, 1)")
        if max_new_tokens < 1 or max_new_tokens + 1 > decoder.max_length:
            raise ValueError(f"{where}.max_new_tokens={max_new_tokens}: must be in [1, decoder max_length - 1 = "
                             f"{decoder.max_length - 1}]")
        self.source, self.tokenizer, self.where = source.modality, tokenizer, where
        self.modalities = (self.source,)  # the text encoder is not trained by this objective: the decoder embeds
        self.name = f"caption_{self.source}"
        self.bos, self.eos, self.wrap = special_ids(tokenizer, where)
        if len(tokenizer) > decoder.vocab_size:
            raise ValueError(f"{where}.decoder: vocabulary of {decoder.vocab_size} < the tokenizer's {len(tokenizer)}")
        self.decoder, self.label_smoothing = decoder, label_smoothing
        self.max_new_tokens, self.generate_in_eval = max_new_tokens, generate_in_eval
        enc_dim = getattr(source, "token_dim", 0) or source.out_dim
        self.memory_proj = nn.Linear(enc_dim, decoder.dim)

    def applies_to(self, batch: Mapping[str, Any]) -> bool:
        return MODALITY_KEYS[self.source] in batch and TEXT in batch

    def memory(self, feats: EncodedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The source tokens at the decoder width (B, N, D_dec) and their mask (B, N), True = real."""
        tokens, mask = token_sequence(feats[self.source])  # (B, N, D_enc)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device) if mask is None else mask.bool()
        return self.memory_proj(tokens), mask  # (B, N, D_dec), (B, N)

    def forward(self, feats: EncodedBatch, batch: Mapping[str, Any]) -> dict[str, Any]:
        memory, mem_mask = self.memory(feats)
        inputs, in_mask, labels = caption_io(batch[TEXT], batch[TEXT_MASK], self.bos, self.eos, self.wrap)
        logits = self.decoder(inputs, in_mask, memory, mem_mask)  # (B, L', V)
        out: dict[str, Any] = {f"{self.name}_loss": caption_loss(logits, labels, self.label_smoothing)}
        if not self.training:
            nll, count = caption_nll(logits, labels)
            out.update({f"{self.name}_nll_sum": nll.detach(), f"{self.name}_tokens": count.detach().to(nll.dtype)})
            if self.generate_in_eval:
                out[f"{self.name}_generated"] = self.decode(self.decoder.generate(
                    memory, mem_mask, self.bos, self.eos, self.max_new_tokens))
                out[f"{self.name}_references"] = self.references(batch)
        return out

    def references(self, batch: Mapping[str, Any]) -> list[str]:
        """The batch's raw captions (``reference``), else its token ids decoded."""
        if REFERENCE in batch:
            return [str(r) for r in batch[REFERENCE]]
        return self.tokenizer.batch_decode(batch[TEXT].tolist(), skip_special_tokens=True)

    def decode(self, ids: torch.Tensor) -> list[str]:
        """Generated ids (B, T) → text, each row cut at its first EOS."""
        rows = []
        for row in ids.tolist():
            rows.append(row[: row.index(self.eos)] if self.eos in row else row)
        return self.tokenizer.batch_decode(rows, skip_special_tokens=True)

    @torch.no_grad()
    def caption(self, feats: EncodedBatch, max_new_tokens: Optional[int] = None) -> list[str]:
        """Greedy captions of a batch's ``source`` inputs (``predict``)."""
        memory, mem_mask = self.memory(feats)
        return self.decode(self.decoder.generate(memory, mem_mask, self.bos, self.eos,
                                                 max_new_tokens or self.max_new_tokens))


@OBJECTIVES.register()
def captioning(encoders: Mapping[str, Encoder], modality: str = "image", decoder: Optional[dict[str, Any]] = None,
               label_smoothing: float = 0.0, max_new_tokens: int = 0, generate_in_eval: bool = True,
               where: str = "model.objectives.caption") -> CaptioningObjective:
    """A caption decoder cross-attending to the ``modality`` encoder (image or audio); captions are tokenised by
    the text encoder's tokenizer; ``max_new_tokens`` bounds eval/predict captions (0: min(32, decoder max_length - 1)).
    ``decoder``: ``{name: tiny, dim, depth, heads, max_length}`` (default) or
    ``{name: hf, config: {model_type: gpt2, …}}`` / ``{name: hf, name_or_path: …}``."""
    if modality not in ("image", "audio"):
        raise ValueError(f"{where}.modality={modality!r}: captioning reads an image or audio encoder")
    require_encoders(encoders, ["text", modality], where)
    tok = encoders["text"].tokenizer  # type: ignore[attr-defined]
    spec = dict(decoder or {"name": "tiny"})
    runtime = {"vocab_size": len(tok), **({"key": f"{where}.decoder"} if spec.get("name") == "hf" else {})}
    dec = CAPTION_DECODERS.build(spec, f"{where}.decoder", **runtime)
    return CaptioningObjective(encoders[modality], tok, dec, label_smoothing, max_new_tokens, generate_in_eval, where)


__all__ = ["CAPTION_DECODERS", "CaptionDecoder", "CaptioningObjective", "HFCaptionDecoder", "TinyCaptionDecoder",
           "caption_io", "caption_loss", "caption_nll", "captioning", "greedy_decode"]
