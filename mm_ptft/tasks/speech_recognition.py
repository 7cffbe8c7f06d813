"""Speech recognition (CTC): any audio encoder + a linear CTC head over its frames; audio manifests
(CSV/JSONL with an audio-path and a transcript column) through HF datasets, decoded with soundfile."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Iterable

import torch

import mm_ptft.data.generated.audio  # noqa: F401  (registers the tone_speech generator)
from mm_ptft.config import RunConfig, SkipBadSamples, SplitData, StreamingData
from mm_ptft.contracts import Prepared
from mm_ptft.data.audio import CLIP_FEATURES, AudioCollator, AudioPipeline, AugmentConfig, Clip, \
    clip_columns, clip_dataset, count, manifest_clips
from mm_ptft.data.audio_stream import ClipRow
from mm_ptft.data.folders import FolderSpec
from mm_ptft.data.shards import column_batches
from mm_ptft.data.stream import CountingCollate
from mm_ptft.data.table_cache import CacheFields, features
from mm_ptft.data.tables import DataError, require_columns
from mm_ptft.encoders.audio import AUDIO_ENCODERS, AudioEncoder
from mm_ptft.encoders.base import build_encoder
from mm_ptft.encoders.text import pretrained_tokenizer
from mm_ptft.heads.ctc import SPACE, CharVocab, CTCTask, needed_frames, normalize_text, parse_decoder
from mm_ptft.heads.ngram_lm import is_arpa
from mm_ptft.tasks import recipe
from mm_ptft.tasks import streaming as S
from mm_ptft.tasks.cached_tables import prepare_tables, split_counts, store_columns
from mm_ptft.tasks.common import eval_name, load_splits


@dataclass
class SpeechData(SplitData, StreamingData, SkipBadSamples, CacheFields):
    """train_file: a manifest; with streaming also WebDataset tars ({key}.flac|wav + {key}.txt) or manifest
    shards: a glob, brace range, directory or hf:<dataset>."""

    RANGES: ClassVar[dict[str, str]] = {"min_duration": ">=0", "max_duration": ">=0"}  # with SplitData's
    audio_column: str = "audio"  # file paths, relative to the manifest
    text_column: str = "text"
    min_duration: float = 0.0  # seconds; shorter clips are dropped and counted
    max_duration: float = 30.0  # seconds; longer clips are dropped and counted (0: no limit)
    lowercase: bool = True
    strip_punctuation: bool = True
    check_audio: bool = True  # decode every file once at start-up to catch truncated/NaN files early
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def folder(self) -> FolderSpec:
        """An audio folder (``metadata.csv`` with file_name + transcription, or clip.txt / clip.lab beside each clip):
        paths and transcripts in the audio and text columns."""
        return FolderSpec("audio", self.audio_column, text=self.text_column)


@dataclass
class SpeechModel:
    RANGES: ClassVar[dict[str, str]] = {"dropout": "[0,1)", "beam_size": ">0"}  # checked by config.parse
    audio: Dict[str, Any] = field(default_factory=lambda: {"name": "tiny"})
    vocab: list[str] = field(default_factory=list)  # empty: from tokenizer, else the training transcripts' characters
    tokenizer: str = ""  # an HF character/CTC tokenizer (hub id or local dir) whose characters form the vocabulary
    dropout: float = 0.1
    # greedy | beam (torchaudio ctc_decoder, lexicon-free) | lexicon (beam over known words) | {name: beam,
    # lm: PATH.arpa|.bin, lm_weight, word_score, beam_size, lexicon} (n-gram LM fusion;
    # docs/howto/speech_recognition.md)
    decoder: Any = "greedy"  # a name or a mapping: checked by heads.ctc.parse_decoder (errors name the key)
    beam_size: int = 20
    # decoder=lexicon or a KenLM binary LM; empty: words of the training transcripts
    lexicon: list[str] = field(default_factory=list)
    freeze_feature_encoder: bool = False  # encoders with a conv front end (hf, torchaudio_wav2vec2)


@dataclass
class SpeechRecognitionConfig(RunConfig):
    task: str = "speech_recognition"
    data: SpeechData = field(default_factory=SpeechData)
    model: SpeechModel = field(default_factory=SpeechModel)


def _clips(ds: Any, manifest: str, cfg: SpeechRecognitionConfig, enc: AudioEncoder, pipe: AudioPipeline,
           vocab: CharVocab, counters: dict[str, int]) -> list[Clip]:
    """Usable clips of one manifest: bad files and durations filtered, transcripts normalised and
    encoded, clips too short for their transcript under CTC dropped (and counted)."""
    d, clips = cfg.data, []
    normalize = lambda t: normalize_text(t, d.lowercase, d.strip_punctuation)  # noqa: E731
    for _, path, samples, text in manifest_clips(ds, manifest, d, enc.sample_rate, normalize, counters):
        ids, unknown = vocab.encode(text)
        if unknown:
            count(counters, "unknown_characters_dropped", unknown)
        frames = int(enc.frame_lengths(torch.tensor([pipe.input_length(samples)]))[0])
        if frames < needed_frames(ids):
            count(counters, "dropped_too_short_for_transcript")
            continue
        clips.append(Clip(path, text, ids, samples))
    return clips


def _check_coverage(clips: list[Clip], vocab: CharVocab, manifest: str, max_unknown: float = 0.05) -> None:
    """A fixed vocabulary (``model.vocab``/``model.tokenizer``) that misses many training-transcript
    characters (e.g. upper-case letters vs. ``data.lowercase=true``) would train on gutted targets: stop
    instead. (Eval transcripts keep their characters, so misses there count as errors in WER/CER.)"""
    chars = [c for clip in clips for c in clip.text.replace(" ", SPACE)]
    unknown = Counter(c for c in chars if c not in vocab.index)
    if chars and sum(unknown.values()) > max_unknown * len(chars):
        common = "".join(c for c, _ in unknown.most_common(10))
        raise DataError(f"{manifest}: {sum(unknown.values())} of {len(chars)} transcript characters are not in the CTC "
                        f"vocabulary (most common: {common!r}); make data.lowercase / data.strip_punctuation match "
                        f"model.vocab or model.tokenizer")


def _needs_lexicon(m: SpeechModel) -> bool:
    """Whether decoding needs the training transcripts' words as ``model.lexicon`` (empty so far): for
    ``decoder: lexicon``, or an LM that is a KenLM binary (which cannot list its words), unless
    ``model.decoder.lexicon`` names them. Checks ``model.decoder`` (keys, numbers, files) before any data is read."""
    spec = parse_decoder(m.decoder)
    binary_lm = spec.lm is not None and not is_arpa(spec.lm.path)
    return not m.lexicon and not spec.lexicon and (spec.name == "lexicon" or binary_lm)


def _learn_targets(m: SpeechModel, texts: Iterable[str]) -> None:
    """``model.vocab`` (the characters) if empty and, for decoder=lexicon, ``model.lexicon`` (the words) if empty,
    from normalised training transcripts in one pass; both are saved with the run's resolved config."""
    lexicon = _needs_lexicon(m)
    chars: set[str] = set()
    words: set[str] = set()
    for t in texts:
        chars.update(t)
        if lexicon:
            words.update(t.split())
    m.vocab = m.vocab or CharVocab.from_texts(chars).tokens
    m.lexicon = sorted(words) if lexicon else m.lexicon


def _build_encoder(cfg: SpeechRecognitionConfig) -> AudioEncoder:
    enc = build_encoder(AUDIO_ENCODERS, cfg.model.audio, "model.audio")
    if cfg.model.freeze_feature_encoder:
        if not hasattr(enc, "freeze_feature_encoder"):
            raise ValueError(f"model.freeze_feature_encoder=true but model.audio.name={cfg.model.audio['name']!r} "
                             f"has no separate feature encoder")
        enc.freeze_feature_encoder()
    return enc


def prepare(cfg: SpeechRecognitionConfig, train: bool = True) -> Prepared:
    """Build the encoder, learn the character vocabulary, build the CTC head; the checked clips (usable files, their
    sample counts and encoded transcripts) come from the preprocessing cache when the same data was prepared the same
    way before (``tasks/cached_tables.py``), else the manifests or folders are read and every clip checked."""
    d, m = cfg.data, cfg.model
    if not m.vocab and m.tokenizer:
        m.vocab = CharVocab.from_tokenizer(pretrained_tokenizer(m.tokenizer, "model.tokenizer")).tokens
    if d.streaming:
        return _prepare_stream(cfg, train)
    learn = _needs_lexicon(m) or not m.vocab  # needs the training transcripts
    enc = _build_encoder(cfg)
    train_pipe = AudioPipeline(enc.sample_rate, enc.input_kind, enc.n_mels, d.augment, train=True)
    eval_pipe = AudioPipeline(enc.sample_rate, enc.input_kind, enc.n_mels)

    def build(cache: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        counters: dict[str, int] = {}
        train_ds, eval_ds = load_splits(cfg, train, learn, counters)
        if learn:
            _learn_from(train_ds, cfg)
        vocab, tables = CharVocab(m.vocab), {}
        for split, ds, where in (("train", train_ds if train else None, d.train_file),
                                 ("eval", eval_ds, d.eval_file or d.train_file)):
            if ds is not None:
                clips = _clips(ds, where, cfg, enc, eval_pipe, vocab, counters)
                if split == "train":
                    _check_coverage(clips, vocab, d.train_file)
                tables[split] = store_columns(clip_columns(clips), cache, split, features(CLIP_FEATURES))
        return tables, {"vocab": m.vocab, "lexicon": m.lexicon, "counters": counters}

    settings = {"recipe": "speech_recognition", "data": {k: getattr(d, k) for k in CLIP_KEYS}, "vocab": m.vocab,
                "lexicon": m.lexicon, "decoder": m.decoder, "audio": m.audio, "learn": learn}
    tables, info, _ = prepare_tables(cfg, train, learn, settings, build)
    m.vocab, m.lexicon, counters = list(info["vocab"]), list(info["lexicon"]), {}
    split_counts(info, counters)
    task = CTCTask(enc, CharVocab(m.vocab), m.dropout, m.decoder, m.beam_size, m.lexicon)
    tr = clip_dataset(tables.get("train"), train_pipe)
    ev = clip_dataset(tables.get("eval"), eval_pipe)
    if ev is not None and not len(ev):
        raise DataError(f"{eval_name(d)}: no usable clips left (counts: {counters})")
    return Prepared(task, tr, ev, AudioCollator(), tr.lengths() if tr else None, ev.lengths() if ev else None,
                    counters)


CLIP_KEYS = ("audio_column", "text_column", "min_duration", "max_duration", "lowercase", "strip_punctuation",
             "check_audio", "skip_bad_samples")  # what a clip's checks and targets depend on, besides the model


def _learn_from(train_ds: Any, cfg: SpeechRecognitionConfig) -> None:
    """``model.vocab`` / ``model.lexicon`` from the training transcripts (``_learn_targets``)."""
    d, m = cfg.data, cfg.model
    if train_ds is None:
        raise ValueError("model.vocab is empty and there is no data.train_file to learn it from" if not m.vocab
                         else "model.decoder (lexicon, or a KenLM binary LM) needs words: model.lexicon is empty "
                              "and there is no data.train_file to learn them from")
    require_columns(train_ds, [d.text_column], d.train_file)
    _learn_targets(m, (normalize_text(t or "", d.lowercase, d.strip_punctuation) for t in train_ds[d.text_column]))


def _prepare_stream(cfg: SpeechRecognitionConfig, train: bool) -> Prepared:
    """``data.streaming``: clips decoded, checked and featurised per sample in the loader workers; the vocabulary
    from one pass over a manifest's transcript column (tar shards need ``model.vocab`` or ``model.tokenizer``)."""
    d, m = cfg.data, cfg.model
    shards = S.shards_of(cfg, train)
    normalize = lambda t: normalize_text(t, d.lowercase, d.strip_punctuation)  # noqa: E731
    if _needs_lexicon(m) or not m.vocab:
        if not shards[0] or any(s.kind == "tar" for s in shards[0]):
            raise DataError("model.vocab (or model.tokenizer) and, for decoder=lexicon or a KenLM binary LM, "
                            "model.lexicon must be set "
                            "to stream from WebDataset shards (learning them would read every shard first)")
        _learn_targets(m, (normalize(t or "") for batch in column_batches(shards[0], d.text_column) for t in batch))
    vocab, enc = CharVocab(m.vocab), _build_encoder(cfg)
    task = CTCTask(enc, vocab, m.dropout, m.decoder, m.beam_size, m.lexicon)
    frames = lambda n: int(enc.frame_lengths(torch.tensor([n]))[0])  # noqa: E731

    def clip_row(train_pipe: bool) -> ClipRow:
        pipe = AudioPipeline(enc.sample_rate, enc.input_kind, enc.n_mels, d.augment if train_pipe else None,
                             train=train_pipe)
        return ClipRow(pipe, vocab, normalize, frames, needed_frames, d, cfg.seed)

    tr, ev = S.streams(cfg, shards, clip_row(True), train, eval_fn=clip_row(False))
    return Prepared(task, tr, ev, CountingCollate(AudioCollator()))


def predict(cfg: SpeechRecognitionConfig, prepared: Prepared, paths: list[str]) -> list[dict[str, Any]]:
    """Transcribe audio files (any format soundfile reads, any rate, mono or multi-channel)."""
    task: CTCTask = prepared.task
    enc = task.encoder
    pipe = AudioPipeline(enc.sample_rate, enc.input_kind, enc.n_mels)
    device = next(task.parameters()).device
    out = []
    for path in paths:
        batch = prepared.collate([{"audio": pipe(path)}])
        batch = {k: v.to(device) for k, v in batch.items()}
        out.append({"file": path, "text": task.transcribe(batch)[0]})
    return out


SpeechRecognition = recipe(SpeechRecognitionConfig, prepare, predict)
