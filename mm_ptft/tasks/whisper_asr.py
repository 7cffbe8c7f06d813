"""Speech recognition with an encoder-decoder (any transformers ``WhisperForConditionalGeneration``-compatible
model): the speech recipe's manifests, shards, checks and augmentation (``tasks.speech_recognition.SpeechData``),
the processor's log-mel features, language/task prefix tokens, generation with ``generation.max_new_tokens``, and
WER/CER of the generated transcripts normalised as the CTC recipe normalises (``heads.ctc.normalize_text``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch

from mm_ptft.config import ConfigError, RunConfig
from mm_ptft.contracts import GenerationConfig, Prepared
from mm_ptft.data.audio import CLIP_FEATURES, AudioCollator, Clip, clip_columns, clip_dataset, load_waveform, \
    manifest_clips
from mm_ptft.data.shards import column_batches
from mm_ptft.data.stream import CountingCollate
from mm_ptft.data.table_cache import features, tokenizer_identity
from mm_ptft.data.tables import DataError, require_columns
from mm_ptft.data.whisper import LONG_AUDIO, WhisperClipRow, WhisperPipeline, fits
from mm_ptft.heads.ctc import normalize_text
from mm_ptft.heads.whisper import Whisper, WhisperTask, build_whisper, prefix_labels
from mm_ptft.tasks import recipe
from mm_ptft.tasks import streaming as S
from mm_ptft.tasks.cached_tables import once, prepare_tables, split_counts, store_columns
from mm_ptft.tasks.common import eval_name, is_main_process, load_splits
from mm_ptft.tasks.speech_recognition import CLIP_KEYS, SpeechData
from mm_ptft.types import IGNORE_INDEX



@dataclass
class WhisperData(SpeechData):
    """``SpeechData`` (manifests or shards, durations, checks, augmentation) plus what to do with clips over the
    model's window."""

    max_duration: float = 0.0  # seconds (0: no limit besides the window, which data.long_audio handles)
    long_audio: str = "error"  # error | skip (counted) | chunk (predict: window by window; training/eval: skipped)


@dataclass
class WhisperModelConfig:
    # {name_or_path: hub id | dir} or {config: {WhisperConfig fields}}; processor: a WhisperProcessor dir (random
    # init: else a byte-level BPE tokenizer is learnt from the training transcripts, vocab_size tokens)
    whisper: Dict[str, Any] = field(default_factory=lambda: {"config": {
        "d_model": 64, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
        "decoder_attention_heads": 4, "encoder_ffn_dim": 256, "decoder_ffn_dim": 256, "max_source_positions": 100,
        "max_target_positions": 48}})
    language: str = "en"  # the <|lang|> prefix token (empty: none, as English-only checkpoints)
    task: str = "transcribe"  # transcribe | translate


@dataclass
class WhisperASRConfig(RunConfig):
    task: str = "whisper_asr"
    data: WhisperData = field(default_factory=WhisperData)
    model: WhisperModelConfig = field(default_factory=WhisperModelConfig)
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(max_new_tokens=40))


def _check(cfg: WhisperASRConfig) -> None:
    if cfg.data.long_audio not in LONG_AUDIO:
        raise ConfigError(f"bad value for config key 'data.long_audio': {cfg.data.long_audio!r}; choose one of "
                          f"{list(LONG_AUDIO)}")
    if cfg.model.task not in ("transcribe", "translate"):
        raise ConfigError(f"bad value for config key 'model.task': {cfg.model.task!r}; choose transcribe or translate")
    try:
        cfg.generation.hf_kwargs()
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _normalizer(cfg: WhisperASRConfig) -> Callable[[str], str]:
    return partial(normalize_text, lowercase=cfg.data.lowercase, strip_punctuation=cfg.data.strip_punctuation)


def _build(cfg: WhisperASRConfig, corpus: Optional[list[str]]) -> WhisperTask:
    """The model and processor; a processor made here (random init) is saved in the run for eval and predict."""
    m = cfg.model
    whisper = build_whisper(m.whisper, corpus, m.language or None, m.task, "model.whisper")
    if not (m.whisper.get("processor") or m.whisper.get("name_or_path")):
        path = Path(cfg.output_dir) / "processor"
        if is_main_process():
            whisper.processor.save_pretrained(str(path))
        m.whisper["processor"] = str(path.resolve())
    return WhisperTask(whisper, cfg.generation, _normalizer(cfg))


def _clips(ds: Any, manifest: str, cfg: WhisperASRConfig, pipe: WhisperPipeline, whisper: Whisper,
           counters: dict[str, int]) -> list[Clip]:
    """Usable clips of one manifest: bad files and durations filtered (``scan_clips``), transcripts normalised and
    tokenised, clips over the window and transcripts over the decoder's positions refused or counted (``fits``)."""
    d, clips = cfg.data, []
    for row, path, samples, text in manifest_clips(ds, manifest, d, pipe.sample_rate, _normalizer(cfg), counters):
        ids = prefix_labels(whisper.tokenizer, text)
        if fits(samples, ids, pipe, whisper.max_target_positions, d.long_audio, d.skip_bad_samples,
                f"{manifest}: row {row} ({path})", counters):
            clips.append(Clip(path, text, ids, samples))
    return clips


def _pipes(task: WhisperTask, cfg: WhisperASRConfig) -> tuple[WhisperPipeline, WhisperPipeline]:
    fe = task.whisper.processor.feature_extractor
    return WhisperPipeline(fe, cfg.data.augment, train=True), WhisperPipeline(fe)


def prepare(cfg: WhisperASRConfig, train: bool = True) -> Prepared:
    """Build the model and processor (learning a tokenizer for a random-init model from the training transcripts);
    the checked clips (usable files, sample counts, tokenised transcripts) come from the preprocessing cache when the
    same data was prepared the same way before (``tasks/cached_tables.py``), else the manifests (or shards) are read
    and every clip checked."""
    _check(cfg)
    d, spec = cfg.data, cfg.model.whisper
    if d.streaming:
        return _prepare_stream(cfg, train)
    learn = not (spec.get("processor") or spec.get("name_or_path"))

    @once
    def raw() -> tuple[Any, Any, dict[str, int]]:
        counters: dict[str, int] = {}
        return (*load_splits(cfg, train, learn, counters), counters)

    task = _build(cfg, _corpus(cfg, raw()[0]) if learn else None)
    train_pipe, eval_pipe = _pipes(task, cfg)

    def build(cache: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        train_ds, eval_ds, counters = raw()
        tables = {}
        for split, ds, where, pipe in (("train", train_ds if train else None, d.train_file, train_pipe),
                                       ("eval", eval_ds, d.eval_file or d.train_file, eval_pipe)):
            if ds is not None:
                clips = _clips(ds, where, cfg, pipe, task.whisper, counters)
                tables[split] = store_columns(clip_columns(clips), cache, split, features(CLIP_FEATURES))
        return tables, {"counters": counters}

    fe = task.whisper.processor.feature_extractor
    settings = {"recipe": "whisper_asr", "data": {k: getattr(d, k) for k in (*CLIP_KEYS, "long_audio")},
                "speed_factors": list(d.augment.speed_factors), "language": cfg.model.language,
                "whisper_task": cfg.model.task, "tokenizer": tokenizer_identity(task.whisper.tokenizer),
                "window": [int(fe.sampling_rate), int(fe.n_samples)], "max_labels": task.whisper.max_target_positions}
    tables, info, _ = prepare_tables(cfg, train, learn, settings, build)
    counters: dict[str, int] = {}
    split_counts(info, counters)
    tr, ev = clip_dataset(tables.get("train"), train_pipe), clip_dataset(tables.get("eval"), eval_pipe)
    if tr is not None and not len(tr):
        raise DataError(f"{d.train_file}: no usable clips left (counts: {counters})")
    if ev is not None and not len(ev):
        raise DataError(f"{eval_name(d)}: no usable clips left (counts: {counters})")
    return Prepared(task, tr, ev, AudioCollator(pad_id=IGNORE_INDEX), tr.lengths() if tr else None,
                    ev.lengths() if ev else None, counters)


def _corpus(cfg: WhisperASRConfig, train_ds: Any) -> list[str]:
    """The normalised training transcripts a random-init model's tokenizer is learnt from."""
    d = cfg.data
    if train_ds is None:
        raise ValueError("model.whisper has no processor or name_or_path and there is no data.train_file to learn "
                         "a tokenizer from")
    require_columns(train_ds, [d.text_column], d.train_file)
    return [t for t in map(_normalizer(cfg), (x or "" for x in train_ds[d.text_column])) if t]


def _prepare_stream(cfg: WhisperASRConfig, train: bool) -> Prepared:
    """``data.streaming``: clips decoded, checked and featurised per sample in the loader workers; a random-init
    model's tokenizer learnt from one pass over a manifest's transcript column (tar shards need a processor)."""
    d, spec, normalize = cfg.data, cfg.model.whisper, _normalizer(cfg)
    shards = S.shards_of(cfg, train)
    corpus = None
    if not (spec.get("processor") or spec.get("name_or_path")):
        if not shards[0] or any(s.kind == "tar" for s in shards[0]):
            raise DataError("model.whisper.processor (or name_or_path) must be set to stream from WebDataset shards "
                            "(learning a tokenizer would read every shard first)")
        corpus = [t for b in column_batches(shards[0], d.text_column) for t in map(normalize, (x or "" for x in b)) if t]
    task = _build(cfg, corpus)
    encode, limit = partial(prefix_labels, task.whisper.tokenizer), task.whisper.max_target_positions
    train_pipe, eval_pipe = _pipes(task, cfg)
    tr, ev = S.streams(cfg, shards, WhisperClipRow(train_pipe, encode, normalize, limit, d, cfg.seed), train,
                       eval_fn=WhisperClipRow(eval_pipe, encode, normalize, limit, d, cfg.seed))
    return Prepared(task, tr, ev, CountingCollate(AudioCollator(pad_id=IGNORE_INDEX)))


def transcribe(task: WhisperTask, pipe: WhisperPipeline, path: str, long_audio: str) -> dict[str, Any]:
    """One file → ``{file, text (normalised, as WER scores it), raw_text (the decoder's text), windows}``; a file over
    the window is a DataError (``error``), a counted skip with ``text: null`` (``skip``) or transcribed window by
    window, the texts joined (``chunk``)."""
    wav = load_waveform(path, pipe.sample_rate)  # (T,)
    n = 1 + (wav.shape[-1] - 1) // pipe.fe.n_samples
    if n > 1 and long_audio == "error":
        raise DataError(f"{path}: {wav.shape[-1] / pipe.sample_rate:.2f} s of audio is over the model's "
                        f"{pipe.fe.n_samples / pipe.sample_rate:g} s window; set data.long_audio=chunk to transcribe "
                        f"it window by window, or skip")
    if n > 1 and long_audio == "skip":
        return {"file": path, "text": None, "raw_text": None, "windows": n, "skipped": "over_window"}
    device = next(task.parameters()).device
    feats = torch.stack(pipe.windows(wav)).to(device)  # (windows, F, N)
    ids = task.generate_ids(feats)
    raw = task.whisper.tokenizer.batch_decode(ids, skip_special_tokens=True)
    text = " ".join(t for t in map(task.normalize, raw) if t)
    return {"file": path, "text": text, "raw_text": "".join(raw), "windows": n}


def predict(cfg: WhisperASRConfig, prepared: Prepared, paths: list[str]) -> list[dict[str, Any]]:
    """Transcribe audio files (any format soundfile reads, any rate, mono or multi-channel) with ``generation``."""
    task: WhisperTask = prepared.task
    pipe = WhisperPipeline(task.whisper.processor.feature_extractor)
    return [transcribe(task, pipe, p, cfg.data.long_audio) for p in paths]


WhisperASR = recipe(WhisperASRConfig, prepare, predict)
