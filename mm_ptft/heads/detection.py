"""Object detection on any image encoder: a feature-pyramid adapter plus torchvision detectors
(Faster R-CNN, RetinaNet, FCOS).

The adapter turns ``encoder.features(images)`` into the ``OrderedDict`` of equal-width maps that
torchvision detectors expect: an FPN over a CNN's multi-scale maps, or a ViTDet-style simple
feature pyramid from a ViT's single map. As in torchvision, training returns a dict of named
losses and evaluation a list of per-image ``{boxes (xyxy), labels, scores}``."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn

from mm_ptft.contracts import Task
from mm_ptft.encoders.image import ImageEncoder
from mm_ptft.registry import Registry
from mm_ptft.types import IMAGE, TARGETS

NECKS: Registry[nn.Module] = Registry("detection_neck")
DETECTORS: Registry[nn.Module] = Registry("detector")


# -------------------------------------------------------------------------------------------- necks
class FPNNeck(nn.Module):
    """torchvision's FeaturePyramidNetwork over several CNN levels, plus a max-pooled extra level."""

    def __init__(self, in_channels: Sequence[int], in_strides: Sequence[int], out_channels: int) -> None:
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        self.fpn = FeaturePyramidNetwork(list(in_channels), out_channels, extra_blocks=LastLevelMaxPool())
        self.strides = [*in_strides, 2 * in_strides[-1]]

    def forward(self, maps: "OrderedDict[str, torch.Tensor]") -> "OrderedDict[str, torch.Tensor]":
        return self.fpn(maps)  # each (B, out_channels, H/s, W/s), plus "pool"


class SimplePyramidNeck(nn.Module):
    """ViTDet simple feature pyramid: one stride-s map → maps at s/scale for each scale
    (deconvolutions up, max-pool down), each projected to ``out_channels``; plus a pooled level."""

    def __init__(self, in_channels: int, in_stride: int, out_channels: int,
                 scales: Sequence[float] = (4.0, 2.0, 1.0, 0.5)) -> None:
        super().__init__()
        from timm.layers import LayerNorm2d

        self.levels = nn.ModuleList()
        for scale in scales:
            stages, c = self._resample(in_channels, scale)
            self.levels.append(nn.Sequential(
                *stages, nn.Conv2d(c, out_channels, 1, bias=False), LayerNorm2d(out_channels),
                nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), LayerNorm2d(out_channels)))
        self.strides = [int(in_stride / s) for s in scales]
        self.strides.append(2 * self.strides[-1])

    @staticmethod
    def _resample(c: int, scale: float) -> tuple[list[nn.Module], int]:
        """Layers that rescale a map by ``scale`` (a power of 2) and the channels they output."""
        from timm.layers import LayerNorm2d

        if scale not in (4.0, 2.0, 1.0, 0.5):
            raise ValueError(f"simple pyramid scales must be among 4, 2, 1, 0.5; got {scale}")
        if scale == 4.0:
            return [nn.ConvTranspose2d(c, c // 2, 2, 2), LayerNorm2d(c // 2), nn.GELU(),
                    nn.ConvTranspose2d(c // 2, c // 4, 2, 2)], c // 4
        if scale == 2.0:
            return [nn.ConvTranspose2d(c, c // 2, 2, 2)], c // 2
        return ([nn.MaxPool2d(2, 2)] if scale == 0.5 else []), c

    def forward(self, maps: "OrderedDict[str, torch.Tensor]") -> "OrderedDict[str, torch.Tensor]":
        x = list(maps.values())[-1]  # (B, C, H/s, W/s)
        out = OrderedDict((str(i), level(x)) for i, level in enumerate(self.levels))
        out["pool"] = nn.functional.max_pool2d(out[str(len(self.levels) - 1)], 1, 2, 0)
        return out


@NECKS.register("fpn")
def fpn(in_channels: Sequence[int], in_strides: Sequence[int], out_channels: int = 256) -> FPNNeck:
    """FPN over a CNN's levels (torchvision.ops.FeaturePyramidNetwork)."""
    return FPNNeck(in_channels, in_strides, out_channels)


@NECKS.register("simple_pyramid")
def simple_pyramid(in_channels: Sequence[int], in_strides: Sequence[int], out_channels: int = 256,
                   scales: Sequence[float] = (4.0, 2.0, 1.0, 0.5)) -> SimplePyramidNeck:
    """ViTDet-style pyramid from the last (single-stride) map."""
    return SimplePyramidNeck(in_channels[-1], in_strides[-1], out_channels, scales)


class PyramidBackbone(nn.Module):
    """Encoder feature maps → neck → equal-width pyramid; what torchvision detectors call a backbone."""

    def __init__(self, encoder: ImageEncoder, neck: Mapping[str, Any] | None = None, out_channels: int = 256) -> None:
        super().__init__()
        channels = list(getattr(encoder, "out_channels", []) or [])
        if not channels:
            raise ValueError(f"model.image ({type(encoder).__name__}) gives no multi-scale feature maps "
                             "(empty out_channels): detection needs an image encoder with features(), "
                             "e.g. tiny_cnn, tiny_vit, timm, torchvision CNNs, hf, open_clip ViTs")
        spec = dict(neck or {"name": "auto"})
        if spec.get("name", "auto") == "auto":  # one map (a ViT) → simple pyramid; several → FPN
            spec["name"] = "simple_pyramid" if len(channels) == 1 else "fpn"
        self.encoder = encoder
        self.neck = NECKS.build(spec, "model.neck", in_channels=channels, in_strides=encoder.out_strides,
                                out_channels=out_channels)
        self.out_channels = out_channels  # the one attribute torchvision detectors require
        self.strides: list[int] = list(self.neck.strides)
        self.featmap_names = [str(i) for i in range(len(self.strides) - 1)]  # RoI levels (no "pool")

    def forward(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.neck(self.encoder.features(images))


# ---------------------------------------------------------------------------------------- detectors
def _anchors(strides: Sequence[int], scale: float, per_octave: int, ratios: Sequence[float]):
    """An AnchorGenerator with base size ``scale * stride`` per level (``per_octave`` sizes each)."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    sizes = tuple(tuple(int(scale * s * 2 ** (k / per_octave)) for k in range(per_octave)) for s in strides)
    return AnchorGenerator(sizes, (tuple(ratios),) * len(strides))


@DETECTORS.register("faster_rcnn")
def faster_rcnn(backbone: PyramidBackbone, num_classes: int, transform: Mapping[str, Any], anchor_scale: float = 8.0,
                aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0), representation_size: int = 1024,
                **kwargs: Any) -> nn.Module:
    """torchvision Faster R-CNN (RPN + multi-scale RoIAlign + two-layer MLP box head of
    ``representation_size``); other ``kwargs`` go to ``FasterRCNN``."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    return FasterRCNN(backbone, None, rpn_anchor_generator=_anchors(backbone.strides, anchor_scale, 1, aspect_ratios),
                      box_roi_pool=MultiScaleRoIAlign(backbone.featmap_names, 7, 2),
                      box_head=TwoMLPHead(backbone.out_channels * 7 * 7, representation_size),
                      box_predictor=FastRCNNPredictor(representation_size, num_classes), **transform, **kwargs)


@DETECTORS.register("retinanet")
def retinanet(backbone: PyramidBackbone, num_classes: int, transform: Mapping[str, Any], anchor_scale: float = 4.0,
              aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0), **kwargs: Any) -> nn.Module:
    """torchvision RetinaNet (focal loss, 3 anchor sizes per octave); ``kwargs`` go to ``RetinaNet``."""
    from torchvision.models.detection import RetinaNet

    return RetinaNet(backbone, num_classes, anchor_generator=_anchors(backbone.strides, anchor_scale, 3, aspect_ratios),
                     **transform, **kwargs)


@DETECTORS.register("fcos")
def fcos(backbone: PyramidBackbone, num_classes: int, transform: Mapping[str, Any], **kwargs: Any) -> nn.Module:
    """torchvision FCOS (anchor-free; one point per location, sized by the level's stride)."""
    from torchvision.models.detection import FCOS

    points = _anchors(backbone.strides, 1.0, 1, (1.0,))
    return FCOS(backbone, num_classes, anchor_generator=points, **transform, **kwargs)


def transform_kwargs(encoder: ImageEncoder, min_size: Sequence[int], max_size: int,
                     fixed_size: Optional[Sequence[int]] = None) -> dict[str, Any]:
    """Resize/normalise settings for torchvision's GeneralizedRCNNTransform from the encoder's preprocess."""
    kw: dict[str, Any] = {"min_size": tuple(min_size), "max_size": max_size,
                          "image_mean": list(encoder.preprocess.mean), "image_std": list(encoder.preprocess.std)}
    if fixed_size:
        kw["fixed_size"] = tuple(fixed_size)
    return kw


def build_detector(encoder: ImageEncoder, spec: Mapping[str, Any], num_classes: int, transform: Mapping[str, Any],
                   neck: Mapping[str, Any] | None = None, neck_channels: int = 256) -> nn.Module:
    """A registered detector (``spec = {name: faster_rcnn, ...}``) on ``encoder`` through the pyramid adapter.
    ``num_classes`` excludes the background (labels are 1..num_classes)."""
    backbone = PyramidBackbone(encoder, neck, neck_channels)
    return DETECTORS.build(spec, "model.detector", backbone=backbone, num_classes=num_classes + 1,
                           transform=transform)


# --------------------------------------------------------------------------------------------- task
class DetectionTask(Task):
    """Wraps a torchvision-style detector: training sums its named losses, evaluation returns detections.

    Batch: ``image`` = list of (3, H, W) float tensors in [0, 1]; ``targets`` = list of dicts with
    ``boxes`` (N, 4) xyxy in pixels and ``labels`` (N,) in 1..num_classes."""

    main_metric = "map"

    def __init__(self, detector: nn.Module, category_ids: Sequence[int], results_path: Optional[str] = None) -> None:
        super().__init__()
        self.detector, self.category_ids, self.results_path = detector, list(category_ids), results_path

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        images = list(batch[IMAGE])
        if self.training:
            targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in batch[TARGETS]]
            losses = self.detector(images, targets)
            out = {f"{k.removeprefix('loss_')}_loss": v for k, v in losses.items()}
            out["loss"] = torch.stack(list(out.values())).sum()
            return out
        return {"detections": self.detector(images)}

    def build_metrics(self) -> Any:
        from mm_ptft.metrics.detection import DetectionMetrics

        return DetectionMetrics(self.category_ids, self.results_path)
