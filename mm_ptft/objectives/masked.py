"""Masked modelling objectives: MLM for text, MAE-style masked image modelling, VideoMAE-style masked video
modelling with tube masking, masked spectrogram modelling for audio, and masked text conditioned on another
modality through a fusion module.

Each is a pure function (masking and loss) plus an ``Objective`` module that owns its light
decoder. The encoders are the run's own, so any registered encoder can be pretrained: masked
image patches and masked audio spans are blanked in the *input* (SimMIM-style) rather than
dropped, which works for CNNs as well as transformers; the loss follows MAE (normalised-pixel
targets, masked parts only). Training draws masks from the global RNG (seeded and resumed by the
trainer); evaluation uses a fixed-seed generator so eval losses are comparable across steps.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from mm_ptft.encoders.base import Encoder
from mm_ptft.encoders.fusion import build_fusion
from mm_ptft.objectives import OBJECTIVES, EncodedBatch, RandomObjective, require_encoders, \
    token_sequence
from mm_ptft.types import AUDIO, AUDIO_LENGTHS, IMAGE, TEXT, TEXT_MASK, VIDEO, VIDEO_MASK

IGNORE = -100


# ---- text: MLM -------------------------------------------------------------------------------------

def mask_tokens(ids: torch.Tensor, attention_mask: torch.Tensor, special_ids: Iterable[int], mask_id: int,
                vocab_size: int, prob: float = 0.15, generator: Optional[torch.Generator] = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: choose ``prob`` of the real, non-special tokens; of those 80% become
    ``mask_id``, 10% a random non-special token, 10% stay. Returns (inputs, labels) (B, L) with
    labels = original id at chosen positions and -100 elsewhere."""
    special = torch.tensor(sorted(set(special_ids)), device=ids.device)
    eligible = attention_mask.bool() & ~torch.isin(ids, special)  # (B, L)
    u = torch.rand(ids.shape, device=ids.device, generator=generator)  # (B, L)
    chosen = eligible & (u < prob)  # (B, L)
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE))  # (B, L)
    v = torch.rand(ids.shape, device=ids.device, generator=generator)  # (B, L): which of 80/10/10
    allowed = torch.tensor([i for i in range(vocab_size) if i not in set(special.tolist())], device=ids.device)
    rand_tok = allowed[torch.randint(len(allowed), ids.shape, device=ids.device, generator=generator)]  # (B, L)
    inputs = torch.where(chosen & (v < 0.8), torch.full_like(ids, mask_id), ids)
    inputs = torch.where(chosen & (v >= 0.8) & (v < 0.9), rand_tok, inputs)  # (B, L)
    return inputs, labels


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the chosen positions only. logits (B, L, V), labels (B, L) with -100 elsewhere.
    Zero (with gradient) when nothing was chosen."""
    if not (labels != IGNORE).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE)


class MLMHead(nn.Module):
    """BERT's prediction head: dense + GELU + LayerNorm + vocabulary projection. (B, L, D) → (B, L, V)."""

    def __init__(self, dim: int, vocab_size: int) -> None:
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim))
        self.decoder = nn.Linear(dim, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(x))  # (B, L, V)

    def load_bert_head(self, found: Mapping[str, torch.Tensor], embeddings: Optional[nn.Embedding], eps: float,
                       where: str) -> None:
        """Weights of ``BertForPreTraining``'s ``cls.predictions`` (keys without that prefix); its decoder is tied
        to the word embeddings, so without ``decoder.weight`` in the checkpoint it takes theirs (copied)."""
        decoder_weight = found.get("decoder.weight", getattr(embeddings, "weight", None))
        needed = ["transform.dense.weight", "transform.dense.bias", "transform.LayerNorm.weight",
                  "transform.LayerNorm.bias"]
        missing = [k for k in needed if k not in found] + (["decoder.weight"] if decoder_weight is None else [])
        if missing:
            raise ValueError(f"{where}.init_from_pretrained_head: cls.predictions.{missing[0]} is not in the "
                             f"checkpoint of model.text.name_or_path (a BertForPreTraining/BertForMaskedLM save)")
        state = {"transform.0.weight": found["transform.dense.weight"], "transform.0.bias": found["transform.dense.bias"],
                 "transform.2.weight": found["transform.LayerNorm.weight"],
                 "transform.2.bias": found["transform.LayerNorm.bias"], "decoder.weight": decoder_weight.detach(),
                 "decoder.bias": found.get("bias", found.get("decoder.bias", torch.zeros(decoder_weight.shape[0])))}
        self.load_state_dict(state)
        self.transform[2].eps = eps


_Masked = RandomObjective  # masks: global RNG in training, a fixed-seed generator in eval


class _TextMasking(_Masked):
    """Masks ``batch['text']`` with the text encoder's tokenizer."""

    def __init__(self, tokenizer: Any, prob: float) -> None:
        super().__init__()
        if not 0 < prob <= 1:
            raise ValueError(f"mask_prob must be in (0, 1], got {prob}")
        if tokenizer.mask_token_id is None:
            raise ValueError("the text encoder's tokenizer has no [MASK] token; MLM needs one")
        self.mask_id, self.vocab_size, self.prob = tokenizer.mask_token_id, len(tokenizer), prob
        self.special_ids = sorted(set(tokenizer.all_special_ids))

    def masked_batch(self, batch: Mapping[str, Any]) -> tuple[dict[str, Any], torch.Tensor]:
        ids, att = batch[TEXT], batch[TEXT_MASK]  # (B, L)
        inputs, labels = mask_tokens(ids, att, self.special_ids, self.mask_id, self.vocab_size, self.prob,
                                     self.generator(ids.device))
        return {TEXT: inputs, TEXT_MASK: att}, labels


class MaskedLMObjective(_TextMasking):
    """Masked language modelling on the text encoder's tokens: returns ``mlm_loss``."""

    modalities = ("text",)

    def __init__(self, text_encoder: Encoder, prob: float = 0.15) -> None:
        super().__init__(text_encoder.tokenizer, prob)
        self.head = MLMHead(text_encoder.out_dim, self.vocab_size)

    def forward(self, feats: EncodedBatch, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        inputs, labels = self.masked_batch(batch)
        tokens = feats.encoders["text"](inputs).tokens  # (B, L, D)
        return {"mlm_loss": mlm_loss(self.head(tokens), labels)}


class ConditionedMLMObjective(_TextMasking):
    """Masked text predicted with help from another modality: the fusion of (masked) text and the
    other modality becomes a prefix token that one transformer block mixes into the text tokens.
    Returns ``mlm_<modality>_loss``."""

    def __init__(self, text_encoder: Encoder, cond_encoder: Encoder, fusion: Mapping[str, Any],
                 prob: float = 0.15, heads: int = 4) -> None:
        super().__init__(text_encoder.tokenizer, prob)
        self.cond, dim = cond_encoder.modality, text_encoder.out_dim
        self.modalities = tuple(sorted(("text", self.cond)))
        spec = {"out_dim": dim, **dict(fusion)}
        self.fusion = build_fusion(spec, {"text": dim, self.cond: cond_encoder.out_dim}, "objective.fusion")
        self.ctx_proj = nn.Linear(self.fusion.out_dim, dim)
        self.mix = nn.TransformerEncoderLayer(dim, heads, 4 * dim, 0.1, batch_first=True, norm_first=True)
        self.head = MLMHead(dim, self.vocab_size)

    def forward(self, feats: EncodedBatch, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        inputs, labels = self.masked_batch(batch)
        text = feats.encoders["text"](inputs)  # tokens (B, L, D)
        cond = feats[self.cond]
        ctx = self.fusion({"text": text.tokens, self.cond: cond.tokens if cond.tokens is not None else cond.pooled},
                          {"text": text.mask, self.cond: cond.mask})  # (B, D_f)
        x = torch.cat([self.ctx_proj(ctx).unsqueeze(1), text.tokens], 1)  # (B, 1 + L, D)
        pad = torch.cat([torch.zeros_like(text.mask[:, :1]), ~text.mask.bool()], 1)  # (B, 1 + L)
        x = self.mix(x, src_key_padding_mask=pad)[:, 1:]  # (B, L, D)
        return {f"mlm_{self.cond}_loss": mlm_loss(self.head(x), labels)}


# ---- images: MAE-style ----------------------------------------------------------------------------

def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) → (B, N, patch*patch*C) patches in row-major order (MAE's layout)."""
    b, c, h, w = images.shape
    if h % patch or w % patch:
        raise ValueError(f"image size {h}x{w} is not divisible by patch_size={patch}")
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def random_patch_mask(batch: int, n: int, ratio: float, device: torch.device,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Exactly round(ratio*n) masked patches per image, chosen uniformly: (B, N) bool, True = masked."""
    k = int(round(ratio * n))
    if not 0 < k < n:
        raise ValueError(f"mask_ratio={ratio} masks {k} of {n} patches; need at least one masked and one visible")
    order = torch.rand(batch, n, device=device, generator=generator).argsort(1)  # (B, N)
    return order < k  # the first k positions of a random permutation


def mae_loss(pred: torch.Tensor, images: torch.Tensor, mask: torch.Tensor, patch: int,
             norm_pix: bool = True) -> torch.Tensor:
    """MSE between predicted and true patches on masked patches only; with ``norm_pix`` each target
    patch is normalised by its own mean and variance (MAE's best setting).
    pred (B, N, p*p*C), images (B, C, H, W), mask (B, N) True = masked."""
    target = patchify(images, patch).float()  # (B, N, P)
    if norm_pix:
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = ((pred.float() - target) ** 2).mean(-1)  # (B, N)
    m = mask.to(per_patch.dtype)
    return (per_patch * m).sum() / m.sum().clamp_min(1.0)


class QueryDecoder(nn.Module):
    """Light decoder: one learned query per output position (position embedding + mask token)
    cross-attends to the encoder tokens, then a linear layer predicts the position's values."""

    def __init__(self, enc_dim: int, positions: int, out_dim: int, dim: int, depth: int, heads: int) -> None:
        super().__init__()
        self.inp = nn.Linear(enc_dim, dim)
        self.pos = nn.Parameter(torch.randn(1, positions, dim) * 0.02)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        block = nn.TransformerDecoderLayer(dim, heads, 4 * dim, 0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerDecoder(block, depth)
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, out_dim))

    def forward(self, tokens: torch.Tensor, token_mask: Optional[torch.Tensor], n: int) -> torch.Tensor:
        """tokens (B, M, D_enc), token_mask (B, M) True = real → predictions (B, n, out_dim)."""
        if n > self.pos.shape[1]:
            raise ValueError(f"{n} positions to decode but the decoder has {self.pos.shape[1]}; raise max_positions")
        q = (self.pos[:, :n] + self.mask_token).expand(tokens.shape[0], -1, -1)  # (B, n, d)
        pad = None if token_mask is None else ~token_mask.bool()
        return self.out(self.blocks(q, self.inp(tokens), memory_key_padding_mask=pad))  # (B, n, out)


class MaskedImageObjective(_Masked):
    """MAE-style masked image modelling: blank ``mask_ratio`` of the patches, encode, decode every
    patch with a light decoder, normalised-pixel MSE on the masked ones. Returns ``mae_loss``."""

    modalities = ("image",)

    def __init__(self, image_encoder: Encoder, image_size: int, patch_size: int = 8, mask_ratio: float = 0.6,
                 decoder_dim: int = 64, decoder_depth: int = 1, heads: int = 4, norm_pix: bool = True) -> None:
        super().__init__()
        self.patch, self.ratio, self.norm_pix = patch_size, mask_ratio, norm_pix
        n = (image_size // patch_size) ** 2
        enc_dim = getattr(image_encoder, "token_dim", 0) or image_encoder.out_dim
        self.decoder = QueryDecoder(enc_dim, n, patch_size * patch_size * 3, decoder_dim, decoder_depth, heads)

    def forward(self, feats: EncodedBatch, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        images = batch[IMAGE]  # (B, C, H, W)
        b, c, h, w = images.shape
        gh, gw = h // self.patch, w // self.patch
        mask = random_patch_mask(b, gh * gw, self.ratio, images.device, self.generator(images.device))  # (B, N)
        pix = mask.reshape(b, 1, gh, 1, gw, 1).expand(b, 1, gh, self.patch, gw, self.patch).reshape(b, 1, h, w)
        blanked = images.masked_fill(pix, 0.0)  # 0 = the dataset mean after normalisation
        tokens, tmask = token_sequence(feats.encoders["image"]({IMAGE: blanked}))
        pred = self.decoder(tokens, tmask, gh * gw)  # (B, N, p*p*C)
        return {"mae_loss": mae_loss(pred, images, mask, self.patch, self.norm_pix)}


# ---- video: VideoMAE-style tube masking --------------------------------------------------------------

def patchify_video(video: torch.Tensor, patch: int, tubelet: int) -> torch.Tensor:
    """(B, T, C, H, W) → (B, T/ts * H/p * W/p, ts*p*p*C) tubes (``tubelet`` frames x ``patch`` x ``patch``) in
    VideoMAE's layout: tubes time-major then row-major, each tube's values ordered (frame, row, column, channel)."""
    b, t, c, h, w = video.shape
    if t % tubelet or h % patch or w % patch:
        raise ValueError(f"clip {t}x{h}x{w} (frames x height x width) is not divisible by tubelet_size={tubelet} "
                         f"x patch_size={patch}")
    x = video.reshape(b, t // tubelet, tubelet, c, h // patch, patch, w // patch, patch)
    x = x.permute(0, 1, 4, 6, 2, 5, 7, 3)  # (B, T', H', W', ts, p, p, C)
    return x.reshape(b, (t // tubelet) * (h // patch) * (w // patch), tubelet * patch * patch * c)


def tube_mask(batch: int, tubes: int, n: int, ratio: float, device: torch.device,
              generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """VideoMAE's tube masking: round(ratio*n) of the ``n`` spatial patches drawn per clip, the same ones masked in
    each of the ``tubes`` time steps: (B, tubes*n) bool in ``patchify_video``'s order, True = masked."""
    spatial = random_patch_mask(batch, n, ratio, device, generator)  # (B, N)
    return spatial.unsqueeze(1).expand(batch, tubes, n).reshape(batch, tubes * n)  # (B, T'*N)


def tube_targets(video: torch.Tensor, patch: int, tubelet: int, norm_pix: bool = True) -> torch.Tensor:
    """The tubes (B, M, ts*p*p*C) of ``video`` (B, T, C, H, W) a VideoMAE decoder predicts; with ``norm_pix`` each
    tube's pixels normalised per channel by their own mean and (unbiased) std, as ``VideoMAEForPreTraining`` does."""
    target = patchify_video(video.float(), patch, tubelet)  # (B, M, ts*p*p*C)
    if not norm_pix:
        return target
    c = video.shape[2]
    x = target.reshape(*target.shape[:2], -1, c)  # (B, M, ts*p*p, C)
    x = (x - x.mean(-2, keepdim=True)) / (x.var(-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
    return x.reshape(target.shape)


def videomae_loss(pred: torch.Tensor, video: torch.Tensor, mask: torch.Tensor, patch: int, tubelet: int,
                  norm_pix: bool = True) -> torch.Tensor:
    """MSE between predicted and true tubes (``tube_targets``) on the masked ones only; ``norm_pix`` also makes the
    target independent of any per-channel input normalisation.
    pred (B, M, ts*p*p*C), video (B, T, C, H, W), mask (B, M) True = masked."""
    target = tube_targets(video, patch, tubelet, norm_pix)  # (B, M, ts*p*p*C)
    per_tube = ((pred.float() - target) ** 2).mean(-1)  # (B, M)
    m = mask.to(per_tube.dtype)
    return (per_tube * m).sum() / m.sum().clamp_min(1.0)


class MaskedVideoObjective(_Masked):
    """VideoMAE-style masked video modelling: blank the same ``mask_ratio`` of the spatial patches in every frame
    (tubes, so a masked patch cannot be copied from a neighbouring frame), encode, decode every tube with a light
    decoder, normalised-pixel MSE on the masked tubes of real frames. Returns ``mvm_loss``."""

    modalities = ("video",)

    def __init__(self, video_encoder: Encoder, image_size: int, max_frames: int, patch_size: int = 8,
                 tubelet_size: int = 2, mask_ratio: float = 0.75, decoder_dim: int = 64, decoder_depth: int = 1,
                 heads: int = 4, norm_pix: bool = True) -> None:
        super().__init__()
        self.patch, self.tubelet, self.ratio, self.norm_pix = patch_size, tubelet_size, mask_ratio, norm_pix
        n = (max_frames // tubelet_size) * (image_size // patch_size) ** 2
        enc_dim = getattr(video_encoder, "token_dim", 0) or video_encoder.out_dim
        self.decoder = QueryDecoder(enc_dim, n, tubelet_size * patch_size * patch_size * 3, decoder_dim,
                                    decoder_depth, heads)

    def masks(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(tube mask (B, T'*N), the same as pixels (B, T, 1, H, W)) for a clip (B, T, C, H, W)."""
        b, t, _, h, w = video.shape
        gt, gh, gw, p = t // self.tubelet, h // self.patch, w // self.patch, self.patch
        mask = tube_mask(b, gt, gh * gw, self.ratio, video.device, self.generator(video.device))  # (B, T'*N)
        spatial = mask[:, : gh * gw].reshape(b, 1, 1, gh, 1, gw, 1)
        pix = spatial.expand(b, t, 1, gh, p, gw, p).reshape(b, t, 1, h, w)  # (B, T, 1, H, W)
        return mask, pix

    def forward(self, feats: EncodedBatch, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        video = batch[VIDEO]  # (B, T, C, H, W)
        frames = frame_mask(batch)  # (B, T)
        mask, pix = self.masks(video)
        enc_in = {VIDEO: video.masked_fill(pix, 0.0), VIDEO_MASK: frames}  # 0 = the mean after normalisation
        tokens, tmask = token_sequence(feats.encoders["video"](enc_in))
        pred = self.decoder(tokens, tmask, mask.shape[1])  # (B, M, ts*p*p*C)
        real = real_tubes(frames, self.tubelet, mask.shape[1])  # (B, M)
        return {"mvm_loss": videomae_loss(pred, video, mask & real, self.patch, self.tubelet, self.norm_pix)}


def frame_mask(batch: Mapping[str, Any]) -> torch.Tensor:
    """``video_mask`` (B, T) bool, all True when the batch has none."""
    video, frames = batch[VIDEO], batch.get(VIDEO_MASK)
    return torch.ones(video.shape[:2], dtype=torch.bool, device=video.device) if frames is None else frames.bool()


def real_tubes(frames: torch.Tensor, tubelet: int, m: int) -> torch.Tensor:
    """(B, M) True for the tubes (``patchify_video``'s order) whose ``tubelet`` frames are all real."""
    b, t = frames.shape
    real = frames.reshape(b, t // tubelet, tubelet).all(-1)  # (B, T')
    return real.repeat_interleave(m // real.shape[1], 1)  # (B, M)


class VideoMAEPretrainingHead(nn.Module):
    """``transformers.VideoMAEForPreTraining`` without its encoder: ``encoder_to_decoder``, ``mask_token``, the fixed
    sinusoid position table and ``decoder``, built (and initialised) by transformers itself."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        from transformers import VideoMAEForPreTraining

        full = VideoMAEForPreTraining(config)
        self.encoder_to_decoder, self.mask_token, self.decoder = full.encoder_to_decoder, full.mask_token, full.decoder
        self.register_buffer("position_embeddings", full.position_embeddings.detach().clone(), persistent=False)

    def forward(self, visible: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """visible (B, V, D) encoder tokens of the unmasked tubes, mask (B, M) → (B, K, ts*p*p*C) predictions of
        the K masked tubes in order (VideoMAE shuffles the position embeddings, not the tokens)."""
        x = self.encoder_to_decoder(visible)  # (B, V, d)
        b, _, d = x.shape
        pos = self.position_embeddings.expand(b, -1, -1).to(x)  # (B, M, d)
        pos_masked = pos[mask].reshape(b, -1, d)  # (B, K, d)
        x = torch.cat([x + pos[~mask].reshape(b, -1, d), self.mask_token + pos_masked], 1)  # (B, M, d)
        return self.decoder(x, pos_masked.shape[1]).logits  # (B, K, ts*p*p*C)


class VideoMAEObjective(_Masked):
    """Masked video modelling as ``transformers.VideoMAEForPreTraining`` computes it, on the run's VideoMAE encoder:
    the encoder sees only the visible tubes (``bool_masked_pos``: masked tokens dropped, not blanked), the
    pretraining model's own decoder predicts the masked ones, and the loss is the MSE to their (``norm_pix_loss``:
    per-tube normalised) pixels of the clip with the encoder's normalisation undone; tubes of padded frames are
    left out (with none, the loss equals transformers'). Returns ``mvm_loss``."""

    modalities = ("video",)

    def __init__(self, video_encoder: Encoder, mask_ratio: float = 0.9) -> None:
        super().__init__()
        cfg = video_encoder.model.config  # type: ignore[attr-defined]
        self.patch, self.tubelet, self.norm_pix = int(cfg.patch_size), int(cfg.tubelet_size), bool(cfg.norm_pix_loss)
        self.ratio, self.head = mask_ratio, VideoMAEPretrainingHead(cfg)
        pre = video_encoder.preprocess  # type: ignore[attr-defined]
        rgb = int(cfg.num_channels) == 3  # transformers undoes only an RGB normalisation
        self.register_buffer("mean", torch.tensor(list(pre.mean) if rgb else [0.0]).view(1, 1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(pre.std) if rgb else [1.0]).view(1, 1, -1, 1, 1), persistent=False)

    def forward(self, feats: EncodedBatch, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        video = batch[VIDEO]  # (B, T, C, H, W)
        b, t, _, h, w = video.shape
        n = (h // self.patch) * (w // self.patch)
        mask = tube_mask(b, t // self.tubelet, n, self.ratio, video.device, self.generator(video.device))  # (B, M)
        return {"mvm_loss": self.loss(feats.encoders["video"], video, frame_mask(batch), mask)}

    def loss(self, encoder: Encoder, video: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The loss for clips ``video`` (B, T, C, H, W), real ``frames`` (B, T) and tube ``mask`` (B, M) True = masked
        (the same count in every clip)."""
        b = video.shape[0]
        pred = self.head(encoder.encode_visible(video, mask), mask)  # type: ignore[attr-defined]  # (B, K, F)
        with torch.no_grad():
            target = tube_targets(video.float() * self.std + self.mean, self.patch, self.tubelet, self.norm_pix)
            labels = target[mask].reshape(b, -1, target.shape[-1])  # (B, K, F)
            real = real_tubes(frames, self.tubelet, mask.shape[1])[mask].reshape(b, -1).float()  # (B, K)
        per_tube = ((pred.float() - labels) ** 2).mean(-1)  # (B, K)
        return (per_tube * real).sum() / real.sum().clamp_min(1.0)


# ---- audio: masked spectrogram modelling ------------------------------------------------------------

def span_mask(lengths: torch.Tensor, n: int, ratio: float, span: int,
              generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Time-span masking (wav2vec 2.0 / BEATs style): per row, ceil(ratio*len/span) spans of
    ``span`` frames at random starts inside the real frames. lengths (B,) → (B, n) bool, True = masked."""
    b = lengths.shape[0]
    starts_max = (lengths - span).clamp_min(1).float()  # (B,)
    k = max(1, math.ceil(ratio * n / span))
    starts = (torch.rand(b, k, device=lengths.device, generator=generator) * starts_max[:, None]).long()  # (B, k)
    pos = torch.arange(n, device=lengths.device)  # (n,)
    inside = (pos[None, None] >= starts[..., None]) & (pos[None, None] < starts[..., None] + span)  # (B, k, n)
    real = pos[None] < lengths[:, None]  # (B, n)
    keep_k = torch.arange(k, device=lengths.device)[None] < torch.ceil(ratio * lengths / span)[:, None]  # (B, k)
    return (inside & keep_k[..., None]).any(1) & real  # (B, n)


def masked_frames_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE over masked frames only. pred, target (B, N, F); mask (B, N) True = masked."""
    per_frame = ((pred.float() - target.float()) ** 2).mean(-1)  # (B, N)
    m = mask.to(per_frame.dtype)
    return (per_frame * m).sum() / m.sum().clamp_min(1.0)


class MaskedSpectrogramObjective(_Masked):
    """Masked spectrogram modelling: blank time spans of the input (waveform samples or log-mel
    frames), encode, reconstruct the normalised log-mel of the masked frames. Returns ``msm_loss``."""

    modalities = ("audio",)

    def __init__(self, audio_encoder: Encoder, mask_ratio: float = 0.4, span: int = 5, n_mels: int = 0,
                 decoder_dim: int = 64, decoder_depth: int = 1, heads: int = 4, max_frames: int = 3000) -> None:
        super().__init__()
        from mm_ptft.features.audio import LogMel

        self.ratio, self.span = mask_ratio, span
        self.kind = getattr(audio_encoder, "input_kind", "waveform")
        self.n_mels = n_mels or getattr(audio_encoder, "n_mels", 0) or 40
        self.logmel = LogMel(audio_encoder.sample_rate, self.n_mels) if self.kind == "waveform" else None
        enc_dim = getattr(audio_encoder, "token_dim", 0) or audio_encoder.out_dim
        self.decoder = QueryDecoder(enc_dim, max_frames, self.n_mels, decoder_dim, decoder_depth, heads)

    def target(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised log-mel (B, N, F) and frame lengths (B,)."""
        from mm_ptft.features.audio import batch_lengths, masked_normalize

        x = batch[AUDIO]
        lengths = batch_lengths(batch, x)
        if self.logmel is None:
            return x.transpose(1, 2), lengths  # features: (B, F, N) → (B, N, F)
        n = self.logmel.out_lengths(lengths)
        return masked_normalize(self.logmel(x), n).transpose(1, 2), n  # (B, N, F)

    def forward(self, feats: EncodedBatch, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        x = batch[AUDIO]
        target, frames = self.target(batch)  # (B, N, F), (B,)
        mask = span_mask(frames, target.shape[1], self.ratio, self.span, self.generator(x.device))  # (B, N)
        if self.logmel is None:
            blanked = x.masked_fill(mask.unsqueeze(1), 0.0)  # (B, F, N)
        else:  # frame i is centred on sample i*hop: blank the hop samples around it
            hop = self.logmel.hop
            samples = mask.repeat_interleave(hop, 1)[:, hop // 2: hop // 2 + x.shape[1]]  # (B, ~T)
            samples = F.pad(samples, (0, x.shape[1] - samples.shape[1]))  # (B, T)
            blanked = x.masked_fill(samples, 0.0)  # (B, T)
        enc_batch = {AUDIO: blanked}
        if AUDIO_LENGTHS in batch:
            enc_batch[AUDIO_LENGTHS] = batch[AUDIO_LENGTHS]
        tokens, tmask = token_sequence(feats.encoders["audio"](enc_batch))
        pred = self.decoder(tokens, tmask, target.shape[1])  # (B, N, F)
        return {"msm_loss": masked_frames_loss(pred, target, mask)}


# ---- registry ---------------------------------------------------------------------------------------

@OBJECTIVES.register()
def mlm(encoders: Mapping[str, Encoder], mask_prob: float = 0.15, init_from_pretrained_head: bool = False,
        where: str = "model.objectives.mlm") -> MaskedLMObjective:
    """BERT-style masked language modelling on the text encoder; ``init_from_pretrained_head`` loads the
    ``cls.predictions`` head saved with the encoder's checkpoint (``BertForPreTraining``)."""
    from mm_ptft.objectives.hf_heads import pretrained_head_weights

    require_encoders(encoders, ["text"], where)
    obj = MaskedLMObjective(encoders["text"], mask_prob)
    if init_from_pretrained_head:
        text = encoders["text"]
        eps = float(getattr(getattr(getattr(text, "model", None), "config", None), "layer_norm_eps", 1e-12))
        obj.head.load_bert_head(pretrained_head_weights(text, "cls.predictions.", where),
                                text.input_embeddings(), eps, where)  # type: ignore[attr-defined]
    return obj


@OBJECTIVES.register()
def conditioned_mlm(encoders: Mapping[str, Encoder], modality: str = "image", mask_prob: float = 0.15,
                    fusion: Optional[dict[str, Any]] = None, heads: int = 4) -> ConditionedMLMObjective:
    """Masked text predicted from text + ``modality`` fused by ``fusion`` (default cross-attention)."""
    require_encoders(encoders, ["text", modality], "objective conditioned_mlm")
    spec = dict(fusion or {"name": "cross_attention"})
    return ConditionedMLMObjective(encoders["text"], encoders[modality], spec, mask_prob, heads)


@OBJECTIVES.register()
def mae(encoders: Mapping[str, Encoder], image_size: int = 0, patch_size: int = 8, mask_ratio: float = 0.6,
        decoder_dim: int = 64, decoder_depth: int = 1, norm_pix: bool = True) -> MaskedImageObjective:
    """MAE-style masked image modelling (image_size defaults to the image encoder's input size)."""
    require_encoders(encoders, ["image"], "objective mae")
    enc = encoders["image"]
    size = image_size or enc.preprocess.size[0]  # type: ignore[attr-defined]
    return MaskedImageObjective(enc, size, patch_size, mask_ratio, decoder_dim, decoder_depth, 4, norm_pix)


@OBJECTIVES.register()
def masked_video(encoders: Mapping[str, Encoder], image_size: int = 0, max_frames: int = 16, patch_size: int = 8,
                 tubelet_size: int = 2, mask_ratio: float = 0.75, decoder_dim: int = 64, decoder_depth: int = 1,
                 norm_pix: bool = True, decoder: str = "query",
                 init_from_pretrained_head: bool = False) -> MaskedVideoObjective | VideoMAEObjective:
    """VideoMAE-style masked video modelling with tube masking (``mask_ratio`` of the spatial patches, the same in
    every frame); image_size defaults to the video encoder's frame size, ``max_frames`` bounds the clip length.
    ``decoder: query`` (any encoder: masked tubes blanked in the input, a light query decoder) or ``decoder: hf``
    (a transformers VideoMAE encoder: ``VideoMAEForPreTraining``'s own decoder and loss, masked tubes dropped; patch,
    tubelet, decoder sizes and ``norm_pix_loss`` from its config; ``init_from_pretrained_head`` reads the decoder
    from the encoder's checkpoint directory, a ``VideoMAEForPreTraining`` save)."""
    where = "model.objective (masked_video)"
    require_encoders(encoders, ["video"], "objective masked_video")
    enc = encoders["video"]
    if decoder not in ("query", "hf"):
        raise ValueError(f"{where}: decoder={decoder!r}: choose query or hf")
    if decoder == "hf":
        return _videomae_objective(enc, mask_ratio, init_from_pretrained_head, where)
    if init_from_pretrained_head:
        raise ValueError(f"{where}: init_from_pretrained_head needs decoder=hf (a VideoMAEForPreTraining checkpoint)")
    size = image_size or enc.preprocess.size[0]  # type: ignore[attr-defined]
    return MaskedVideoObjective(enc, size, max_frames, patch_size, tubelet_size, mask_ratio, decoder_dim,
                                decoder_depth, 4, norm_pix)


def _videomae_objective(enc: Encoder, mask_ratio: float, from_head: bool, where: str) -> VideoMAEObjective:
    model_type = getattr(getattr(getattr(enc, "model", None), "config", None), "model_type", None)
    if model_type != "videomae":
        raise ValueError(f"{where}: decoder=hf is VideoMAEForPreTraining's decoder and needs model.video to be a "
                         f"transformers VideoMAE (name: hf), not {model_type or type(enc).__name__}; or decoder=query")
    obj = VideoMAEObjective(enc, mask_ratio)
    if from_head:
        obj.head.load_state_dict(_videomae_decoder(getattr(enc, "spec", {}).get("name_or_path"), where))
    return obj


def _videomae_decoder(path: Optional[str], where: str) -> dict[str, torch.Tensor]:
    """The decoder weights of the ``VideoMAEForPreTraining`` saved at ``path``, loaded by transformers itself (it
    renames checkpoint keys such as ``q_bias``), or a ValueError naming the option."""
    from transformers import VideoMAEForPreTraining

    where = f"{where}.init_from_pretrained_head"
    if not path:
        raise ValueError(f"{where}: model.video was not loaded from a VideoMAEForPreTraining checkpoint (name_or_path)")
    full, info = VideoMAEForPreTraining.from_pretrained(path, output_loading_info=True)
    missing = [k for k in info["missing_keys"] if not k.startswith("videomae.")]
    if missing:
        raise ValueError(f"{where}: {path} holds no VideoMAEForPreTraining decoder (missing {sorted(missing)[:3]})")
    return {k: v for k, v in full.state_dict().items() if not k.startswith("videomae.")}


@OBJECTIVES.register()
def masked_spectrogram(encoders: Mapping[str, Encoder], mask_ratio: float = 0.4, span: int = 5, n_mels: int = 0,
                       decoder_dim: int = 64, decoder_depth: int = 1,
                       max_frames: int = 3000) -> MaskedSpectrogramObjective:
    """Masked spectrogram modelling with time-span masking on the audio encoder."""
    require_encoders(encoders, ["audio"], "objective masked_spectrogram")
    return MaskedSpectrogramObjective(encoders["audio"], mask_ratio, span, n_mels, decoder_dim, decoder_depth, 4,
                                      max_frames)
