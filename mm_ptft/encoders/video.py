"""Video encoders (``model.video``): any transformers video model (VideoMAE, TimeSformer, ViViT, …) by hub id,
directory or random-init config, and any image encoder of ``IMAGE_ENCODERS`` applied to each frame with a
temporal pooling (``mean``, ``attention``, or a small temporal ``transformer``), and a small built-in 3D CNN
(``tiny_3d``) that sees motion in its first layer, for tests and CPU recipes.

Every video encoder reads ``batch["video"]`` (B, T, C, H, W) and ``batch["video_mask"]`` (B, T; True where a
frame is real, padded frames False) and returns ``EncoderOutput(pooled (B, D), tokens, mask)``. It carries the
``preprocess`` (size, mean, std) each frame must get, as image encoders do, and ``num_frames``: the clip length
the architecture needs (None: any)."""
from __future__ import annotations

import glob
import os
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn

from mm_ptft.encoders.base import WEIGHT_SOURCE_KEYS, Encoder, HFBacked, build_encoder, hf_pretrained_rates, masked_mean, remote_code, \
    set_hf_rates
from mm_ptft.encoders.image import IMAGE_ENCODERS, Preprocess, _hf_preprocess
from mm_ptft.registry import Registry
from mm_ptft.types import VIDEO, VIDEO_MASK, EncoderOutput

VIDEO_ENCODERS: Registry["VideoEncoder"] = Registry("video_encoder", record_spec=True)
TEMPORAL_POOLING = ("mean", "attention", "transformer")


class VideoEncoder(Encoder):
    """Base of all video encoders: ``encode(video, mask)``."""

    modality = "video"
    preprocess: Preprocess
    num_frames: Optional[int] = None  # clip length the architecture needs; None: any

    def forward(self, batch: Mapping[str, Any]) -> EncoderOutput:
        return self.encode(batch[VIDEO], batch.get(VIDEO_MASK))

    def encode(self, video: torch.Tensor, mask: Optional[torch.Tensor] = None) -> EncoderOutput:  # pragma: no cover
        raise NotImplementedError

    def export_preprocessing(self, out: Any) -> dict[str, Any]:
        return {**self.preprocess.to_dict(), "layout": "NTCHW float32 RGB", "num_frames": self.num_frames,
                "steps": "sample num_frames frames, then per frame: resize to size / crop_pct, centre crop to size, "
                         "scale to [0, 1], subtract mean, divide by std; video_mask (N, T) True for real frames"}


# -------------------------------------------------------------------------------- per-frame image encoder
class TemporalTransformer(nn.Module):
    """A few pre-norm transformer layers over frame embeddings with learned time embeddings (order matters)."""

    def __init__(self, dim: int, depth: int, heads: int, max_frames: int) -> None:
        super().__init__()
        self.time = nn.Parameter(torch.zeros(1, max_frames, dim))
        nn.init.trunc_normal_(self.time, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if frames.shape[1] > self.time.shape[1]:
            raise ValueError(f"clip of {frames.shape[1]} frames: the temporal transformer holds at most "
                             f"{self.time.shape[1]} (model.video.max_frames)")
        x = frames + self.time[:, : frames.shape[1]]  # (B, T, D)
        return self.norm(self.layers(x, src_key_padding_mask=~mask))  # (B, T, D)


class FrameEncoder(VideoEncoder):
    """An image encoder on every frame, (B*T, C, H, W) → (B, T, D) frame tokens, pooled over time."""

    def __init__(self, image: Encoder, pooling: str, depth: int, heads: int, max_frames: int) -> None:
        super().__init__()
        if pooling not in TEMPORAL_POOLING:
            raise ValueError(f"model.video.pooling={pooling!r}: choose one of {', '.join(TEMPORAL_POOLING)}")
        self.image, self.pooling = image, pooling
        self.preprocess, self.out_dim = image.preprocess, int(image.out_dim)
        self.score = nn.Linear(self.out_dim, 1) if pooling == "attention" else None
        self.temporal = TemporalTransformer(self.out_dim, depth, heads, max_frames) if pooling == "transformer" else None

    def encode(self, video: torch.Tensor, mask: Optional[torch.Tensor] = None) -> EncoderOutput:
        b, t = video.shape[:2]
        mask = torch.ones(b, t, dtype=torch.bool, device=video.device) if mask is None else mask.bool()  # (B, T)
        frames = self.image.encode(video.flatten(0, 1)).pooled.view(b, t, -1)  # (B, T, D)
        if self.temporal is not None:
            frames = self.temporal(frames, mask)  # (B, T, D)
        if self.score is not None:
            logits = self.score(frames).squeeze(-1).masked_fill(~mask, float("-inf"))  # (B, T)
            pooled = (logits.softmax(-1).unsqueeze(-1) * frames).sum(1)  # (B, D)
        else:
            pooled = masked_mean(frames, mask)  # (B, D)
        return EncoderOutput(pooled, frames, mask)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.image.set_grad_checkpointing(enabled)

    def lora_targets(self) -> list[str]:
        return self.image.lora_targets()

    def save_pretrained(self, path: Any) -> None:
        """The encoder directory, its frame encoder's weight-source options off (the weights are in it now)."""
        image = {k: WEIGHT_SOURCE_KEYS.get(k, v) for k, v in dict(self.spec.get("image") or {}).items()}
        self.spec = {**self.spec, "image": image}
        super().save_pretrained(path)


@VIDEO_ENCODERS.register("frames")
def frames(image: Optional[dict[str, Any]] = None, pooling: str = "transformer", depth: int = 1, heads: int = 4,
           max_frames: int = 64) -> FrameEncoder:
    """Any ``model.image`` spec (``{name: timm, name_or_path: resnet18}``, ``tiny_cnn``, an encoder directory…)
    applied per frame; ``pooling`` over time: ``mean`` (order-blind), ``attention`` (learned weights,
    order-blind) or ``transformer`` (``depth`` layers with time embeddings up to ``max_frames``: order matters)."""
    spec = dict(image or {"name": "tiny_cnn"})
    return FrameEncoder(build_encoder(IMAGE_ENCODERS, spec, "model.video.image"), pooling, depth, heads, max_frames)


# ------------------------------------------------------------------------------------------ built-in
def conv3d_bn(c_in: int, c_out: int, stride: tuple[int, int, int]) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm3d(c_out), nn.ReLU(inplace=True))


class Tiny3DCNN(VideoEncoder):
    """A small 3D CNN (3x3x3 kernels; strides halve space, never time): one token per (frame, cell), pooled over
    the real frames. Its kernels span neighbouring frames, so motion is visible from the first layer."""

    def __init__(self, widths: Sequence[int], img_size: int) -> None:
        super().__init__()
        self.preprocess = Preprocess.make(img_size)
        chans = [3, *widths]
        self.stages = nn.Sequential(*(conv3d_bn(a, b, (1, 2, 2)) for a, b in zip(chans[:-1], chans[1:])))
        self.out_dim = self.token_dim = int(widths[-1])

    def encode(self, video: torch.Tensor, mask: Optional[torch.Tensor] = None) -> EncoderOutput:
        b, t = video.shape[:2]
        mask = torch.ones(b, t, dtype=torch.bool, device=video.device) if mask is None else mask.bool()  # (B, T)
        x = video.masked_fill(~mask[:, :, None, None, None], 0.0)  # (B, T, C, H, W): padded frames blank
        x = self.stages(x.transpose(1, 2))  # (B, D, T, h, w)
        cells = x.shape[3] * x.shape[4]
        tokens = x.flatten(3).permute(0, 2, 3, 1).flatten(1, 2)  # (B, T*h*w, D), frame-major
        token_mask = mask.repeat_interleave(cells, 1)  # (B, T*h*w)
        return EncoderOutput(masked_mean(tokens, token_mask), tokens, token_mask)


@VIDEO_ENCODERS.register("tiny_3d")
def tiny_3d(widths: Sequence[int] = (16, 32, 64), img_size: int = 32) -> Tiny3DCNN:
    """Built-in 3D CNN, stage i at spatial stride 2^(i+1) and temporal stride 1 (any clip length)."""
    return Tiny3DCNN(list(widths), img_size)


# ------------------------------------------------------------------------------------- Hugging Face
class HFVideoEncoder(HFBacked, VideoEncoder):
    """A transformers video ``AutoModel`` (VideoMAE, TimeSformer, ViViT): ``pixel_values`` (B, T, C, H, W). It pools
    as the architecture's ``*ForVideoClassification`` does: VideoMAE (no [CLS] token; ``use_mean_pooling``) the
    mean of its tokens through ``fc_norm``, a LayerNorm it keeps here (loaded from a video classification
    checkpoint's ``fc_norm.*`` where the directory has one), the others their [CLS] token."""

    hf_heads = {"classification": "AutoModelForVideoClassification"}
    hf_pooling_hint = "transformers' video classifiers pool as their architecture does: model.video.pooling=auto"
    FC_NORM = "fc_norm.safetensors"  # written beside the transformers files by save_hf

    def __init__(self, model: nn.Module, preprocess: Preprocess, processor: Any = None, pooling: str = "auto") -> None:
        super().__init__()
        if pooling not in ("auto", "cls", "mean"):
            raise ValueError(f"model.video.pooling must be auto|cls|mean, got {pooling!r}")
        cfg = model.config
        mean_norm = cfg.model_type == "videomae" and getattr(cfg, "use_mean_pooling", True)
        self.auto_pooling = "mean" if mean_norm else "cls"
        self.model, self.preprocess, self.processor = model, preprocess, processor
        self.pooling = self.auto_pooling if pooling == "auto" else pooling
        self.out_dim = int(cfg.hidden_size)
        self.fc_norm = nn.LayerNorm(self.out_dim, eps=cfg.layer_norm_eps) if mean_norm and self.pooling == "mean" else None
        self.num_frames = int(cfg.num_frames) if getattr(cfg, "num_frames", None) else None

    def hf_pooling_problem(self, kind: str) -> Optional[str]:
        if self.pooling != self.auto_pooling:
            return (f"{type(self.model).__name__}: this run pools by {self.pooling}, its video classifier by "
                    f"{self.auto_pooling}: {self.hf_pooling_hint}; or export --format mm_ptft")
        return None

    def hf_head_parts(self) -> dict[str, nn.Module]:
        return {"fc_norm": self.fc_norm} if self.fc_norm is not None else {}

    def save_hf(self, path: Any) -> None:
        from safetensors.torch import save_file

        super().save_hf(path)
        if self.fc_norm is not None:
            save_file({f"fc_norm.{k}": v.contiguous() for k, v in self.fc_norm.state_dict().items()},
                      os.path.join(str(path), self.FC_NORM))

    def hf_save_processing(self, path: Any, max_length: Optional[int] = None) -> None:
        """The model's own processor; without one (random init) a ``VideoMAEImageProcessor`` doing what the run's
        evaluation transform does per frame (resize to size / crop_pct, centre crop, rescale, normalise). An image
        processor, not a video one: with it ``pipeline("video-classification")`` decodes with PyAV, where a video
        processor needs torchcodec."""
        if self.processor is not None:
            self.processor.save_pretrained(str(path))
            return
        from transformers import VideoMAEImageProcessor

        from mm_ptft.encoders.image import eval_processor_kwargs

        VideoMAEImageProcessor(**eval_processor_kwargs(self.preprocess)).save_pretrained(str(path))

    def load_fc_norm(self, name_or_path: str) -> None:
        """``fc_norm.*`` from the directory's safetensors files (a ``*ForVideoClassification`` save or ours)."""
        from safetensors import safe_open

        if self.fc_norm is None or not os.path.isdir(name_or_path):
            return
        found = {}
        for file in sorted(glob.glob(os.path.join(name_or_path, "*.safetensors"))):
            with safe_open(file, "pt") as st:
                found.update({k[len("fc_norm."):]: st.get_tensor(k) for k in st.keys() if k.startswith("fc_norm.")})
        if found:
            self.fc_norm.load_state_dict(found)

    def hf_model_inputs(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        return {"pixel_values": batch[VIDEO]}

    def encode_visible(self, video: torch.Tensor, bool_masked_pos: torch.Tensor) -> torch.Tensor:
        """Tokens (B, V, D) of the tubes ``bool_masked_pos`` (B, N) leaves visible: VideoMAE drops the masked ones
        (as ``VideoMAEForPreTraining`` feeds its encoder); other architectures have no such input."""
        if self.model.config.model_type != "videomae":
            raise NotImplementedError(f"{type(self.model).__name__} takes no bool_masked_pos (VideoMAE does)")
        return self.model(pixel_values=video, bool_masked_pos=bool_masked_pos).last_hidden_state  # (B, V, D)

    def encode(self, video: torch.Tensor, mask: Optional[torch.Tensor] = None) -> EncoderOutput:
        tokens = self.model(pixel_values=video).last_hidden_state  # (B, N, D)
        pooled = tokens.mean(1) if self.pooling == "mean" else tokens[:, 0]  # (B, D)
        if self.fc_norm is not None:
            pooled = self.fc_norm(pooled)  # (B, D)
        return EncoderOutput(pooled, tokens)


def _video_processor(name_or_path: str, trust: bool) -> Any:
    """The model's saved video (or image) processor, or None (a bare model directory)."""
    from transformers import AutoImageProcessor

    try:
        from transformers import AutoVideoProcessor

        return AutoVideoProcessor.from_pretrained(name_or_path, trust_remote_code=trust)
    except (ImportError, OSError, ValueError, KeyError, TypeError):
        pass
    try:
        return AutoImageProcessor.from_pretrained(name_or_path, trust_remote_code=trust)
    except (OSError, ValueError, KeyError):
        return None


@VIDEO_ENCODERS.register("hf")
def hf(name_or_path: Optional[str] = None, config: Optional[dict[str, Any]] = None, pooling: str = "auto",
       trust_remote_code: bool = False, dropout: Optional[float] = None, attention_dropout: Optional[float] = None,
       drop_path: Optional[float] = None) -> HFVideoEncoder:
    """Any transformers video ``AutoModel`` from a hub id or directory (``name_or_path``, e.g.
    ``MCG-NJU/videomae-base``), or random-init from ``config`` (``{model_type: videomae, num_frames: 4, …}``);
    preprocessing from its saved processor, else the config's ``image_size`` with ImageNet statistics."""
    from transformers import AutoConfig, AutoModel

    trust = remote_code(trust_remote_code, "model.video", name_or_path)
    rates = {"dropout": dropout, "attention_dropout": attention_dropout, "drop_path": drop_path}
    if name_or_path:
        model = AutoModel.from_pretrained(name_or_path, trust_remote_code=trust,
                                          **hf_pretrained_rates(name_or_path, trust, "model.video", **rates))
        processor = _video_processor(name_or_path, trust)
    elif config:
        cfg = dict(config)
        if "model_type" not in cfg:
            raise ValueError("model.video.config needs model_type (e.g. videomae, timesformer, vivit)")
        hf_cfg = set_hf_rates(AutoConfig.for_model(cfg.pop("model_type"), **cfg), "model.video", **rates)
        model, processor = AutoModel.from_config(hf_cfg, trust_remote_code=trust), None
    else:
        raise ValueError("model.video (hf): give name_or_path (hub id or directory) or config (random init)")
    enc = HFVideoEncoder(model, _hf_preprocess(processor, model.config), processor, pooling)
    if name_or_path:
        enc.load_fc_norm(name_or_path)
    return enc
