"""CTC speech recognition: character vocabulary, text normalisation, the CTC task, greedy and
beam-search decoding (torchaudio's flashlight ``ctc_decoder``, optionally with an n-gram word LM fused in);
WER/CER live in ``metrics.ctc``."""
from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from mm_ptft.contracts import ExportSpec, Task
from mm_ptft.encoders.base import Encoder
from mm_ptft.env import require_torchaudio
from mm_ptft.heads.ngram_lm import UNK, check_lexicon_in_lm, is_arpa, lm_words, spellable
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


@dataclass
class LMOptions:
    """An n-gram word LM fused into beam search: an ARPA file (or a KenLM binary), its weight, and a score added
    per emitted word (positive favours more words); flashlight adds ``weight * log LM + word_score`` per word."""

    path: str
    weight: float = 2.0
    word_score: float = 0.0


@dataclass
class DecoderSpec:
    """``model.decoder`` parsed: a name (greedy | beam | lexicon) or ``{name: beam, lm, lm_weight, word_score,
    beam_size, lexicon}``; ``beam_size`` None means ``model.beam_size``, ``lexicon`` is a word-list / flashlight
    lexicon file or the words themselves."""

    name: str = "greedy"
    beam_size: Optional[int] = None
    lexicon: Union[str, list[str], None] = None
    lm: Optional[LMOptions] = None


DECODERS = ("greedy", "beam", "lexicon")
DECODER_KEYS = ("name", "lm", "lm_weight", "word_score", "beam_size", "lexicon")


def _number(spec: Mapping[str, Any], key: str, kind: type, default: Any, where: str) -> Any:
    value = spec.get(key, default)
    try:
        number = kind(value) if not isinstance(value, bool) and (kind is float or isinstance(value, int)) else None
    except (TypeError, ValueError):
        number = None
    if number is None or not math.isfinite(number) or (kind is int and number <= 0):
        raise ValueError(f"{where}.{key}={value!r}: {'a positive integer' if kind is int else 'a finite number'}")
    return number


def parse_decoder(spec: Any, where: str = "model.decoder") -> DecoderSpec:
    """``model.decoder`` checked at build time: unknown keys, bad numbers and missing files are errors naming
    the key."""
    if isinstance(spec, DecoderSpec):
        return spec
    if isinstance(spec, str):
        out = DecoderSpec(spec)
    elif isinstance(spec, Mapping):
        unknown = sorted(set(spec) - set(DECODER_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; allowed: {', '.join(DECODER_KEYS)}")
        lm = None
        if spec.get("lm"):
            lm = LMOptions(str(spec["lm"]), _number(spec, "lm_weight", float, 2.0, where),
                           _number(spec, "word_score", float, 0.0, where))
        elif "lm_weight" in spec or "word_score" in spec:
            raise ValueError(f"{where}: lm_weight/word_score need {where}.lm (an ARPA or KenLM binary file)")
        beam = _number(spec, "beam_size", int, 1, where) if spec.get("beam_size") is not None else None
        lexicon = spec.get("lexicon") or None
        out = DecoderSpec(str(spec.get("name", "beam")), beam, lexicon if isinstance(lexicon, str) else
                          list(lexicon) if lexicon else None, lm)
    else:
        raise ValueError(f"{where}={spec!r}: a decoder name or a mapping with keys {', '.join(DECODER_KEYS)}")
    if out.name not in DECODERS:
        raise ValueError(f"{where}={out.name!r}; choose 'greedy', 'beam' or 'lexicon'")
    if out.name == "greedy" and (out.lm or out.lexicon):
        raise ValueError(f"{where}: an lm or lexicon needs {where}.name=beam (got 'greedy')")
    for key, path in (("lm", out.lm.path if out.lm else ""), ("lexicon", out.lexicon)):
        if isinstance(path, str) and path and not Path(path).is_file():
            raise FileNotFoundError(f"{where}.{key}={path!r} does not exist" + (
                "; build an LM from the training transcripts with `mm-ptft build-lm CONFIG --out lm.arpa`"
                if key == "lm" else ""))
    return out


def _read_word_list(path: str) -> list[str]:
    """The words of a word list (one per line) or a flashlight lexicon file (``word<TAB>spelling``)."""
    return [ln.split()[0] for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]


def lexicon_words(spec: DecoderSpec, vocab: CharVocab, words: Sequence[str] = (),
                  where: str = "model.decoder") -> list[str]:
    """The words beam search may emit (empty: lexicon-free): ``lexicon`` if given; else for ``name: lexicon``
    or a KenLM binary LM (which cannot list its words) ``words`` (``model.lexicon``); else an ARPA LM's words.
    Checked against the CTC characters and, for an ARPA LM with its own lexicon, against the LM's words."""
    lm, arpa = spec.lm, bool(spec.lm) and is_arpa(spec.lm.path)
    if spec.lexicon:
        lex = _read_word_list(spec.lexicon) if isinstance(spec.lexicon, str) else list(spec.lexicon)
        source = f"{where}.lexicon"
    elif spec.name == "lexicon" or (lm and not arpa):
        lex, source = list(words), "model.lexicon"
        if not lex:
            why = f"{where}.lm={lm.path!r} is a KenLM binary, whose words cannot be read" if lm and not arpa else \
                f"{where}=lexicon needs words"
            raise ValueError(f"{why}: set {where}.lexicon or model.lexicon (an empty model.lexicon is learned from "
                             f"the training transcripts when training)")
    elif lm:
        lex, source = lm_words(lm.path), f"{where}.lm={lm.path!r}"
    else:
        return []
    lex = spellable(sorted(set(lex)), vocab.tokens[2:], source)
    if arpa and source != f"{where}.lm={lm.path!r}":
        check_lexicon_in_lm(lex, lm_words(lm.path), f"{source} vs {where}.lm={lm.path!r}")
    return lex


@contextlib.contextmanager
def _native_stderr(path: Path) -> Iterator[None]:
    """Send what native code writes to file descriptor 2 into ``path`` meanwhile (Python's own logging is
    unaffected once it is restored)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "wb") as f:
            os.dup2(f.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class BeamDecoder:
    """Beam search with torchaudio's flashlight ``ctc_decoder``: lexicon-free (no ``words``), restricted to the
    spellings of ``words`` (a lexicon decoder), and with ``lm`` a word n-gram LM fused in (a word LM needs the
    lexicon: flashlight's lexicon-free search scores tokens, not words)."""

    def __init__(self, vocab: CharVocab, beam_size: int = 20, words: Sequence[str] = (),
                 lm: Optional[LMOptions] = None) -> None:
        require_torchaudio("beam-search CTC decoding")
        from torchaudio.models.decoder import ctc_decoder

        if lm is not None and not words:
            raise ValueError(f"model.decoder.lm={lm.path!r}: a word language model needs a lexicon (its words)")
        self.vocab, self.lexicon = vocab, bool(words)
        lm_kw = dict(lm=lm.path, lm_weight=lm.weight, word_score=lm.word_score) if lm else dict(lm=None)
        with tempfile.TemporaryDirectory() as tmp:  # flashlight reads the lexicon while building the decoder
            lexicon = self._write_lexicon(vocab, words, Path(tmp)) if words else None
            try:
                with _native_stderr(Path(tmp) / "stderr.txt"):  # KenLM draws a progress bar per load
                    self.decoder = ctc_decoder(lexicon=lexicon, tokens=vocab.tokens, beam_size=beam_size,
                                               unk_word=UNK, blank_token=BLANK, sil_token=SPACE, log_add=True,
                                               **lm_kw)  # log_add: sum the paths of a prefix
            except RuntimeError as err:
                if lm is None:
                    raise
                raise ValueError(f"model.decoder.lm={lm.path!r}: KenLM cannot load it as an ARPA or binary language "
                                 f"model ({str(err).strip().splitlines()[-1][:200]})") from None

    @staticmethod
    def _write_lexicon(vocab: CharVocab, words: Sequence[str], tmp: Path) -> str:
        """A flashlight lexicon file (``word<TAB>w o r d |``) for the words spellable with ``vocab``."""
        lines = [f"{w}\t{' '.join(w)} {SPACE}" for w in sorted(set(words)) if all(c in vocab.index for c in w)]
        path = tmp / "lexicon.txt"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return str(path)

    def __call__(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        emissions = log_probs.detach().float().cpu()  # (B, N, V)
        lengths = lengths.detach().cpu().long()  # (B,)
        if not self.lexicon:
            hyps = self.decoder(emissions.contiguous(), lengths.to(torch.int32))
            return [self.vocab.decode(h[0].tokens.tolist()) if h else "" for h in hyps]
        emissions, lengths = self._close_last_word(emissions, lengths)
        hyps = self.decoder(emissions, lengths.to(torch.int32))
        return [" ".join(h[0].words) if h else "" for h in hyps]

    def _close_last_word(self, emissions: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One certain ``|`` frame after each row's last: lexicon spellings end in ``|`` (a word is complete, and
        scored by the LM, on its boundary), but transcripts are encoded without a trailing one, so the last word
        would stay unfinished (left out of the words, never scored, or cut to a prefix)."""
        b, n, v = emissions.shape
        out = torch.cat([emissions, emissions.new_full((b, 1, v), -1e4)], 1)  # (B, N + 1, V)
        boundary = emissions.new_full((v,), -1e4)  # (V,)
        boundary[self.vocab.index[SPACE]] = 0.0
        out[torch.arange(b), lengths] = boundary
        return out.contiguous(), lengths + 1


class Transcriber:
    """Log-probs → strings: ``greedy`` (best path), ``beam`` (lexicon-free beam search, or over a lexicon with an
    n-gram LM fused in) or ``lexicon`` (beam search restricted to ``words``, e.g. the training transcripts')."""

    def __init__(self, vocab: CharVocab, decoder: Any = "greedy", beam_size: int = 20,
                 words: Sequence[str] = ()) -> None:
        self.vocab, self.spec = vocab, parse_decoder(decoder)
        self.beam = None
        if self.spec.name != "greedy":
            self.beam = BeamDecoder(vocab, self.spec.beam_size or beam_size, lexicon_words(self.spec, vocab, words),
                                    self.spec.lm)

    def __call__(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        if self.beam is not None:
            return self.beam(log_probs, lengths)
        return [self.vocab.decode(ids) for ids in greedy_decode(log_probs, lengths)]


class CTCTask(Task):
    """Encoder frame tokens → dropout + linear → per-frame log-probs over the vocabulary; CTC loss."""

    main_metric = "wer"
    greater_is_better = False

    def __init__(self, encoder: Encoder, vocab: CharVocab, dropout: float = 0.1, decoder: Any = "greedy",
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
