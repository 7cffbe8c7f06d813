"""Image encoders: any timm model, any torchvision classifier, any HF vision ``AutoModel``, open_clip
visual towers, and two tiny built-ins (``tiny_cnn``, ``tiny_vit``) for tests and CPU recipes.

Every image encoder reads ``batch["image"]`` (B, C, H, W) and returns ``EncoderOutput(pooled, tokens)``.
It carries ``preprocess`` (input size, mean, std) taken from its own pretrained config where one exists,
so data pipelines never guess normalisation. Encoders that can serve detection also implement
``features(images) -> OrderedDict[str, Tensor]`` (multi-scale NCHW maps); ``out_channels`` and
``out_strides`` (one entry per level) are measured once by a probe forward pass.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn

from mm_ptft.encoders.base import Encoder, HFBacked, hf_config, hf_pretrained_rates, open_clip_model, \
    release_freed_memory, remote_code, set_hf_rates, timm_rate_error, timm_rates, unexpected_option
from mm_ptft.features.image import eval_resize
from mm_ptft.registry import Registry
from mm_ptft.types import IMAGE, EncoderOutput

IMAGE_ENCODERS: Registry["ImageEncoder"] = Registry("image_encoder", record_spec=True)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How images must be prepared for an encoder: input size, normalisation, resampling, and the evaluation
    resize: ``shortest`` scales the shorter edge to size / crop_pct keeping the aspect ratio (timm, open_clip,
    torchvision, HF ``shortest_edge`` processors), ``squash`` scales to exactly (H, W) / crop_pct (HF processors
    with a height and width, e.g. ViT's); both then centre-crop to ``size``."""

    size: tuple[int, int]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    resize: str = "shortest"
    crop_rounding: str = "round"  # the centre crop's odd offset: torchvision rounds, transformers floors

    @staticmethod
    def make(size: int | Sequence[int], mean: Sequence[float] = IMAGENET_MEAN,
             std: Sequence[float] = IMAGENET_STD, interpolation: str = "bilinear",
             crop_pct: float = 0.875, resize: str = "shortest", crop_rounding: str = "round") -> "Preprocess":
        """Normalise the many spellings libraries use (int, [S], (H, W) or (C, H, W) sizes, lists)."""
        if isinstance(size, (int, float)):
            size = [size]
        hw = tuple(int(s) for s in size)[-2:]
        hw = hw * 2 if len(hw) == 1 else hw  # torchvision weights give [224]: a square
        if resize not in ("shortest", "squash") or crop_rounding not in ("round", "floor"):
            raise ValueError(f"image resize {resize!r} / crop rounding {crop_rounding!r}: choose shortest|squash "
                             f"and round|floor")
        return Preprocess(hw, tuple(float(m) for m in mean), tuple(float(s) for s in std),  # type: ignore[arg-type]
                          str(interpolation), float(crop_pct), resize, crop_rounding)

    def resize_size(self) -> int | tuple[int, int]:
        """What ``Resize`` gets before the centre crop: the shorter edge's length (``shortest`` with a square
        size) or the exact (H, W)."""
        return eval_resize(self.size, self.crop_pct, self.resize)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ImageEncoder(Encoder):
    """Base of all image encoders: ``encode(images)`` plus optional multi-scale ``features``."""

    modality = "image"
    preprocess: Preprocess
    token_dim: int = 0  # width of ``tokens`` (equals out_dim except where a projection follows them)

    def export_preprocessing(self, out: Any) -> dict[str, Any]:
        """This encoder's ``Preprocess`` (size, crop, mean/std) as the steps before the graph."""
        return {**self.preprocess.to_dict(), "layout": "NCHW float32 RGB",
                "steps": "decode RGB, resize to size / crop_pct (size where crop_pct >= 1; resize=shortest: "
                         "the shorter edge, keeping the aspect ratio), centre crop to size, scale to [0, 1], "
                         "subtract mean, divide by std"}

    def forward(self, batch: Mapping[str, Any]) -> EncoderOutput:
        return self.encode(batch[IMAGE])

    def encode(self, images: torch.Tensor) -> EncoderOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def features(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """Multi-scale feature maps, finest first: name → (B, C_l, H/s_l, W/s_l)."""
        raise NotImplementedError(f"{type(self).__name__} gives no multi-scale feature maps")

    @property
    def out_channels(self) -> list[int]:
        """Channels of each ``features`` level; empty when the encoder gives no feature maps."""
        return self._feature_info()[0]

    @property
    def out_strides(self) -> list[int]:
        """Stride (input pixels per map cell) of each ``features`` level."""
        return self._feature_info()[1]

    def _feature_info(self) -> tuple[list[int], list[int]]:
        cached = self.__dict__.get("_finfo")
        if cached is None:
            cached = self.__dict__["_finfo"] = probe_features(self)
        return cached


@torch.no_grad()
def probe_features(encoder: ImageEncoder) -> tuple[list[int], list[int]]:
    """Run ``features`` once on a blank image to measure each level's channels and stride."""
    h, w = encoder.preprocess.size
    param = next(encoder.parameters(), None)
    x = torch.zeros(1, 3, h, w, device=param.device if param is not None else None)  # (1, 3, H, W)
    was_training = encoder.training
    encoder.eval()
    try:
        maps = encoder.features(x)
    except NotImplementedError:
        return [], []
    finally:
        encoder.train(was_training)
    strides = [2 ** round(math.log2(h / m.shape[-2])) for m in maps.values()]  # ceil-mode sizes → powers of 2
    return [int(m.shape[1]) for m in maps.values()], strides


def pyramid_indices(strides: Sequence[int], levels: int = 3) -> list[int]:
    """Indices of the last map at each distinct stride, keeping the ``levels`` coarsest ones."""
    last: dict[int, int] = {}
    for i, s in enumerate(strides):
        last[int(s)] = i
    return sorted(last.values())[-levels:]


def as_maps(maps: Sequence[torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    return OrderedDict((str(i), m) for i, m in enumerate(maps))


def tokens_of(feats: torch.Tensor, fmt: str = "NCHW") -> torch.Tensor:
    """(B, N, D) tokens from a ViT sequence or a CNN map."""
    if feats.dim() == 3:
        return feats  # (B, N, D)
    if fmt == "NHWC":
        return feats.flatten(1, 2)  # (B, H*W, C)
    return feats.flatten(2).transpose(1, 2)  # (B, H*W, C)


# --------------------------------------------------------------------------------------------- timm
class TimmEncoder(ImageEncoder):
    """Any timm model; pooled = timm's own pre-logits; feature maps via ``features_only`` or
    ``forward_intermediates`` (CNNs: the last map at strides 8/16/32; ViTs: the last block)."""

    def __init__(self, model: nn.Module, preprocess: Preprocess, features_only: bool = False,
                 out_indices: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        self.model, self.preprocess, self.features_only = model, preprocess, features_only
        info = model.feature_info
        if features_only:
            self.out_dim = self.token_dim = int(info.channels()[-1])
            self.indices: list[int] = []
        else:
            self.out_dim = self.token_dim = int(model.num_features)
            reductions = [f["reduction"] for f in info] if isinstance(info, list) else info.reduction()
            self.indices = list(out_indices) if out_indices is not None else pyramid_indices(reductions)
        self.fmt = getattr(model, "output_fmt", "NCHW")

    def encode(self, images: torch.Tensor) -> EncoderOutput:
        if self.features_only:
            last = self.model(images)[-1]  # (B, C, h, w)
            return EncoderOutput(last.mean((2, 3)), tokens_of(last))
        feats = self.model.forward_features(images)  # (B, N, D) or (B, C, h, w)
        pooled = self.model.forward_head(feats, pre_logits=True)  # (B, D)
        return EncoderOutput(pooled, tokens_of(feats, str(self.fmt)))

    def features(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        if self.features_only:
            return as_maps(self.model(images))
        if not hasattr(self.model, "forward_intermediates"):
            raise NotImplementedError(f"timm model {type(self.model).__name__} has no forward_intermediates; "
                                      "set model.image.features_only=true")
        return as_maps(self.model.forward_intermediates(images, indices=self.indices, intermediates_only=True))

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.model.set_grad_checkpointing(enabled)

    def hf_model_inputs(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        return {"pixel_values": batch[IMAGE]}

    def hf_with_head(self, kind: str, head: nn.Linear, config: Mapping[str, Any]) -> nn.Module:
        """transformers' ``TimmWrapperForImageClassification``: the same timm architecture (its create_model
        arguments in ``model_args``) with this model's weights and ``head`` as timm's own classifier, which timm
        applies to the same pre-logits this encoder pools."""
        from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

        if kind != "classification" or self.features_only:
            raise NotImplementedError(f"timm {type(self.model).__name__}: transformers' timm wrapper is an image "
                                      f"classifier over timm's own pooling (not {kind}"
                                      f"{', not features_only' if self.features_only else ''})")
        cfg = TimmWrapperConfig(architecture=self.architecture, model_args=dict(self.create_args) or None, **config)
        model = TimmWrapperForImageClassification(cfg)
        inner = model.timm_model
        classifier = inner.get_classifier()
        if not isinstance(classifier, nn.Linear) or classifier.weight.shape != head.weight.shape:
            raise NotImplementedError(f"timm {type(inner).__name__}'s classifier is {type(classifier).__name__}, not "
                                      f"one linear layer {tuple(head.weight.shape)} as this task's head")
        missing, unexpected = inner.load_state_dict(self.model.state_dict(), strict=False)
        own = {n for n, p in inner.named_parameters() if p is classifier.weight or p is classifier.bias}
        if set(missing) - own or unexpected:
            raise NotImplementedError(f"timm {type(inner).__name__}: the encoder's weights do not fit "
                                      f"(missing {sorted(set(missing) - own)[:5]}, unexpected {sorted(unexpected)[:5]})")
        classifier.load_state_dict(head.state_dict())
        return model.eval()

    def hf_save_processing(self, path: Any, max_length: Optional[int] = None) -> None:
        save_eval_processor(self.preprocess, path)


@IMAGE_ENCODERS.register("timm")
def timm_encoder(name_or_path: str, pretrained: bool = False, checkpoint_path: str = "",
                 features_only: bool = False, out_indices: Optional[list[int]] = None,
                 img_size: Optional[int] = None, drop_path_rate: float = 0.0,
                 model_kwargs: Optional[dict[str, Any]] = None, dropout: Optional[float] = None,
                 attention_dropout: Optional[float] = None, drop_path: Optional[float] = None) -> TimmEncoder:
    """Any timm architecture by name (``resnet50``, ``vit_base_patch16_224``, ``convnext_tiny``...);
    ``pretrained`` downloads timm weights, ``checkpoint_path`` loads a local file;
    preprocessing comes from the model's ``pretrained_cfg``. Rates: ``dropout`` is timm's ``drop_rate`` (on the
    pooled features), ``attention_dropout`` its ``attn_drop_rate``, ``drop_path`` (or ``drop_path_rate``)
    stochastic depth."""
    import timm

    kwargs = dict(model_kwargs or {})
    if img_size:
        kwargs["img_size"] = img_size
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    rates = {"dropout": dropout, "attention_dropout": attention_dropout, "drop_path": drop_path}
    kwargs.update(timm_rates(**rates))
    if features_only:
        kwargs.update(features_only=True, **({"out_indices": tuple(out_indices)} if out_indices else {}))
    try:
        model = timm.create_model(name_or_path, pretrained=pretrained, num_classes=0,
                                  checkpoint_path=checkpoint_path or "", **kwargs)
    except TypeError as err:
        named = {"img_size": "model.image.img_size", "drop_path_rate": "model.image.drop_path_rate",
                 **{k: f"model.image.model_kwargs.{k}" for k in model_kwargs or {}}}
        raise timm_rate_error(err, "model.image", **rates) or unexpected_option(err, "model.image", named) or err \
            from None
    data_cfg = timm.data.resolve_data_config({}, model=model)
    pre = Preprocess.make(img_size or data_cfg["input_size"], data_cfg["mean"], data_cfg["std"],
                          data_cfg.get("interpolation", "bicubic"), data_cfg.get("crop_pct", 0.875))
    enc = TimmEncoder(model, pre, features_only, out_indices)
    enc.architecture = name_or_path
    enc.create_args = {k: v for k, v in kwargs.items() if k not in ("features_only", "out_indices")}
    return enc


# -------------------------------------------------------------------------------------- torchvision
class TorchvisionEncoder(ImageEncoder):
    """A ``torchvision.models`` classifier with its final linear layer removed; feature maps through
    ``torchvision.models.feature_extraction`` at the given (or probed) module names."""

    def __init__(self, model: nn.Module, preprocess: Preprocess, out_dim: int,
                 return_nodes: Optional[Sequence[str]] = None) -> None:
        super().__init__()
        self.model, self.preprocess, self.out_dim = model, preprocess, out_dim
        self.token_dim = out_dim
        self.return_nodes = list(return_nodes) if return_nodes else None

    def encode(self, images: torch.Tensor) -> EncoderOutput:
        return EncoderOutput(self.model(images))  # (B, D)

    def features(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        extractor = self.__dict__.get("_extractor")
        if extractor is None:
            from torchvision.models.feature_extraction import create_feature_extractor

            nodes = self.return_nodes or probe_pyramid_modules(self.model, self.preprocess.size)
            # the extractor shares the model's submodules (and so its parameters); kept out of
            # the module tree so the weights are saved once
            extractor = self.__dict__["_extractor"] = create_feature_extractor(
                self.model, {n: str(i) for i, n in enumerate(nodes)})
        extractor.train(self.training)
        return OrderedDict(extractor(images))


@torch.no_grad()
def probe_pyramid_modules(model: nn.Module, size: tuple[int, int]) -> list[str]:
    """Names of the last modules producing NCHW maps at strides 8, 16 and 32 (a CNN pyramid)."""
    h, w = size
    seen: list[tuple[str, int]] = []

    def hook(name: str):
        def fn(_m: nn.Module, _i: Any, out: Any) -> None:
            if torch.is_tensor(out) and out.dim() == 4 and h % out.shape[2] == 0 and w % out.shape[3] == 0:
                sh, sw = h // out.shape[2], w // out.shape[3]
                if sh == sw and sh in (8, 16, 32):
                    seen.append((name, sh))
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, 3, h, w))
    finally:
        model.train(was_training)
        for hd in handles:
            hd.remove()
    last = {s: n for n, s in seen}
    if len(last) < 2:
        raise NotImplementedError(f"{type(model).__name__}: no CNN feature pyramid found; give "
                                  "model.image.return_nodes (module names) or use a timm/hf encoder")
    return [last[s] for s in sorted(last)]


def _drop_classifier(model: nn.Module) -> int:
    """Replace the last ``nn.Linear`` (the classifier) with Identity; returns its input width."""
    name, layer = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    setattr(parent, name.rsplit(".", 1)[-1], nn.Identity())
    return int(layer.in_features)


@IMAGE_ENCODERS.register("torchvision")
def torchvision_encoder(name_or_path: str, weights: Optional[str] = None, img_size: int = 224,
                        return_nodes: Optional[list[str]] = None,
                        model_kwargs: Optional[dict[str, Any]] = None) -> TorchvisionEncoder:
    """Any ``torchvision.models`` builder by name (``resnet50``, ``efficientnet_b0``, ``convnext_tiny``);
    ``weights`` is a weights enum name (``DEFAULT``, ``IMAGENET1K_V2``) or None for random init; ``model_kwargs``
    go to the builder (e.g. ``{dropout: 0.2}`` for efficientnet / vit)."""
    import torchvision

    try:
        model = torchvision.models.get_model(name_or_path, weights=weights, **dict(model_kwargs or {}))
    except TypeError as err:
        raise unexpected_option(err, "model.image.model_kwargs") or err from None
    pre = torchvision_preprocess(name_or_path, weights) if weights else Preprocess.make(img_size)
    return TorchvisionEncoder(model, pre, _drop_classifier(model), return_nodes)


def torchvision_preprocess(name: str, weights: str) -> Preprocess:
    """Crop size, mean/std, resampling and crop ratio of a torchvision weights enum (metadata only)."""
    import torchvision

    t = torchvision.models.get_model_weights(name).verify(weights).transforms()
    return Preprocess.make(t.crop_size, t.mean, t.std, t.interpolation.value, t.crop_size[0] / t.resize_size[0])


# ---------------------------------------------------------------------------------- Hugging Face
class HFImageEncoder(HFBacked, ImageEncoder):
    """A transformers vision ``AutoModel`` (ViT, DeiT, DINOv2, ConvNeXt, ResNet...)."""

    hf_heads = {"classification": "AutoModelForImageClassification"}
    hf_pooling_hint = ("transformers' image classifiers pool as their architecture does (ViT: [CLS] after the final "
                       "layernorm, model.image.pooling=cls or auto; ConvNeXt/ResNet: their pooler, pooling=pooler or auto)")

    def hf_model_inputs(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        return {"pixel_values": batch[IMAGE]}

    def hf_pooling_problem(self, kind: str) -> Optional[str]:
        if self.pooling == "mean":
            return (f"{type(self.model).__name__}: this run pools image tokens by their mean, which no transformers "
                    f"image classifier does: {self.hf_pooling_hint}; or export --format mm_ptft")
        return None

    def hf_save_processing(self, path: Any, max_length: Optional[int] = None) -> None:
        """The model's own image processor; without one (random init) a ``BitImageProcessor`` doing what the
        run's evaluation transform does: resize to size / crop_pct, center-crop, rescale, normalise."""
        if self.processor is not None:
            self.processor.save_pretrained(str(path))
            return
        save_eval_processor(self.preprocess, path)


    def __init__(self, model: nn.Module, preprocess: Preprocess, processor: Any = None,
                 pooling: str = "auto") -> None:
        super().__init__()
        if pooling not in ("auto", "cls", "mean", "pooler"):
            raise ValueError(f"model.image.pooling must be auto|cls|mean|pooler, got {pooling!r}")
        self.model, self.preprocess, self.processor, self.pooling = model, preprocess, processor, pooling
        cfg = model.config
        self.out_dim = self.token_dim = int(getattr(cfg, "hidden_size", None) or cfg.hidden_sizes[-1])

    def encode(self, images: torch.Tensor) -> EncoderOutput:
        out = self.model(pixel_values=images)
        hidden = out.last_hidden_state  # (B, N, D) or (B, C, h, w)
        tokens = tokens_of(hidden)  # (B, N, D)
        pooler = getattr(out, "pooler_output", None)
        mode = self.pooling if self.pooling != "auto" else ("cls" if hidden.dim() == 3 else "pooler")
        if mode == "pooler" and pooler is None:
            mode = "mean"
        pooled = {"cls": lambda: tokens[:, 0], "mean": lambda: tokens.mean(1),
                  "pooler": lambda: pooler.flatten(1)}[mode]()  # (B, D)
        return EncoderOutput(pooled, tokens)

    def features(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        out = self.model(pixel_values=images, output_hidden_states=True)
        if out.last_hidden_state.dim() == 4:  # CNN: hidden states are per-stage maps
            maps = out.hidden_states
            strides = [images.shape[-2] // m.shape[-2] for m in maps]
            return as_maps([maps[i] for i in pyramid_indices(strides)])
        return as_maps([vit_map(out.last_hidden_state, images, int(self.model.config.patch_size))])



def save_eval_processor(p: Preprocess, path: Any) -> None:
    """A transformers ``BitImageProcessor`` doing what the run's evaluation transform does for ``p``: resize to
    size / crop_pct, center-crop to size, rescale to [0, 1], normalise (``preprocessor_config.json`` in ``path``)."""
    from transformers import BitImageProcessor

    BitImageProcessor(**eval_processor_kwargs(p)).save_pretrained(str(path))


def eval_processor_kwargs(p: Preprocess) -> dict[str, Any]:
    """transformers image/video processor options doing what the run's evaluation transform does for ``p``."""
    h, w = p.size
    resize = p.resize_size()
    size = {"shortest_edge": resize} if isinstance(resize, int) else {"height": resize[0], "width": resize[1]}
    pil = {name: code for code, name in _PIL_RESAMPLE.items()}.get(p.interpolation, 2)
    return dict(do_resize=True, size=size, resample=pil, do_center_crop=True, crop_size={"height": h, "width": w},
                do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=list(p.mean),
                image_std=list(p.std), do_convert_rgb=True)


def vit_map(tokens: torch.Tensor, images: torch.Tensor, patch: int) -> torch.Tensor:
    """Drop prefix (CLS/register) tokens and fold patch tokens back into a (B, D, h, w) map."""
    gh, gw = images.shape[-2] // patch, images.shape[-1] // patch
    grid = tokens[:, tokens.shape[1] - gh * gw:]  # (B, h*w, D)
    return grid.transpose(1, 2).reshape(tokens.shape[0], -1, gh, gw)  # (B, D, h, w)


def _size_field(size: Any, key: str) -> Optional[int]:
    """One field of an HF processor size (a dict in older transformers, a SizeDict in newer ones)."""
    value = size.get(key) if isinstance(size, Mapping) else getattr(size, key, None)
    return int(value) if value else None


def _hf_preprocess(processor: Any, config: Any) -> Preprocess:
    """Size, crop, resize mode, mean/std and resampling of an HF image processor's evaluation path, else the
    model config's size with ImageNet stats. ``shortest_edge`` processors keep the aspect ratio (ConvNeXt's below
    384 px resize to edge / its ``crop_pct``), ``height``/``width`` ones squash; a centre crop sets ``crop_pct``."""
    if processor is None:
        return Preprocess.make(int(getattr(config, "image_size", 224)))
    size, resample = processor.size, _resample_name(getattr(processor, "resample", None))
    h, w = _size_field(size, "height"), _size_field(size, "width")
    edge = _size_field(size, "shortest_edge")
    crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    ch, cw = (_size_field(crop, "height"), _size_field(crop, "width")) if crop is not None else (None, None)
    mean, std = processor.image_mean, processor.image_std
    if h and w:  # squash to (h, w), then maybe crop
        target = (ch or h, cw or w)
        return Preprocess.make(target, mean, std, resample, min(1.0, target[0] / h), "squash", "floor")
    edge = edge or int(getattr(config, "image_size", 224))
    own_pct = getattr(processor, "crop_pct", None)
    if own_pct and edge < 384:  # ConvNeXt: resize the shorter edge to edge / crop_pct, crop edge
        return Preprocess.make(edge, mean, std, resample, float(own_pct), "shortest", "floor")
    target = ch or edge
    return Preprocess.make((ch, cw) if ch and cw else target, mean, std, resample, min(1.0, target / edge),
                           "shortest", "floor")


def _resample_name(resample: Any) -> str:
    """An HF processor's ``resample`` (a PIL filter number, or a torchvision mode in fast processors)
    as a torchvision interpolation name; bilinear when it has none."""
    if resample is None:
        return "bilinear"
    value = getattr(resample, "value", resample)
    return value if isinstance(value, str) else _PIL_RESAMPLE.get(int(value), "bilinear")


#: PIL resampling filters (what HF image processors store as ``resample``) → torchvision mode names
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


@IMAGE_ENCODERS.register("hf")
def hf(name_or_path: Optional[str] = None, config: Optional[dict[str, Any]] = None, pooling: str = "auto",
       trust_remote_code: bool = False, dropout: Optional[float] = None, attention_dropout: Optional[float] = None,
       drop_path: Optional[float] = None) -> HFImageEncoder:
    """Any HF vision ``AutoModel`` from a hub id or local directory (``name_or_path``), or randomly
    initialised from ``config`` (e.g. ``{model_type: vit, hidden_size: 64, image_size: 32, ...}``); the rates
    set the config's dropout fields (``set_hf_rates``)."""
    from transformers import AutoImageProcessor, AutoModel

    trust = remote_code(trust_remote_code, "model.image", name_or_path)
    rates = {"dropout": dropout, "attention_dropout": attention_dropout, "drop_path": drop_path}
    if name_or_path:
        model = AutoModel.from_pretrained(name_or_path, trust_remote_code=trust,
                                          **hf_pretrained_rates(name_or_path, trust, "model.image", **rates))
        try:
            processor = AutoImageProcessor.from_pretrained(name_or_path, trust_remote_code=trust)
        except (OSError, ValueError):
            processor = None
    elif config:
        model = AutoModel.from_config(set_hf_rates(hf_config(config, "model.image"), "model.image", **rates),
                                      trust_remote_code=trust)
        processor = None
    else:
        raise ValueError("model.image (hf): give name_or_path (hub id or directory) or config (random init)")
    return HFImageEncoder(model, _hf_preprocess(processor, model.config), processor, pooling)


# --------------------------------------------------------------------------------------- open_clip
class OpenCLIPVisualEncoder(ImageEncoder):
    """The visual tower of an open_clip model; pooled = the projected CLIP image embedding,
    tokens = the (unprojected) patch tokens where the tower provides them."""

    def __init__(self, visual: nn.Module, preprocess: Preprocess) -> None:
        super().__init__()
        self.visual, self.preprocess = visual, preprocess
        self.has_tokens = hasattr(visual, "output_tokens")
        if self.has_tokens:
            visual.output_tokens = True
        with torch.no_grad():
            pooled, tokens = self._run(torch.zeros(1, 3, *preprocess.size))
        self.out_dim = int(pooled.shape[-1])
        self.token_dim = int(tokens.shape[-1]) if tokens is not None else self.out_dim

    def _run(self, images: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        out = self.visual(images)
        return out if self.has_tokens else (out, None)

    def encode(self, images: torch.Tensor) -> EncoderOutput:
        pooled, tokens = self._run(images)  # (B, D), (B, N, W)
        return EncoderOutput(pooled, tokens)

    def features(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        if not hasattr(self.visual, "forward_intermediates"):
            raise NotImplementedError(f"open_clip tower {type(self.visual).__name__} has no forward_intermediates")
        depth = len(self.visual.transformer.resblocks) if hasattr(self.visual, "transformer") else None
        out = self.visual.forward_intermediates(images, indices=[depth - 1] if depth else 1,
                                                intermediates_only=True)
        return as_maps(out["image_intermediates"])

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.visual.set_grad_checkpointing(enabled)


@IMAGE_ENCODERS.register("open_clip")
def open_clip_encoder(name_or_path: str = "ViT-B-32", pretrained: Optional[str] = None,
                      model_cfg: Optional[dict[str, Any]] = None, image_size: Optional[int] = None,
                      cache_dir: Optional[str] = None) -> OpenCLIPVisualEncoder:
    """Visual tower of an open_clip model: a config name (``ViT-B-32``) or ``hf-hub:``/``local-dir:`` id;
    ``pretrained`` is a tag or a local checkpoint file; ``model_cfg`` overrides the config
    (``embed_dim``, ``vision_cfg``, ``text_cfg``) for custom or tiny models."""
    try:
        clip = open_clip_model(name_or_path, pretrained, model_cfg, image_size, cache_dir)
    except TypeError as err:
        raise unexpected_option(err, "model.image.model_cfg") or err from None
    visual = clip.visual
    del clip  # unshared, the text tower goes: its freed memory back to the OS, not to forked loader workers
    release_freed_memory()
    cfg = getattr(visual, "preprocess_cfg", {}) or {}
    pre = Preprocess.make(cfg.get("size", image_size or 224), cfg.get("mean", IMAGENET_MEAN),
                          cfg.get("std", IMAGENET_STD), cfg.get("interpolation", "bicubic"), 1.0)
    return OpenCLIPVisualEncoder(visual, pre)


# ---------------------------------------------------------------------------------------- built-ins
def conv_bn(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class TinyCNN(ImageEncoder):
    """A small strided CNN: stem (stride 2) then stages that each halve the resolution."""

    def __init__(self, widths: Sequence[int], img_size: int, out_indices: Optional[Sequence[int]]) -> None:
        super().__init__()
        self.preprocess = Preprocess.make(img_size)
        self.stem = conv_bn(3, widths[0], 2)
        chans = [widths[0], *widths]
        self.stages = nn.ModuleList(nn.Sequential(conv_bn(a, b, 2), conv_bn(b, b, 1))
                                    for a, b in zip(chans[:-1], chans[1:]))
        n = len(widths)
        self.out_indices = list(out_indices) if out_indices is not None else list(range(max(0, n - 3), n))
        if not all(0 <= i < n for i in self.out_indices):
            raise ValueError(f"model.image.out_indices={self.out_indices}: tiny_cnn has stages 0..{n - 1}")
        self.out_dim = self.token_dim = int(widths[-1])

    def _stages(self, images: torch.Tensor) -> list[torch.Tensor]:
        x, maps = self.stem(images), []  # (B, C0, H/2, W/2)
        for stage in self.stages:
            x = stage(x)  # (B, C_i, H/2^(i+2), W/2^(i+2))
            maps.append(x)
        return maps

    def encode(self, images: torch.Tensor) -> EncoderOutput:
        last = self._stages(images)[-1]  # (B, C, h, w)
        return EncoderOutput(last.mean((2, 3)), tokens_of(last))

    def features(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        maps = self._stages(images)
        return as_maps([maps[i] for i in self.out_indices])


@IMAGE_ENCODERS.register("tiny_cnn")
def tiny_cnn(widths: Sequence[int] = (16, 32, 64, 128), img_size: int = 64,
             out_indices: Optional[Sequence[int]] = None) -> TinyCNN:
    """Built-in CNN, stage i at stride 2^(i+2); feature levels ``out_indices`` (default: the last 3)."""
    return TinyCNN(list(widths), img_size, out_indices)


def vit(img_size: int, patch_size: int, dim: int, depth: int, heads: int, global_pool: str,
        **rates: Optional[float]) -> TimmEncoder:
    """A randomly initialised ViT (timm's VisionTransformer class, no download); ``rates`` as the timm builder's."""
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=img_size, patch_size=patch_size, embed_dim=dim, depth=depth,
                              num_heads=heads, mlp_ratio=4.0, num_classes=0, global_pool=global_pool,
                              **timm_rates(**rates))
    return TimmEncoder(model, Preprocess.make(img_size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))


@IMAGE_ENCODERS.register("tiny_vit")
def tiny_vit(img_size: int = 64, patch_size: int = 8, dim: int = 64, depth: int = 2, heads: int = 4,
             global_pool: str = "token", dropout: Optional[float] = None, attention_dropout: Optional[float] = None,
             drop_path: Optional[float] = None) -> TimmEncoder:
    """Built-in tiny ViT (64-d, 2 blocks) for tests and CPU recipes."""
    return vit(img_size, patch_size, dim, depth, heads, global_pool, dropout=dropout,
               attention_dropout=attention_dropout, drop_path=drop_path)
