"""``mm-ptft export RUN --format open_clip``: a CLIP run over one open_clip model's towers becomes a directory that
open_clip itself loads (``local-dir:``), whose own preprocessing, tokenizer and towers embed raw images and captions
as ``mm-ptft predict`` does, with the run's temperature; runs that open_clip cannot hold are refused by name."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mm_paths import ROOT
from mm_ptft.cli import main as cli_main
from mm_ptft.run import load_config, predict, train
from mm_ptft.run.export import ExportError

open_clip = pytest.importorskip("open_clip")

CONTRASTIVE = str(Path(ROOT, "recipes", "pretrain_contrastive", "tiny.yaml"))
#: a real open_clip ViT-B-32 architecture at a tiny size; the real CLIP tokenizer (vocabulary 49408)
TOWER = ("{name: open_clip, name_or_path: ViT-B-32, model_cfg: {embed_dim: 32, vision_cfg: {image_size: 32, "
         "layers: 1, width: 64, patch_size: 16}, text_cfg: {context_length: 16, vocab_size: 49408, width: 32, "
         "heads: 2, layers: 1}}}")
RUN = ["train.max_steps=4", "train.report=false", "train.num_workers=0", "data.generate.n_train=64",
       "data.generate.n_eval=32", "train.batch_size=16", f"model.image={TOWER}", f"model.text={TOWER}",
       "model.objective.embed_dim=24", "sched.warmup_steps=1"]  # the run's projection (32 → 24) must be folded into the towers


def _run(out: Path, *overrides: str) -> Path:
    train(load_config(CONTRASTIVE, [f"output_dir={out}", *RUN, *overrides]))
    return out


@pytest.fixture(scope="module", params=["clip", "siglip"])
def exported(request, tmp_path_factory) -> tuple[Path, Path, str]:
    root = tmp_path_factory.mktemp(f"oc_{request.param}")
    run = _run(root / "run", f"model.objective.name={request.param}")
    assert cli_main(["export", str(run), "--format", "open_clip", "--out", str(root / "oc")]) == 0
    return run, root / "oc", request.param


def _image(path: Path) -> Image.Image:
    """A smooth portrait photo, larger than the input: resize and crop geometry matter."""
    from PIL import ImageFilter

    pixels = (np.random.RandomState(0).rand(57, 41, 3) * 255).astype("uint8")
    img = Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(2))
    img.save(path)
    return img


def test_open_clip_loads_the_directory_and_embeds_as_predict_does(exported, tmp_path):
    run, out, kind = exported
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    img = _image(tmp_path / "photo.png")
    caption = "a red circle on a blue square"
    ours = predict(run, [str(tmp_path / "photo.png"), caption])
    with torch.no_grad():
        image = model.encode_image(preprocess(img)[None], normalize=True)[0]  # (E,)
        text = model.encode_text(tokenizer([caption]), normalize=True)[0]  # (E,)
    assert image.shape == (24,) and text.shape == (24,)
    # predict rounds to 5 decimals; the image side adds PIL (open_clip) vs tensor (ours) bicubic resampling
    assert float((text - torch.tensor(ours[1]["embedding"])).abs().max()) < 2e-5
    assert float((image - torch.tensor(ours[0]["embedding"])).abs().max()) < 2e-3
    manifest = json.loads((out / "mm_ptft.json").read_text())
    assert manifest["format"] == "open_clip" and manifest["parity"]["max_abs_diff_embedding"] < 1e-5
    assert "open_clip.create_model_and_transforms" in (out / "README.md").read_text()


def test_the_temperature_and_siglip_bias_are_the_runs(exported):
    run, out, kind = exported
    from safetensors.torch import load_file

    where = json.loads((out / "mm_ptft.json").read_text())["checkpoint"]  # the checkpoint exported (best)
    state = load_file(str(run / where.replace("${output_dir}/", "") / "model.safetensors"))
    log_scale = next(v for k, v in state.items() if k.endswith("losses.image_text.log_scale"))
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out}")
    assert torch.allclose(model.logit_scale.detach(), log_scale.clamp(max=float(np.log(100.0))))
    if kind == "siglip":
        bias = next(v for k, v in state.items() if k.endswith("losses.image_text.bias"))
        assert torch.allclose(model.logit_bias.detach(), bias)
    else:
        assert getattr(model, "logit_bias", None) is None


def test_a_run_whose_towers_are_not_open_clip_is_refused_by_name(tmp_path):
    run = tmp_path / "tiny"
    train(load_config(CONTRASTIVE, [f"output_dir={run}", "train.max_steps=1", "train.report=false",
                                    "train.num_workers=0", "data.generate.n_train=32", "data.generate.n_eval=16"]))
    from mm_ptft.run.hub import export_pretrained

    with pytest.raises(ExportError, match="model.image.name='tiny_cnn'"):
        export_pretrained(run, "open_clip", out=tmp_path / "oc")
    assert not (tmp_path / "oc").exists()
