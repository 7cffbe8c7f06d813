"""Text encoders: any Hugging Face ``AutoModel`` and a tiny built-in transformer.

Each text encoder carries its tokenizer (``encoder.tokenizer``). Without a pretrained tokenizer,
a WordPiece vocabulary is trained on the run's training texts (``corpus``) and saved with the run.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import torch
from torch import nn

from mm_ptft.encoders.base import Encoder, HFBacked, hf_config, hf_pretrained_rates, masked_mean, open_clip_model, \
    release_freed_memory, remote_code, set_hf_rates
from mm_ptft.registry import Registry
from mm_ptft.types import TEXT, TEXT_MASK, TEXT_SEGMENTS, EncoderOutput

TEXT_ENCODERS: Registry[Encoder] = Registry("text_encoder", record_spec=True)
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_wordpiece(corpus: Iterable[str], vocab_size: int = 2000):
    """A BERT-style WordPiece tokenizer learned from ``corpus`` (lower-cased, ``[CLS] x [SEP]``).

    The vocabulary is the most frequent whole words (ties broken alphabetically) plus every
    character and ``##``-continuation character, so unseen words split into known pieces. Built
    deterministically (the library's trainer is not, across runs), so a resumed or rebuilt run
    gets the same ids."""
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    norm, pre = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    counts = Counter(w for text in corpus for w, _ in pre.pre_tokenize_str(norm.normalize_str(str(text))))
    chars = sorted({c for w in counts for c in w})
    pieces = SPECIALS + chars + ["##" + c for c in chars]
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if len(w) > 1]
    vocab = {t: i for i, t in enumerate(pieces + words[: max(vocab_size - len(pieces), 0)])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = norm, pre, decoders.WordPiece()
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def pretrained_tokenizer(path: str, key: str, trust_remote_code: bool = False) -> Any:
    """``AutoTokenizer.from_pretrained(path)``; a missing directory or unknown hub id names ``key``.
    Remote code is off unless asked for (never transformers' interactive prompt, which reads stdin)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise ValueError(f"{key}={path!r}: no tokenizer found there (a directory written by save_pretrained, or a "
                         f"hub id, which offline needs a local cache): {err}") from err


def load_tokenizer(path: Optional[str], corpus: Optional[Iterable[str]], vocab_size: int, where: str):
    if path:
        return pretrained_tokenizer(path, f"{where}.tokenizer")
    if corpus is None:
        raise ValueError(f"{where}: no tokenizer: give {where}.tokenizer=<dir or hub id>, "
                         f"or {where}.name_or_path, or training texts to learn a vocabulary from")
    return train_wordpiece(corpus, vocab_size)


class TextEncoder(Encoder):
    """Base of text encoders: token ids in, with a ``tokenizer`` and a ``max_length``."""

    modality = "text"
    tokenizer: Any
    max_length: int
    #: True where ``forward(batch, causal=True)`` applies a causal attention mask (next-token prediction)
    supports_causal_mask: bool = False

    def input_embeddings(self) -> Optional[nn.Embedding]:
        """The token embedding table (an LM head can tie its weights to it); None where there is none."""
        return None

    def export_preprocessing(self, out: Path) -> dict[str, Any]:
        """Tokenise with the tokenizer saved beside the exported model, pad, and give the attention mask."""
        tok_dir = out.with_name(out.stem + "_tokenizer")
        self.tokenizer.save_pretrained(str(tok_dir))
        return {"tokenizer_dir": str(tok_dir.resolve()), "max_length": int(self.max_length),
                "pad_token_id": int(self.tokenizer.pad_token_id or 0), "add_special_tokens": True,
                "attention_mask": "1 for real tokens, 0 for padding"}


class HFTextEncoder(HFBacked, TextEncoder):
    """Wraps a transformers ``AutoModel``; pools the [CLS] token, the masked mean, or the model's own pooler
    (BERT: dense + tanh over [CLS], what ``BertForSequenceClassification`` classifies)."""

    modality = "text"
    hf_heads = {"classification": "AutoModelForSequenceClassification",
                "question_answering": "AutoModelForQuestionAnswering"}  # per-token head: any pooling

    def __init__(self, model: nn.Module, tokenizer: Any, pooling: str = "cls", max_length: int = 512) -> None:
        super().__init__()
        if pooling not in ("cls", "mean", "pooler"):
            raise ValueError(f"model.text.pooling must be cls, mean or pooler, got {pooling!r}")
        if pooling == "pooler" and getattr(model, "pooler", None) is None:
            raise ValueError(f"model.text.pooling=pooler: {type(model).__name__} has no pooler layer; use cls or mean")
        self.model, self.tokenizer, self.pooling = model, tokenizer, pooling
        limit = getattr(model.config, "max_position_embeddings", None) or max_length
        self.max_length = min(max_length, limit)
        self.out_dim = int(model.config.hidden_size)

    def forward(self, batch: Mapping[str, Any]) -> EncoderOutput:
        mask = batch[TEXT_MASK]  # (B, L)
        out = self.model(**self.hf_model_inputs(batch))
        tokens = out.last_hidden_state  # (B, L, D)
        pooled = {"cls": lambda: tokens[:, 0], "mean": lambda: masked_mean(tokens, mask),
                  "pooler": lambda: out.pooler_output}[self.pooling]()  # (B, D)
        return EncoderOutput(pooled, tokens, mask.bool())

    def hf_model_inputs(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        # segment ids of sentence pairs, only to models with a segment embedding for ids 0 and 1 (BERT, ALBERT;
        # not RoBERTa's single type, nor GPT-2, which would look them up in its token embeddings)
        two_types = getattr(self.model.config, "type_vocab_size", 0) >= 2
        segments = {"token_type_ids": batch[TEXT_SEGMENTS]} if TEXT_SEGMENTS in batch and two_types else {}
        return {"input_ids": batch[TEXT], "attention_mask": batch[TEXT_MASK], **segments}

    def input_embeddings(self) -> Optional[nn.Embedding]:
        return self.model.get_input_embeddings()

    def hf_pooling_problem(self, kind: str) -> Optional[str]:
        if kind != "classification" or self.pooling == "pooler":
            return None
        if getattr(self.model, "pooler", None) is None:
            return (f"{type(self.model).__name__} has no pooler: its *ForSequenceClassification puts layers of its own "
                    f"over the tokens, which no mm_ptft pooling matches; export --format mm_ptft")
        return (f"{type(self.model).__name__}: transformers' *ForSequenceClassification classifies the model's pooler "
                f"output (BERT family: dense + tanh over [CLS]), while this run pools {self.pooling!r}: train with "
                f"model.text.pooling=pooler to export --format hf, or export --format mm_ptft (any pooling)")


@TEXT_ENCODERS.register("hf")
def hf(name_or_path: Optional[str] = None, config: Optional[dict] = None, pooling: str = "cls",
       tokenizer: Optional[str] = None, vocab_size: int = 2000, max_length: int = 512,
       trust_remote_code: bool = False, corpus: Optional[Iterable[str]] = None, dropout: Optional[float] = None,
       attention_dropout: Optional[float] = None, drop_path: Optional[float] = None) -> HFTextEncoder:
    """Any HF ``AutoModel``: pretrained from a hub id or local directory (``name_or_path``), or
    randomly initialised from ``config`` (e.g. ``{model_type: bert, hidden_size: 64, ...}``); the rates
    set the config's dropout fields (``set_hf_rates``)."""
    from transformers import AutoModel

    trust = remote_code(trust_remote_code, "model.text", name_or_path)
    rates = {"dropout": dropout, "attention_dropout": attention_dropout, "drop_path": drop_path}
    if name_or_path:
        key = "model.text.tokenizer" if tokenizer else "model.text.name_or_path"
        tok = pretrained_tokenizer(tokenizer or name_or_path, key, trust)
        model = AutoModel.from_pretrained(name_or_path, trust_remote_code=trust,
                                          **hf_pretrained_rates(name_or_path, trust, "model.text", **rates))
    elif config:
        tok = load_tokenizer(tokenizer, corpus, vocab_size, "model.text")
        hf_cfg = hf_config(config, "model.text", vocab_size=len(tok), pad_token_id=tok.pad_token_id)
        model = AutoModel.from_config(set_hf_rates(hf_cfg, "model.text", **rates), trust_remote_code=trust)
    else:
        raise ValueError("model.text (hf): give name_or_path (hub id or directory) or config (random init)")
    return HFTextEncoder(model, tok, pooling, max_length)


class TinyTextTransformer(TextEncoder):
    """A small pre-norm transformer encoder for tests and CPU recipes; ``forward(batch, causal=True)``
    lets each token attend only to itself and earlier tokens (causal language modelling)."""

    modality = "text"
    supports_causal_mask = True

    def __init__(self, tokenizer: Any, dim: int, depth: int, heads: int, max_length: int, pooling: str,
                 dropout: float = 0.1, attention_dropout: Optional[float] = None) -> None:
        super().__init__()
        self.tokenizer, self.pooling, self.max_length, self.out_dim = tokenizer, pooling, max_length, dim
        self.tok_embed = nn.Embedding(len(tokenizer), dim, padding_idx=tokenizer.pad_token_id)
        self.pos_embed = nn.Parameter(torch.randn(1, max_length, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=dropout, batch_first=True, norm_first=True)
        # torch uses one rate for the residual/FFN dropouts and the attention weights: the latter may differ
        layer.self_attn.dropout = dropout if attention_dropout is None else attention_dropout
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self._ckpt = False

    def forward(self, batch: Mapping[str, Any], causal: bool = False) -> EncoderOutput:
        ids, mask = batch[TEXT], batch[TEXT_MASK].bool()  # (B, L)
        x = self.tok_embed(ids) + self.pos_embed[:, : ids.shape[1]]  # (B, L, D)
        n = ids.shape[1]
        future = torch.ones(n, n, dtype=torch.bool, device=ids.device).triu(1) if causal else None  # (L, L) True: hidden
        for blk in self.encoder.layers:
            if self._ckpt and self.training:
                x = torch.utils.checkpoint.checkpoint(blk, x, future, ~mask, use_reentrant=False)
            else:
                x = blk(x, src_mask=future, src_key_padding_mask=~mask)
        x = self.norm(x)  # (B, L, D)
        pooled = x[:, 0] if self.pooling == "cls" else masked_mean(x, mask)  # (B, D)
        return EncoderOutput(pooled, x, mask)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self._ckpt = enabled

    def input_embeddings(self) -> Optional[nn.Embedding]:
        return self.tok_embed


@TEXT_ENCODERS.register("tiny")
def tiny(dim: int = 64, depth: int = 2, heads: int = 4, max_length: int = 128, pooling: str = "mean",
         tokenizer: Optional[str] = None, vocab_size: int = 2000, corpus: Optional[Iterable[str]] = None,
         dropout: float = 0.1, attention_dropout: Optional[float] = None) -> TinyTextTransformer:
    """Built-in tiny transformer; tokenizer from ``tokenizer`` or trained on ``corpus``; ``attention_dropout``
    defaults to ``dropout``."""
    tok = load_tokenizer(tokenizer, corpus, vocab_size, "model.text")
    return TinyTextTransformer(tok, dim, depth, heads, max_length, pooling, dropout, attention_dropout)


class OpenCLIPTokenizer:
    """open_clip's tokenizer behind the small slice of the HF tokenizer API the data pipeline uses."""

    def __init__(self, model_name: str, context_length: Optional[int] = None) -> None:
        import open_clip

        self.model_name = model_name
        self.tok = open_clip.get_tokenizer(model_name, **({"context_length": context_length} if context_length else {}))
        self.context_length = int(getattr(self.tok, "context_length", 77))
        self.pad_token_id = 0
        self.sep_token_id = getattr(self.tok, "eot_token_id", None)
        self.cls_token_id = getattr(self.tok, "sot_token_id", None)

    def __call__(self, texts: Any, return_tensors: Optional[str] = None, **_: Any) -> dict[str, Any]:
        """Token id lists (no padding), or with ``return_tensors="pt"`` zero-padded ``(B, L)`` ids and their mask
        (``L`` the longest row), as HF tokenizers give them."""
        single = isinstance(texts, str)
        ids = self.tok([texts] if single else list(texts))  # (B, context_length), zero-padded
        rows = [r[: int((r != 0).nonzero().max()) + 1].tolist() if (r != 0).any() else [] for r in ids]
        if return_tensors == "pt":
            width = max(1, max(len(r) for r in rows))
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])  # (B, L)
            return {"input_ids": ids[:, :width] * mask, "attention_mask": mask}
        return {"input_ids": rows[0] if single else rows}

    def __len__(self) -> int:
        return int(getattr(self.tok, "vocab_size", 0) or len(getattr(self.tok, "encoder", {})))

    def save_pretrained(self, path: str) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "open_clip_tokenizer.txt").write_text(self.model_name)


class OpenCLIPTextEncoder(TextEncoder):
    """The text tower of an open_clip model: its own tokenizer, causal transformer and projection.

    ``pooled`` is open_clip's ``encode_text`` (projected, not normalised); no per-token outputs."""

    modality = "text"

    def __init__(self, model: nn.Module, tokenizer: OpenCLIPTokenizer) -> None:
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.max_length = tokenizer.context_length
        with torch.no_grad():
            self.out_dim = int(model.encode_text(torch.zeros(1, self.max_length, dtype=torch.long)).shape[-1])

    def forward(self, batch: Mapping[str, Any]) -> EncoderOutput:
        ids = batch[TEXT]  # (B, L)
        ids = torch.nn.functional.pad(ids, (0, self.max_length - ids.shape[1]))  # (B, context) as open_clip expects
        return EncoderOutput(self.model.encode_text(ids))  # (B, E)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.model.set_grad_checkpointing(enabled)


@TEXT_ENCODERS.register("open_clip")
def open_clip_text(name_or_path: str = "ViT-B-32", pretrained: Optional[str] = None,
                   model_cfg: Optional[dict] = None) -> OpenCLIPTextEncoder:
    """Text tower of open_clip model ``name_or_path``; ``pretrained`` is a tag or a local checkpoint file;
    ``model_cfg`` overrides the config (``embed_dim``, ``text_cfg``, ...) for custom or tiny models."""
    shared = open_clip_model(name_or_path, pretrained, model_cfg)
    model = copy.copy(shared)  # the text side only; a CLIP shared with the image encoder keeps its visual tower
    model._modules = dict(shared._modules)
    if hasattr(model, "visual"):
        model.visual = nn.Identity()
    del shared
    release_freed_memory()  # unshared, the visual tower's memory back to the OS, not to forked loader workers
    return OpenCLIPTextEncoder(model, OpenCLIPTokenizer(name_or_path, getattr(model, "context_length", None)))
