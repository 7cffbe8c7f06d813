"""Every image augmentation option on the preprocessing of the real encoders users pick (timm
ResNet-50 a1 / ViT / ConvNeXt, torchvision, open_clip, Hugging Face), built with random weights so
no download is needed while their real size, mean/std, interpolation (often bicubic) and crop apply."""
from __future__ import annotations

import os

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from mm_paths import ROOT
from mm_ptft.data.image import ImageAugment, batch_mix, classification_transforms
from mm_ptft.encoders import build_encoder
from mm_ptft.encoders.image import IMAGE_ENCODERS, ImageEncoder, torchvision_preprocess

HF_CONVNEXT = {"num_channels": 3, "hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 1]}


def _hf_convnext_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random-init HF ConvNeXt saved with its (default, bicubic) image processor, as a hub copy is."""
    from transformers import ConvNextConfig, ConvNextImageProcessor, ConvNextModel

    path = tmp_path_factory.mktemp("hf_convnext")
    ConvNextModel(ConvNextConfig(**HF_CONVNEXT)).save_pretrained(path)
    ConvNextImageProcessor(size={"shortest_edge": 224}).save_pretrained(path)
    return str(path)


def _torchvision_effnet() -> ImageEncoder:
    """efficientnet_b0 with random weights and the preprocessing of its DEFAULT weights (bicubic, 224)."""
    enc = build_encoder(IMAGE_ENCODERS, {"name": "torchvision", "name_or_path": "efficientnet_b0"}, "model.image")
    enc.preprocess = torchvision_preprocess("efficientnet_b0", "DEFAULT")
    return enc


ENCODERS = {
    "timm_resnet50_a1": lambda _: build_encoder(
        IMAGE_ENCODERS, {"name": "timm", "name_or_path": "resnet50.a1_in1k", "pretrained": False}, "model.image"),
    "timm_vit_tiny": lambda _: build_encoder(
        IMAGE_ENCODERS, {"name": "timm", "name_or_path": "vit_tiny_patch16_224"}, "model.image"),
    "timm_convnext_atto": lambda _: build_encoder(
        IMAGE_ENCODERS, {"name": "timm", "name_or_path": "convnext_atto"}, "model.image"),
    "torchvision_efficientnet_b0": lambda _: _torchvision_effnet(),
    "open_clip_vit_b32": lambda _: build_encoder(
        IMAGE_ENCODERS, {"name": "open_clip", "name_or_path": "ViT-B-32"}, "model.image"),
    "hf_vit_from_config": lambda _: build_encoder(IMAGE_ENCODERS, {"name": "hf", "config": {
        "model_type": "vit", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 64, "image_size": 224, "patch_size": 32}}, "model.image"),
    "hf_convnext_dir": lambda tmp: build_encoder(
        IMAGE_ENCODERS, {"name": "hf", "name_or_path": _hf_convnext_dir(tmp)}, "model.image"),
}
#: the interpolation each one's real preprocessing asks for (most real encoders: bicubic)
INTERPOLATION = {"timm_resnet50_a1": "bicubic", "timm_vit_tiny": "bicubic", "timm_convnext_atto": "bicubic",
                 "torchvision_efficientnet_b0": "bicubic", "open_clip_vit_b32": "bicubic",
                 "hf_vit_from_config": "bilinear", "hf_convnext_dir": "bicubic"}


def _recipe_augment() -> ImageAugment:
    """The augmentation section of recipes/image_classification/config.yaml (every option on at once)."""
    cfg = OmegaConf.load(os.path.join(ROOT, "recipes", "image_classification", "config.yaml"))
    return ImageAugment(**OmegaConf.to_container(cfg.data.augment))


AUGMENTS = {
    "random_resized_crop+hflip": ImageAugment(),
    "resize+centre_crop": ImageAugment(random_resized_crop=False, hflip=0.0),
    "randaugment": ImageAugment(auto_augment="randaugment", randaugment_magnitude=15),
    "trivialaugment": ImageAugment(auto_augment="trivialaugment"),
    "augmix": ImageAugment(auto_augment="augmix"),
    "color_jitter": ImageAugment(color_jitter=0.4),
    "random_erasing": ImageAugment(random_erasing=1.0),
    "mixup": ImageAugment(mixup_alpha=0.2),
    "cutmix": ImageAugment(cutmix_alpha=1.0),
    "recipe_config": _recipe_augment(),
}


@pytest.fixture(scope="module", params=sorted(ENCODERS))
def encoder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, ImageEncoder]:
    return request.param, ENCODERS[request.param](tmp_path_factory)


def _images(n: int = 4) -> list[Image.Image]:
    """Small noisy RGB images of different sizes (the transforms scale them to the encoder's size)."""
    g = torch.Generator().manual_seed(0)
    sizes = [(37, 53), (64, 40), (48, 48), (30, 90)][:n]
    return [Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy())
            for h, w in sizes]


def test_the_real_preprocessing_is_read(encoder):
    name, enc = encoder
    assert enc.preprocess.interpolation == INTERPOLATION[name]
    assert enc.preprocess.size == (224, 224)


@pytest.mark.parametrize("aug", sorted(AUGMENTS))
def test_every_augmentation_runs_at_the_encoders_input_size(encoder, aug):
    _, enc = encoder
    cfg = AUGMENTS[aug]
    transform = classification_transforms(enc.preprocess, cfg, train=True)
    torch.manual_seed(0)
    images = torch.stack([transform(img) for img in _images()])  # (4, 3, H, W)
    assert images.shape == (4, 3, *enc.preprocess.size) and images.dtype == torch.float32
    assert torch.isfinite(images).all()
    mix = batch_mix(cfg, num_classes=5)
    if mix is not None:
        mixed, soft = mix(images, torch.tensor([0, 1, 2, 3]))  # (4, 3, H, W), (4, 5)
        assert mixed.shape == images.shape and soft.shape == (4, 5)
        assert torch.allclose(soft.sum(-1), torch.ones(4))


def test_eval_transform_normalises_with_the_encoders_mean_and_std(encoder):
    _, enc = encoder
    pre = enc.preprocess
    grey = Image.new("RGB", (50, 31), (90, 140, 200))
    out = classification_transforms(pre, AUGMENTS["recipe_config"], train=False)(grey)  # (3, H, W)
    expected = (torch.tensor([90, 140, 200]) / 255 - torch.tensor(pre.mean)) / torch.tensor(pre.std)  # (3,)
    assert out.shape == (3, *pre.size)
    assert torch.allclose(out, expected[:, None, None].expand_as(out), atol=1e-5)


def test_the_encoder_takes_a_batch_from_the_recipes_augmentation(encoder):
    _, enc = encoder
    cfg = AUGMENTS["recipe_config"]
    transform = classification_transforms(enc.preprocess, cfg, train=True)
    images = torch.stack([transform(img) for img in _images(2)])  # (2, 3, H, W)
    images, _ = batch_mix(cfg, num_classes=3)(images, torch.tensor([0, 2]))
    with torch.no_grad():
        pooled = enc.eval()({"image": images}).pooled  # (2, D)
    assert pooled.shape == (2, enc.out_dim) and torch.isfinite(pooled).all()


@pytest.mark.parametrize("resample, name", [(None, "bilinear"), (0, "nearest"), (2, "bilinear"), (3, "bicubic"),
                                            ("bicubic", "bicubic")])
def test_hf_processor_resample_becomes_the_interpolation(resample, name):
    from torchvision.transforms import InterpolationMode

    from mm_ptft.encoders.image import _resample_name

    assert _resample_name(InterpolationMode(resample) if isinstance(resample, str) else resample) == name


def _smooth_images() -> list[Image.Image]:
    """Photos are smooth: blurred noise at portrait, landscape and square shapes larger than the input size."""
    from PIL import ImageFilter

    g = torch.Generator().manual_seed(1)
    sizes = [(237, 353), (364, 240), (300, 300)]
    return [Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy())
            .filter(ImageFilter.GaussianBlur(3)) for h, w in sizes]


def _hf_processor_ref(processor: object):
    return lambda im: processor(im, return_tensors="pt")["pixel_values"][0]


def _library_eval_transforms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """(our encoder, the library's own evaluation preprocessing) for each family."""
    import open_clip
    import timm
    import torchvision
    from transformers import CLIPImageProcessor, ConvNextImageProcessor, ViTImageProcessor

    timm_model = timm.create_model("resnet50.a1_in1k", pretrained=False)
    _, _, oc_pre = open_clip.create_model_and_transforms("ViT-B-32")
    out = {
        "timm_resnet50_a1": (ENCODERS["timm_resnet50_a1"](None), timm.data.create_transform(
            **timm.data.resolve_model_data_config(timm_model), is_training=False)),
        "open_clip_vit_b32": (ENCODERS["open_clip_vit_b32"](None), oc_pre),
        "torchvision_efficientnet_b0": (_torchvision_effnet(),
                                        torchvision.models.EfficientNet_B0_Weights.DEFAULT.transforms()),
        "hf_convnext_dir": (ENCODERS["hf_convnext_dir"](tmp_path_factory),
                            _hf_processor_ref(ConvNextImageProcessor(size={"shortest_edge": 224}))),
    }
    for name, proc in {"hf_vit_squash": ViTImageProcessor(size={"height": 224, "width": 224}),
                       "hf_clip_shortest_edge": CLIPImageProcessor()}.items():
        path = tmp_path_factory.mktemp(name)
        proc.save_pretrained(path)
        from transformers import ViTConfig, ViTModel

        ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                           image_size=224, patch_size=32)).save_pretrained(path)
        out[name] = (build_encoder(IMAGE_ENCODERS, {"name": "hf", "name_or_path": str(path)}, "model.image"),
                     _hf_processor_ref(proc))
    return out


def test_eval_transform_is_the_libraries_own_on_non_square_images(tmp_path_factory):
    """The evaluation geometry (shorter edge to size / crop_pct and centre crop; HF height/width processors:
    squash) is each library's: a portrait or landscape photo is neither squashed nor cropped otherwise. What is
    left is PIL vs tensor resampling (a couple of uint8 levels at a few pixels); the squash bug this guards
    against gave a mean difference of 0.12."""
    for name, (enc, ref) in _library_eval_transforms(tmp_path_factory).items():
        ours = classification_transforms(enc.preprocess, ImageAugment(), train=False)
        for im in _smooth_images():
            a, b = ours(im), ref(im)
            assert a.shape == b.shape, (name, im.size)
            assert float((a - b).abs().mean()) < 1e-3 and float((a - b).abs().max()) < 0.06, (name, im.size)
