"""Encoder-decoder speech recognition with any transformers ``WhisperForConditionalGeneration``-compatible model:
the processor's log-mel features in, the decoder's next-token loss on the transcript's tokens (prefix tokens
``<|startoftranscript|><|lang|><|task|><|notimestamps|>`` as transformers' Whisper tokenizer writes them, padding
labelled -100), and transcripts through the model's own ``generate`` (contracts.GenerativeTask).

``Whisper`` wraps the model and its ``WhisperProcessor`` with what fine-tuning strategies and saving need of an
encoder (``modality``, ``lora_targets``, ``freeze_encoder``), so ``finetune.strategy=lora|freeze_encoder`` adapt it
like any encoder and ``mm-ptft export --format hf`` writes a directory ``pipeline("automatic-speech-recognition")``
loads."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from mm_ptft.config import ConfigError
from mm_ptft.contracts import GenerationConfig, Task
from mm_ptft.metrics.ctc import TranscriptMetrics
from mm_ptft.metrics.generation import GENERATED
from mm_ptft.types import AUDIO, IGNORE_INDEX as IGNORE, LABELS

SOT, EOT, NO_TIMESTAMPS = "<|startoftranscript|>", "<|endoftext|>", "<|notimestamps|>"
TASK_TOKENS = ("<|translate|>", "<|transcribe|>")
PREFIX_TOKENS = 4  # <|startoftranscript|><|lang|><|task|><|notimestamps|>: decoder positions before the text
HOP, RATE = 160, 16000  # Whisper's feature extractor: 10 ms frames at 16 kHz


class Whisper(nn.Module):
    """A transformers Whisper model and its ``WhisperProcessor`` (feature extractor + tokenizer), seen as the task's
    one (audio) encoder."""

    modality = "audio"
    hf_format = True

    def __init__(self, model: nn.Module, processor: Any) -> None:
        super().__init__()
        self.model, self.processor = model, processor
        self.out_dim = int(model.config.d_model)
        self.sample_rate = int(processor.feature_extractor.sampling_rate)
        self.window_samples = int(processor.feature_extractor.n_samples)  # the encoder's fixed window (30 s)
        self.max_target_positions = int(model.config.max_target_positions)

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    def lora_targets(self) -> list[str]:
        return ["q_proj", "v_proj"]  # peft's default for whisper

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.model.gradient_checkpointing_enable() if enabled else self.model.gradient_checkpointing_disable()

    def freeze_encoder(self) -> None:
        """Stop gradients into the audio encoder (transformers' ``freeze_encoder``); the decoder trains."""
        self.model.model.encoder.requires_grad_(False)

    def save_pretrained(self, path: Any) -> None:
        """A transformers directory (``WhisperForConditionalGeneration.from_pretrained``) with the processor."""
        self.model.save_pretrained(str(path))
        self.processor.save_pretrained(str(path))

    def hf_save_processing(self, path: Path, max_length: Optional[int] = None) -> None:
        self.processor.save_pretrained(str(path))


def prefix_labels(tokenizer: Any, text: str) -> list[int]:
    """The decoder targets of ``text``: the tokenizer's ids (prefix tokens + text + ``<|endoftext|>``) without the
    leading ``<|startoftranscript|>``, which is the decoder start token the model prepends (as transformers'
    ``run_speech_recognition_seq2seq.py`` collator strips it)."""
    ids = tokenizer(text).input_ids
    start = tokenizer.convert_tokens_to_ids(SOT)
    return ids[1:] if ids and ids[0] == start else ids


def shift_right(labels: torch.Tensor, pad_id: int, start_id: int) -> torch.Tensor:
    """Decoder inputs: ``start_id`` then the labels but the last, -100 read as padding. (B, L) → (B, L)"""
    out = labels.new_full(labels.shape, pad_id)
    out[:, 1:] = labels[:, :-1]
    out[:, 0] = start_id
    return out.masked_fill(out == IGNORE, pad_id)


class WhisperTask(Task):
    """Next-token loss on the transcript tokens (``seq2seq_loss``, mean over labelled positions, as transformers'
    own); in eval also the transcripts ``generate`` writes (``generated``), scored as WER/CER."""

    main_metric = "wer"
    greater_is_better = False

    def __init__(self, whisper: Whisper, generation: Optional[GenerationConfig] = None,
                 normalize: Callable[[str], str] = lambda t: " ".join(t.split())) -> None:
        super().__init__()
        self.whisper, self.normalize = whisper, normalize
        self.generation = generation or GenerationConfig()
        self.generation.hf_kwargs()  # a bad strategy fails here, not at the first evaluation
        room = whisper.max_target_positions - PREFIX_TOKENS
        if self.generation.max_new_tokens > room:
            raise ConfigError(f"generation.max_new_tokens={self.generation.max_new_tokens} is over what the decoder "
                              f"has room for ({whisper.max_target_positions} positions - {PREFIX_TOKENS} prefix tokens "
                              f"= {room})")

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        model, labels = self.whisper.model, batch[LABELS]  # (B, L), -100 where padded
        cfg = model.config
        decoder_in = shift_right(labels, cfg.pad_token_id, cfg.decoder_start_token_id)  # (B, L)
        logits = model(input_features=batch[AUDIO], decoder_input_ids=decoder_in, use_cache=False).logits  # (B, L, V)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE)
        out: dict[str, Any] = {"loss": loss, "seq2seq_loss": loss}
        if not self.training:
            out[GENERATED] = self.generate(batch)
        return out

    @torch.no_grad()
    def generate_ids(self, features: torch.Tensor, gen: Optional[GenerationConfig] = None) -> torch.Tensor:
        """Token ids ``generate`` writes for log-mel windows (B, F, N) with the model's language/task prefix."""
        gen = gen or self.generation
        return self.whisper.model.generate(input_features=features, **gen.hf_kwargs())  # (B, new)

    @torch.no_grad()
    def generate(self, batch: Mapping[str, Any], gen: Optional[GenerationConfig] = None) -> list[str]:
        """The normalised transcript of each clip (special tokens dropped, ``normalize`` as the references)."""
        ids = self.generate_ids(batch[AUDIO], gen)
        return [self.normalize(t) for t in self.whisper.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def build_metrics(self) -> TranscriptMetrics:
        return TranscriptMetrics()

    def export_hf(self) -> nn.Module:
        """The transformers model itself, its ``generation_config`` set to this run's decoding."""
        model = self.whisper.model
        for key, value in self.generation.hf_kwargs().items():
            setattr(model.generation_config, key, value)
        return model.eval()

    def export_hf_files(self, path: Any, max_length: Optional[int] = None) -> None:
        self.whisper.hf_save_processing(Path(path))

    @torch.no_grad()
    def hf_parity(self, model: nn.Module, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Greedy generation of the exported model, round-tripped through ``save_pretrained``/``from_pretrained`` (its
        generation config included), against the run's own on the batch's clips: same tokens?"""
        import tempfile

        greedy = GenerationConfig(max_new_tokens=self.generation.max_new_tokens)
        ours = self.generate_ids(batch[AUDIO], greedy)
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            reloaded = type(model).from_pretrained(tmp).eval()
        theirs = reloaded.generate(input_features=batch[AUDIO], **greedy.hf_kwargs())
        same = ours.shape == theirs.shape and bool((ours == theirs).all())
        return {"samples": int(ours.shape[0]), "same_generated_tokens": same, "ok": same}


# ---- building ---------------------------------------------------------------------------------------------------

def whisper_tokenizer(corpus: Iterable[str], vocab_size: int = 400) -> Any:
    """A ``WhisperTokenizer`` for a random-init model: byte-level BPE learned from ``corpus`` (``tokenizers``'
    trainer) plus Whisper's special tokens (start of transcript, the 99 language tokens, task, no-timestamps).
    Every transcript gets a leading space (``add_prefix_space``, as OpenAI's Whisper texts start with one), so a
    word is the same token (``Ġword``) first in a phrase or later; without it the first word has its own pieces."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import WhisperTokenizer
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(list(corpus), trainer)
    learned = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    specials = [SOT, *[f"<|{code}|>" for code in LANGUAGES], *TASK_TOKENS, "<|startoflm|>", "<|startofprev|>",
                "<|nospeech|>", NO_TIMESTAMPS]
    return WhisperTokenizer(vocab=learned["vocab"], merges=merges, additional_special_tokens=specials,
                            add_prefix_space=True)


def set_prefix(model: nn.Module, tokenizer: Any, language: Optional[str], task: str) -> None:
    """Language and task for labels (``tokenizer.set_prefix_tokens``) and for ``generate`` (its generation config:
    the token maps a released checkpoint ships, written here for a random-init one)."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    gc, ids = model.generation_config, tokenizer.convert_tokens_to_ids
    multilingual = ids("<|en|>") != tokenizer.unk_token_id
    if multilingual and not getattr(gc, "lang_to_id", None):
        gc.lang_to_id = {f"<|{code}|>": ids(f"<|{code}|>") for code in LANGUAGES}
        gc.task_to_id = {t.strip("<|>"): ids(t) for t in TASK_TOKENS}
    gc.is_multilingual = multilingual
    gc.no_timestamps_token_id = ids(NO_TIMESTAMPS)
    gc.decoder_start_token_id = model.config.decoder_start_token_id
    gc.forced_decoder_ids = None  # the prefix comes from language/task (transformers' current way)
    gc.max_length = None  # generation is bounded by max_new_tokens alone
    gc._from_model_config = False  # else from_pretrained rebuilds it from the model config, dropping task & token maps
    gc.language, gc.task = (language, task) if multilingual else (None, None)
    tokenizer.set_prefix_tokens(language=language if multilingual else None, task=task if multilingual else None,
                                predict_timestamps=False)


def _processor(spec: Mapping[str, Any], corpus: Optional[Iterable[str]], where: str) -> Any:
    """The spec's processor (``processor``, else ``name_or_path``), or a new one for a random-init ``config``:
    a ``WhisperFeatureExtractor`` over ``window_s`` seconds and a tokenizer learned from ``corpus``."""
    from transformers import WhisperFeatureExtractor, WhisperProcessor

    source = spec.get("processor") or spec.get("name_or_path")
    if source:
        try:
            return WhisperProcessor.from_pretrained(source)
        except OSError as err:
            raise ValueError(f"{where}: no Whisper processor at {source!r} (a save_pretrained directory or hub id): "
                             f"{err}") from err
    if corpus is None:
        raise ValueError(f"{where}: a random-init model needs {where}.processor or training transcripts to learn a "
                         f"tokenizer from")
    cfg = spec["config"]
    fe = WhisperFeatureExtractor(feature_size=int(cfg.get("num_mel_bins", 80)),
                                 chunk_length=int(cfg.get("max_source_positions", 1500)) * 2 * HOP // RATE)
    return WhisperProcessor(feature_extractor=fe, tokenizer=whisper_tokenizer(corpus, int(spec.get("vocab_size", 400))))


def build_whisper(spec: Mapping[str, Any], corpus: Optional[Iterable[str]] = None, language: Optional[str] = "en",
                  task: str = "transcribe", where: str = "model.whisper") -> Whisper:
    """``WhisperForConditionalGeneration`` from ``name_or_path`` (hub id or directory, with its processor unless
    ``processor`` names one), or random-init from ``config`` (WhisperConfig fields; the window is
    ``max_source_positions`` * 20 ms) with ``processor`` or a tokenizer learned from ``corpus``."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    unknown = set(spec) - {"name_or_path", "config", "processor", "vocab_size"}
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}")
    if not (spec.get("name_or_path") or spec.get("config")):
        raise ValueError(f"{where}: give name_or_path (hub id or directory) or config (random init)")
    processor = _processor(spec, corpus, where)
    tok = processor.tokenizer
    if spec.get("name_or_path"):
        model = WhisperForConditionalGeneration.from_pretrained(spec["name_or_path"])
    else:
        eot = tok.convert_tokens_to_ids(EOT)
        cfg = WhisperConfig(**{**dict(spec["config"]), "vocab_size": len(tok), "pad_token_id": eot,
                               "bos_token_id": eot, "eos_token_id": eot, "suppress_tokens": [],
                               "begin_suppress_tokens": [], "decoder_start_token_id": tok.convert_tokens_to_ids(SOT)})
        model = WhisperForConditionalGeneration(cfg)
    frames = processor.feature_extractor.nb_max_frames
    if frames != 2 * model.config.max_source_positions:
        raise ValueError(f"{where}: the processor's window ({frames} frames) does not match the model's "
                         f"max_source_positions={model.config.max_source_positions} (expects {2 * model.config.max_source_positions})")
    set_prefix(model, tok, language, task)
    return Whisper(model, processor)


__all__ = ["Whisper", "WhisperTask", "build_whisper", "prefix_labels", "set_prefix", "shift_right", "whisper_tokenizer"]
