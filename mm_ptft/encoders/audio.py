"""Audio encoders: a tiny built-in, any Hugging Face speech ``AutoModel``, and torchaudio models.

Every audio encoder declares ``sample_rate`` (what its input must be resampled to) and
``input_kind``: ``"waveform"`` reads ``batch["audio"]`` as (B, T) samples, ``"features"`` as
(B, F, T) log-mel frames. ``batch["audio_lengths"]`` holds the valid length of each row in the
same unit (samples or frames). Outputs are frame tokens (B, N, D) with a mask (B, N) that is True
for real frames, and their masked mean as ``pooled``.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
from torch import nn

from mm_ptft.encoders.base import Encoder, HFBacked, hf_config, hf_pretrained_rates, masked_mean, remote_code, \
    set_hf_rates
from mm_ptft.features.audio import LogMel, batch_lengths, constant_buffers, lengths_to_mask, masked_normalize
from mm_ptft.env import require_torchaudio
from mm_ptft.registry import Registry
from mm_ptft.types import AUDIO, EncoderOutput

AUDIO_ENCODERS: Registry[Encoder] = Registry("audio_encoder", record_spec=True)


class AudioEncoder(Encoder):
    """Base for audio encoders: declares the input rate and kind; ``frame_lengths`` maps input
    lengths to output-frame lengths (what the CTC loss needs)."""

    modality = "audio"
    sample_rate: int = 16000
    input_kind: str = "waveform"  # "waveform" (B, T) or "features" (B, F, T)
    n_mels: int = 0  # features-kind encoders: mel bins the data pipeline must produce

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def export_preprocessing(self, out: Any) -> dict[str, Any]:
        """Sample rate and input kind; for ``features`` encoders, the log-mel settings the graph expects."""
        info: dict[str, Any] = {"sample_rate": int(self.sample_rate), "input_kind": self.input_kind,
                                "audio_lengths": "valid samples (waveform) or frames (features) per row, before padding"}
        if self.input_kind != "features":
            info["steps"] = "mono, resample to sample_rate, (x - mean) / (std + 1e-7) per clip; shape (B, samples)"
            return info
        lm = LogMel(self.sample_rate, self.n_mels)
        info.update(n_mels=int(self.n_mels), hop_length=lm.hop, n_fft=lm.mel.n_fft, win_length=lm.mel.win_length,
                    steps="mono, resample to sample_rate, torchaudio MelSpectrogram(center=True, pad_mode=constant), "
                          "log(x + 1e-6), per mel bin (x - mean) / (std + 1e-5) over time; shape (B, n_mels, frames)")
        return info


def conv_out(lengths: torch.Tensor, n: int) -> torch.Tensor:
    """Lengths after ``n`` convolutions with kernel 3, stride 2, padding 1."""
    for _ in range(n):
        lengths = (lengths - 1) // 2 + 1
    return lengths


class ConvSubsample(nn.Module):
    """``n`` stride-2 conv + GELU layers (time / 2**n); padded frames are re-zeroed after each
    layer so that a row's output does not depend on the padding its batch adds."""

    def __init__(self, in_dim: int, dim: int, n: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(in_dim if i == 0 else dim, dim, 3, stride=2, padding=1) for i in range(n))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for conv in self.convs:
            lengths = conv_out(lengths, 1)
            x = nn.functional.gelu(conv(x))  # (B, D, N / 2)
            x = x * lengths_to_mask(lengths, x.shape[-1]).unsqueeze(1).to(x.dtype)
        return x, lengths  # (B, D, N'), (B,)


class MelEncoder(AudioEncoder):
    """Base for the built-in log-mel encoders: a log-mel front end for waveform input (skipped for
    ``features`` input, which the data pipeline already normalised) and ``subsample`` stride-2 convs."""

    def __init__(self, sample_rate: int, input_kind: str, n_mels: int, dim: int, subsample: int) -> None:
        super().__init__()
        if input_kind not in ("waveform", "features"):
            raise ValueError(f"input_kind must be 'waveform' or 'features', got {input_kind!r}")
        self.sample_rate, self.input_kind, self.n_mels = sample_rate, input_kind, n_mels
        self.frontend = LogMel(sample_rate, n_mels) if input_kind == "waveform" else None
        self.n_sub = subsample
        self.stem = ConvSubsample(n_mels, dim, subsample)  # "stem": embedding depth for LLRD/freezing

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        if self.frontend is not None:
            lengths = self.frontend.out_lengths(lengths)
        return conv_out(lengths, self.n_sub)

    def features(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised log-mel (B, F, N) and frame lengths (B,) from either input kind."""
        x = batch[AUDIO]
        lengths = batch_lengths(batch, x)
        if self.frontend is None:
            return x, lengths  # (B, F, N): the data pipeline normalised it already
        n = self.frontend.out_lengths(lengths)
        return masked_normalize(self.frontend(x), n), n  # (B, F, N)

    def subsampled(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Features through the conv stem: (B, D, N') and frame lengths (B,)."""
        return self.stem(*self.features(batch))


class TinyAudioEncoder(MelEncoder):
    """Log-mel front end (for waveforms) + strided conv subsampling + a small transformer."""

    def __init__(self, sample_rate: int, input_kind: str, n_mels: int, dim: int, depth: int, heads: int,
                 subsample: int, dropout: float, max_frames: int) -> None:
        super().__init__(sample_rate, input_kind, n_mels, dim, subsample)
        self.out_dim = dim
        self.pos_embed = nn.Parameter(torch.randn(1, max_frames, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self._ckpt = False

    def forward(self, batch: Mapping[str, Any]) -> EncoderOutput:
        x, n = self.subsampled(batch)  # (B, D, N'), (B,)
        x = x.transpose(1, 2)  # (B, N', D)
        if x.shape[1] > self.pos_embed.shape[1]:
            raise ValueError(f"audio of {x.shape[1]} frames after subsampling exceeds max_frames="
                             f"{self.pos_embed.shape[1]}; raise model.audio.max_frames or shorten clips")
        x = x + self.pos_embed[:, : x.shape[1]]  # (B, N', D)
        mask = lengths_to_mask(n, x.shape[1])  # (B, N')
        for blk in self.encoder.layers:
            if self._ckpt and self.training:
                x = torch.utils.checkpoint.checkpoint(blk, x, None, ~mask, use_reentrant=False)
            else:
                x = blk(x, src_key_padding_mask=~mask)
        x = self.norm(x)  # (B, N', D)
        return EncoderOutput(masked_mean(x, mask), x, mask)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self._ckpt = enabled


@AUDIO_ENCODERS.register("tiny")
def tiny(sample_rate: int = 16000, input_kind: str = "waveform", n_mels: int = 40, dim: int = 64,
         depth: int = 2, heads: int = 4, subsample: int = 2, dropout: float = 0.1,
         max_frames: int = 1500) -> TinyAudioEncoder:
    """Built-in tiny encoder: log-mel → ``subsample`` stride-2 convs → ``depth`` transformer blocks."""
    return TinyAudioEncoder(sample_rate, input_kind, n_mels, dim, depth, heads, subsample, dropout, max_frames)


class CRNNAudioEncoder(MelEncoder):
    """Log-mel → stride-2 convs → bidirectional GRU/LSTM layers (DeepSpeech2-style): the built-in that
    learns speech fastest from little data on a CPU (recurrence gives the local, ordered context that
    a small transformer must first learn)."""

    def __init__(self, sample_rate: int, input_kind: str, n_mels: int, dim: int, depth: int, subsample: int,
                 dropout: float, cell: str) -> None:
        super().__init__(sample_rate, input_kind, n_mels, dim, subsample)
        rnn = {"gru": nn.GRU, "lstm": nn.LSTM}.get(cell)
        if rnn is None:
            raise ValueError(f"model.audio.cell must be 'gru' or 'lstm', got {cell!r}")
        self.out_dim = 2 * dim
        # one module per layer, named ``layers.i``, so LLRD and layer freezing see the depth
        self.layers = nn.ModuleList(rnn(dim if i == 0 else 2 * dim, dim, batch_first=True, bidirectional=True)
                                    for i in range(depth))
        self.dropout = nn.Dropout(dropout)

    def forward(self, batch: Mapping[str, Any]) -> EncoderOutput:
        x, n = self.subsampled(batch)  # (B, D, N'), (B,)
        x = x.transpose(1, 2)  # (B, N', D)
        size, packed_lengths = x.shape[1], n.clamp_min(1).cpu()  # one host copy for every layer
        for i, layer in enumerate(self.layers):
            packed = nn.utils.rnn.pack_padded_sequence(x, packed_lengths, batch_first=True,
                                                       enforce_sorted=False)  # padding never enters the state
            x, _ = layer(packed)
            x, _ = nn.utils.rnn.pad_packed_sequence(x, batch_first=True, total_length=size)  # (B, N', 2D)
            if i < len(self.layers) - 1:
                x = self.dropout(x)
        mask = lengths_to_mask(n, size)  # (B, N')
        return EncoderOutput(masked_mean(x, mask), x, mask)


@AUDIO_ENCODERS.register("crnn")
def crnn(sample_rate: int = 16000, input_kind: str = "waveform", n_mels: int = 80, dim: int = 160, depth: int = 2,
         subsample: int = 2, dropout: float = 0.1, cell: str = "gru") -> CRNNAudioEncoder:
    """Built-in conv + recurrent encoder: log-mel → ``subsample`` stride-2 convs (``dim`` channels) →
    ``depth`` bidirectional ``cell`` layers of ``dim`` units per direction (output 2 x ``dim``)."""
    return CRNNAudioEncoder(sample_rate, input_kind, n_mels, dim, depth, subsample, dropout, cell)


# ---- Hugging Face speech models (wav2vec2 / HuBERT / WavLM / Whisper encoder) ---------------


class WhisperLogMel(nn.Module):
    """Whisper's log-mel (Slaney mel, log10, 8-decade floor, (x + 4) / 4) computed with torchaudio,
    over a waveform zero-padded to the encoder's fixed input length, as Whisper was trained."""

    def __init__(self, sample_rate: int, n_mels: int, frames: int) -> None:
        super().__init__()
        torchaudio = require_torchaudio("Whisper log-mel features")

        self.hop, self.frames = 160, frames
        self.mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=400, hop_length=160, n_mels=n_mels,
                                                        mel_scale="slaney", norm="slaney", center=True)
        constant_buffers(self.mel)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        target = self.frames * self.hop
        if wav.shape[-1] > target:
            raise ValueError(f"audio of {wav.shape[-1]} samples exceeds this Whisper encoder's window of "
                             f"{target} samples; cut clips shorter (data.max_duration)")
        wav = nn.functional.pad(wav.float(), (0, target - wav.shape[-1]))  # (B, target)
        with torch.autocast(wav.device.type, enabled=False):
            spec = self.mel(wav)[..., :-1]  # (B, F, frames): Whisper drops the last STFT frame
        logs = torch.log10(spec.clamp_min(1e-10))  # (B, F, frames)
        logs = torch.maximum(logs, logs.amax(dim=(1, 2), keepdim=True) - 8.0)
        return (logs + 4.0) / 4.0


class HFAudioEncoder(HFBacked, AudioEncoder):
    """Wraps a transformers speech model. Models whose main input is ``input_values`` (wav2vec2,
    HuBERT, WavLM, data2vec-audio) take the normalised waveform with an attention mask from
    ``audio_lengths``; those taking ``input_features`` (Whisper's encoder) get log-mel features."""


    def __init__(self, model: nn.Module, sample_rate: int, freeze_feature_encoder: bool) -> None:
        super().__init__()
        self.model, self.sample_rate = model, sample_rate
        self.out_dim = int(getattr(model.config, "hidden_size", 0) or model.config.d_model)
        self.uses_features = model.main_input_name == "input_features"
        self.frontend = None
        if self.uses_features:
            cfg = model.config
            frames = cfg.max_source_positions * model.conv1.stride[0] * model.conv2.stride[0]
            self.frontend = WhisperLogMel(sample_rate, cfg.num_mel_bins, frames)
        if freeze_feature_encoder:
            self.freeze_feature_encoder()

    hf_heads = {"ctc": "AutoModelForCTC"}

    def hf_model_inputs(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        wav = batch[AUDIO]  # (B, T), normalised per utterance
        return {"input_values": wav, "attention_mask": lengths_to_mask(batch_lengths(batch, wav), wav.shape[-1]).long()}

    def hf_pooling_problem(self, kind: str) -> Optional[str]:
        if self.uses_features:
            return (f"{type(self.model).__name__}: this run feeds the encoder mm_ptft's own log-mel front end; "
                    f"transformers has no CTC class over it (export --format mm_ptft)")
        return None

    def hf_save_processing(self, path: Any, max_length: Optional[int] = None) -> None:
        """A ``Wav2Vec2FeatureExtractor`` that normalises each waveform as the run's data pipeline does."""
        from transformers import Wav2Vec2FeatureExtractor

        Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=int(self.sample_rate), padding_value=0.0,
                                 do_normalize=True, return_attention_mask=True).save_pretrained(str(path))

    def freeze_feature_encoder(self) -> None:
        """Stop gradients into the convolutional front end (the usual wav2vec2 fine-tuning recipe)."""
        if self.uses_features:  # Whisper: the two stem convolutions
            for m in (self.model.conv1, self.model.conv2):
                m.requires_grad_(False)
        else:
            self.model.freeze_feature_encoder()

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        if self.uses_features:
            return conv_out(lengths // self.frontend.hop, 1)  # conv2 has stride 2
        return self.model._get_feat_extract_output_lengths(lengths).long()

    def forward(self, batch: Mapping[str, Any]) -> EncoderOutput:
        wav = batch[AUDIO]  # (B, T)
        lengths = batch_lengths(batch, wav)
        if self.uses_features:
            tokens = self.model(self.frontend(wav)).last_hidden_state  # (B, N, D)
        else:
            att = lengths_to_mask(lengths, wav.shape[-1])  # (B, T)
            tokens = self.model(input_values=wav, attention_mask=att.long()).last_hidden_state  # (B, N, D)
        mask = lengths_to_mask(self.frame_lengths(lengths), tokens.shape[1])  # (B, N)
        return EncoderOutput(masked_mean(tokens, mask), tokens, mask)


def _encoder_only(model: nn.Module) -> nn.Module:
    """The encoder of an encoder-decoder model (Whisper); the model itself otherwise."""
    return model.get_encoder() if getattr(model.config, "is_encoder_decoder", False) else model


@AUDIO_ENCODERS.register("hf")
def hf(name_or_path: Optional[str] = None, config: Optional[dict] = None, sample_rate: int = 16000,
       freeze_feature_encoder: bool = False, trust_remote_code: bool = False, dropout: Optional[float] = None,
       attention_dropout: Optional[float] = None, drop_path: Optional[float] = None) -> HFAudioEncoder:
    """Any HF speech ``AutoModel`` from a hub id or local directory (``name_or_path``), or randomly
    initialised from ``config`` (e.g. ``{model_type: wav2vec2, hidden_size: 64, ...}``); the rates
    set the config's dropout fields (``set_hf_rates``)."""
    from transformers import AutoModel

    trust = remote_code(trust_remote_code, "model.audio", name_or_path)
    rates = {"dropout": dropout, "attention_dropout": attention_dropout, "drop_path": drop_path}
    if name_or_path:
        model = AutoModel.from_pretrained(name_or_path, trust_remote_code=trust,
                                          **hf_pretrained_rates(name_or_path, trust, "model.audio", **rates))
    elif config:
        model = AutoModel.from_config(set_hf_rates(hf_config(config, "model.audio"), "model.audio", **rates),
                                      trust_remote_code=trust)
    else:
        raise ValueError("model.audio (hf): give name_or_path (hub id or directory) or config (random init)")
    return HFAudioEncoder(_encoder_only(model), sample_rate, freeze_feature_encoder)


# ---- torchaudio models ------------------------------------------------------------------------


class TorchaudioWav2Vec2(AudioEncoder):
    """A ``torchaudio.models.Wav2Vec2Model`` (wav2vec2 / HuBERT / WavLM architectures) over waveforms."""

    def __init__(self, model: nn.Module, sample_rate: int, freeze_feature_encoder: bool) -> None:
        super().__init__()
        self.model, self.sample_rate = model, sample_rate
        self.out_dim = int(model.encoder.feature_projection.projection.out_features)
        if freeze_feature_encoder:
            self.freeze_feature_encoder()

    def freeze_feature_encoder(self) -> None:
        """Stop gradients into the convolutional feature extractor."""
        self.model.feature_extractor.requires_grad_(False)

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        for layer in self.model.feature_extractor.conv_layers:
            lengths = torch.div(lengths - layer.kernel_size, layer.stride, rounding_mode="floor") + 1
        return lengths.clamp_min(0)

    def forward(self, batch: Mapping[str, Any]) -> EncoderOutput:
        wav = batch[AUDIO]  # (B, T)
        tokens, n = self.model(wav, batch_lengths(batch, wav))  # (B, N, D), (B,)
        mask = lengths_to_mask(n, tokens.shape[1])  # (B, N)
        return EncoderOutput(masked_mean(tokens, mask), tokens, mask)


TORCHAUDIO_WAV2VEC2 = ("wav2vec2_base", "wav2vec2_large", "wav2vec2_large_lv60k", "wav2vec2_xlsr_300m",
                       "hubert_base", "hubert_large", "hubert_xlarge", "wavlm_base", "wavlm_large")


@AUDIO_ENCODERS.register("torchaudio_wav2vec2")
def torchaudio_wav2vec2(arch: str = "wav2vec2_base", config: Optional[dict] = None, sample_rate: int = 16000,
                        freeze_feature_encoder: bool = False, options: Optional[dict] = None) -> TorchaudioWav2Vec2:
    """A torchaudio wav2vec2-family model, randomly initialised: a named builder (``arch``, e.g.
    ``hubert_base``, with keyword ``options``) or ``config`` = all ``wav2vec2_model`` arguments."""
    torchaudio = require_torchaudio("the torchaudio_wav2vec2 encoder")

    if config:
        model = torchaudio.models.wav2vec2_model(**{"aux_num_out": None, **config})
    elif arch in TORCHAUDIO_WAV2VEC2:
        model = getattr(torchaudio.models, arch)(**(options or {}))
    else:
        raise ValueError(f"model.audio.arch={arch!r}; choose one of {TORCHAUDIO_WAV2VEC2} or give config")
    return TorchaudioWav2Vec2(model, sample_rate, freeze_feature_encoder)


class ConformerEncoder(MelEncoder):
    """``torchaudio.models.Conformer`` layers over log-mel features after conv subsampling."""

    def __init__(self, sample_rate: int, input_kind: str, n_mels: int, dim: int, depth: int, heads: int,
                 ffn_dim: int, kernel_size: int, subsample: int, dropout: float) -> None:
        super().__init__(sample_rate, input_kind, n_mels, dim, subsample)
        torchaudio = require_torchaudio("the conformer encoder")

        self.out_dim = dim
        conformer = torchaudio.models.Conformer(dim, heads, ffn_dim, depth, kernel_size, dropout)
        self.layers = conformer.conformer_layers  # named ``layers.i`` so LLRD / layer freezing see the depth

    def forward(self, batch: Mapping[str, Any]) -> EncoderOutput:
        x, n = self.subsampled(batch)  # (B, D, N'), (B,)
        mask = lengths_to_mask(n.clamp_min(1), x.shape[-1])  # (B, N')
        x = x.permute(2, 0, 1)  # (N', B, D): torchaudio's ConformerLayer is time-first
        for layer in self.layers:
            x = layer(x, ~mask)
        x = x.transpose(0, 1)  # (B, N', D)
        return EncoderOutput(masked_mean(x, mask), x, mask)


@AUDIO_ENCODERS.register("conformer")
def conformer(sample_rate: int = 16000, input_kind: str = "waveform", n_mels: int = 80, dim: int = 144,
              depth: int = 4, heads: int = 4, ffn_dim: int = 576, kernel_size: int = 31, subsample: int = 2,
              dropout: float = 0.1) -> ConformerEncoder:
    """A Conformer (torchaudio) over log-mel features: the usual from-scratch ASR encoder."""
    return ConformerEncoder(sample_rate, input_kind, n_mels, dim, depth, heads, ffn_dim, kernel_size, subsample,
                            dropout)
