"""CTC speech recognition: character vocabulary, text normalisation, the CTC task, greedy and
beam-search decoding (torchaudio's flashlight ``ctc_decoder``); WER/CER live in ``metrics.ctc``."""
from __future__ import annotations

import re
import unicodedata
from typing import Any, Iterable, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mm_ptft.contracts import ExportSpec, Task
from mm_ptft.encoders.base import Encoder
from mm_ptft.env import require_torchaudio
from mm_ptft.metrics.ctc import CTCMetrics
from mm_ptft.types import LABEL_LENGTHS, LABELS

BLANK, SPACE = "<blank>", "|"  # token 0 is the CTC blank; "|" marks word boundaries (flashlight's convention)


def normalize_text(text: str, lowercase: bool = True, strip_punctuation: bool = True) -> str:
    """Unicode NFKC, optional lower-casing and punctuation removal (apostrophes kept), single spaces."""
    text = unicodedata.normalize("NFKC", str(text))
    if lowercase:
        text = text.lower()
    if strip_punctuation:
        text = re.sub(r"[^\w\s']|_", " ", text)
    return " ".join(text.split())


class CharVocab:
    """Characters ↔ ids: 0 is the CTC blank, ``|`` stands for a space. Built from training texts
    and stored (as its token list) in the run's resolved config so eval/predict rebuild it."""

    def __init__(self, tokens: Sequence[str]) -> None:
        self.tokens = list(tokens)
        if not self.tokens or self.tokens[0] != BLANK:
            raise ValueError(f"a CTC vocabulary must start with {BLANK!r}, got {self.tokens[:3]}")
        self.index = {t: i for i, t in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            raise ValueError(f"duplicate tokens in the CTC vocabulary {self.tokens}")

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> "CharVocab":
        chars = sorted({c for t in texts for c in t.replace(" ", SPACE)} - {SPACE})
        return cls([BLANK, SPACE, *chars])

    @classmethod
    def from_tokenizer(cls, tok: Any, where: str = "model.tokenizer") -> "CharVocab":
        """The characters of an HF CTC tokenizer (e.g. a ``Wav2Vec2CTCTokenizer`` directory): its pad
        token is the blank, its word delimiter (``|`` by default) the space; other specials are dropped."""
        if tok.pad_token is None:
            raise ValueError(f"{where}: the tokenizer has no pad token to serve as the CTC blank")
        delim = getattr(tok, "word_delimiter_token", None) or SPACE
        special = set(tok.all_special_tokens) | {delim}
        chars = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]) if t not in special]
        multi = [t for t in chars if len(t) != 1]
        if multi:
            raise ValueError(f"{where}: the CTC head predicts characters, but the tokenizer has multi-character "
                             f"tokens {multi[:5]}; use a character (CTC) tokenizer or leave it empty")
        return cls([BLANK, SPACE, *chars])

    def encode(self, text: str) -> tuple[list[int], int]:
        """Ids of the characters of ``text`` and how many characters were not in the vocabulary."""
        ids = [self.index.get(c) for c in text.replace(" ", SPACE)]
        return [i for i in ids if i is not None], sum(i is None for i in ids)

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join("".join(self.tokens[i] for i in ids if i != 0).replace(SPACE, " ").split())

    def __len__(self) -> int:
        return len(self.tokens)


def greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    """Best path: argmax per frame, merge repeats, drop blanks (id 0). (B, N, V), (B,) → ids per row."""
    best = log_probs.argmax(-1).cpu()  # (B, N)
    out = []
    for row, n in zip(best, lengths.cpu().tolist()):
        ids = torch.unique_consecutive(row[:n]).tolist()
        out.append([i for i in ids if i != 0])
    return out


class BeamDecoder:
    """Beam search with torchaudio's flashlight ``ctc_decoder``, no language model: lexicon-free
    (``lexicon=None``), or restricted to the spellings of ``words`` (a lexicon decoder)."""

    def __init__(self, vocab: CharVocab, beam_size: int = 20, words: Sequence[str] = ()) -> None:
        require_torchaudio("beam-search CTC decoding")
        from torchaudio.models.decoder import ctc_decoder

        self.vocab = vocab
        lexicon = self._write_lexicon(vocab, words) if words else None
        self.decoder = ctc_decoder(lexicon=lexicon, tokens=vocab.tokens, lm=None, beam_size=beam_size,
                                   blank_token=BLANK, sil_token=SPACE, log_add=True)  # sum paths per prefix

    @staticmethod
    def _write_lexicon(vocab: CharVocab, words: Sequence[str]) -> str:
        """A flashlight lexicon file (``word<TAB>w o r d |``) for the words spellable with ``vocab``."""
        import tempfile

        lines = [f"{w}\t{' '.join(w)} {SPACE}" for w in sorted(set(words)) if all(c in vocab.index for c in w)]
        with tempfile.NamedTemporaryFile("w", suffix=".lexicon.txt", delete=False) as f:
            f.write("\n".join(lines) + "\n")
        return f.name

    def __call__(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        emissions = log_probs.detach().float().cpu().contiguous()  # (B, N, V)
        hyps = self.decoder(emissions, lengths.detach().cpu().to(torch.int32))
        return [self.vocab.decode(h[0].tokens.tolist()) if h else "" for h in hyps]


class Transcriber:
    """Log-probs → strings: ``greedy`` (best path), ``beam`` (lexicon-free beam search) or
    ``lexicon`` (beam search restricted to ``words``, e.g. the training transcripts' words)."""

    def __init__(self, vocab: CharVocab, decoder: str = "greedy", beam_size: int = 20,
                 words: Sequence[str] = ()) -> None:
        if decoder not in ("greedy", "beam", "lexicon"):
            raise ValueError(f"model.decoder={decoder!r}; choose 'greedy', 'beam' or 'lexicon'")
        if decoder == "lexicon" and not words:
            raise ValueError("model.decoder=lexicon needs words (model.lexicon, learned from the training transcripts)")
        self.vocab = vocab
        self.beam = BeamDecoder(vocab, beam_size, words if decoder == "lexicon" else ()) if decoder != "greedy" else None

    def __call__(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        if self.beam is not None:
            return self.beam(log_probs, lengths)
        return [self.vocab.decode(ids) for ids in greedy_decode(log_probs, lengths)]


class CTCTask(Task):
    """Encoder frame tokens → dropout + linear → per-frame log-probs over the vocabulary; CTC loss."""

    main_metric = "wer"
    greater_is_better = False

    def __init__(self, encoder: Encoder, vocab: CharVocab, dropout: float = 0.1, decoder: str = "greedy",
                 beam_size: int = 20, words: Sequence[str] = ()) -> None:
        super().__init__()
        self.encoder, self.vocab = encoder, vocab
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.out_dim, len(vocab))
        self.transcriber = Transcriber(vocab, decoder, beam_size, words)

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        enc = self.encoder(batch)
        logits = self.head(self.dropout(enc.tokens))  # (B, N, V)
        log_probs = F.log_softmax(logits.float(), -1)  # (B, N, V)
        frame_lengths = enc.mask.sum(1)  # (B,)
        out = {"log_probs": log_probs, "frame_lengths": frame_lengths}
        if LABELS in batch:
            out["ctc_loss"] = F.ctc_loss(log_probs.transpose(0, 1), batch[LABELS], frame_lengths,
                                         batch[LABEL_LENGTHS], blank=0, zero_infinity=True)
            out["loss"] = out["ctc_loss"]
        return out

    def build_metrics(self) -> CTCMetrics:
        return CTCMetrics(self.transcriber)

    def export_spec(self) -> ExportSpec:
        return ExportSpec(self.encoder.input_keys(), ["log_probs", "frame_lengths"],
                          {"log_probs": {0: "batch", 1: "frames"}, "frame_lengths": {0: "batch"}},
                          {"vocab": list(self.vocab.tokens),
                           "decoding": "log_probs (B, frames, V) are log-softmax over vocab; id 0 is the CTC blank and "
                                       "'|' a space; greedy: argmax per frame over the first frame_lengths frames, "
                                       "merge repeats, drop blanks"})

    def export_forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        out = self(batch)
        return out["log_probs"], out["frame_lengths"]  # (B, N, V), (B,)

    def export_hf(self) -> nn.Module:
        """The encoder's transformers ``*ForCTC`` class with this head as its ``lm_head`` (blank = pad id 0)."""
        return self.encoder.hf_with_head("ctc", self.head, {"vocab_size": len(self.vocab), "pad_token_id": 0})

    def export_hf_files(self, path: Any, max_length: Optional[int] = None) -> None:
        """A ``Wav2Vec2Processor``: the encoder's feature extractor plus a ``Wav2Vec2CTCTokenizer`` over this
        vocabulary (``<blank>`` its pad token, ``|`` its word delimiter), so ``processor.batch_decode`` of the
        per-frame argmax gives the greedy transcript."""
        import json
        from pathlib import Path

        from transformers import AutoFeatureExtractor, Wav2Vec2CTCTokenizer, Wav2Vec2Processor

        super().export_hf_files(path, max_length)
        vocab = Path(path) / "vocab.json"
        vocab.write_text(json.dumps({t: i for i, t in enumerate(self.vocab.tokens)}, ensure_ascii=False))
        tok = Wav2Vec2CTCTokenizer(str(vocab), pad_token=BLANK, word_delimiter_token=SPACE, unk_token=BLANK,
                                   bos_token=None, eos_token=None, do_lower_case=False)
        Wav2Vec2Processor(feature_extractor=AutoFeatureExtractor.from_pretrained(str(path)),
                          tokenizer=tok).save_pretrained(str(path))

    @torch.no_grad()
    def transcribe(self, batch: Mapping[str, Any]) -> list[str]:
        out = self(batch)
        return self.transcriber(out["log_probs"], out["frame_lengths"])


def needed_frames(labels: Sequence[int]) -> int:
    """Fewest CTC frames that can emit ``labels``: one per label plus a blank between repeats."""
    return len(labels) + sum(a == b for a, b in zip(labels, labels[1:]))
