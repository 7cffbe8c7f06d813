"""``mm-ptft export --format hf`` of a captioning run: a trained tiny CoCa (HF ViT + GPT-2 decoder with
cross-attention) loads as transformers' ``VisionEncoderDecoderModel`` with its image processor, tokenizer and
generation config, and ``generate`` writes the captions ``mm-ptft predict`` writes; the memory projection folds into
GPT-2's cross-attention when the widths are equal; what transformers cannot express is refused with the reason."""
from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
import torch

from mm_paths import ROOT

RECIPE = Path(ROOT) / "recipes" / "pretrain_captioning"
SMALL = ["data.generate={name: shapes_captions, n_train: 48, n_eval: 16, image_size: 32, sample_rate: 8000, seed: 1}",
         "train.max_steps=6", "train.batch_size=16", "train.report=false", "train.threads=1"]
VIT = ("model.image={name: hf, config: {model_type: vit, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2,"
       " intermediate_size: 64, image_size: 32, patch_size: 8}}")
GPT2 = "{name: hf, config: {model_type: gpt2, n_embd: %d, n_layer: 1, n_head: 2, n_positions: 32}}"


def _objectives(n_embd: int) -> str:
    return ("model.objectives={clip: {name: clip, embed_dim: 32, weight: 1.0}, caption: {name: captioning, "
            f"max_new_tokens: 8, weight: 2.0, decoder: {GPT2 % n_embd}}}}}")


def _train(out: Path, *overrides: str) -> Path:
    main = runpy.run_path(str(RECIPE / "train.py"))["main"]
    main([str(RECIPE / "tiny.yaml"), f"output_dir={out}", *SMALL, *overrides])
    return out


def _eval_images(run: Path, n: int = 5) -> list[str]:
    eval_file = sorted(run.glob("generated_data/*/eval.jsonl"))[0]
    rows = [json.loads(line) for line in eval_file.read_text().splitlines()[:n]]
    return [str(eval_file.parent / r["image"]) for r in rows]


@pytest.mark.slow  # two tiny training runs and an export (~40 s on 2 busy cores)
def test_exported_captioner_generates_what_predict_writes(tmp_path: Path) -> None:
    from PIL import Image
    from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel

    from mm_ptft.run import predict
    from mm_ptft.run.export import ExportError, export_run

    run = _train(tmp_path / "vit_gpt2", VIT, _objectives(48))
    out = export_run(run, "hf", tmp_path / "hf")
    manifest = json.loads((out / "mm_ptft.json").read_text())
    assert manifest["class"] == "VisionEncoderDecoderModel" and manifest["parity"]["same_generated_tokens"]
    model = VisionEncoderDecoderModel.from_pretrained(str(out)).eval()
    processor = AutoImageProcessor.from_pretrained(str(out))
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert model.generation_config.max_new_tokens == 8 and model.generation_config.num_beams == 1
    images = _eval_images(run)
    pixels = processor(images=[Image.open(p).convert("RGB") for p in images], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ids = model.generate(pixel_values=pixels)
    theirs = tokenizer.batch_decode(ids, skip_special_tokens=True)
    ours = [row["caption"] for row in predict(run, images)]
    assert theirs == ours and any(c.strip() for c in ours), (theirs, ours)

    tiny = _train(tmp_path / "tiny_decoder", VIT)  # tiny.yaml's built-in decoder
    with pytest.raises(ExportError, match="built-in TinyCaptionDecoder.*decoder \\{name: hf.*--format mm_ptft"):
        export_run(tiny, "hf", tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def _task(image_spec: dict, decoder: dict, modality: str = "image"):
    from mm_fixtures import tiny_encoders

    from mm_ptft.encoders import build_encoder
    from mm_ptft.encoders.image import IMAGE_ENCODERS
    from mm_ptft.heads.pretraining import PretrainTask
    from mm_ptft.objectives import OBJECTIVES

    encs = tiny_encoders(32, 32, ["a small red circle", "a large blue square", "a yellow cross"])
    torch.manual_seed(0)
    encs["image"] = build_encoder(IMAGE_ENCODERS, image_spec, "model.image")
    cap = OBJECTIVES.build({"name": "captioning", "modality": modality, "max_new_tokens": 8, "decoder": decoder},
                           "model.objectives.caption", encoders=encs)
    with torch.no_grad():  # random init writes EOS at once; spread the weights so captions have tokens
        for p in cap.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return PretrainTask({m: encs[m] for m in ("image", "text", "audio")}, {"caption": cap}).eval()


HF_VIT = {"name": "hf", "config": {"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 1,
                                   "num_attention_heads": 2, "intermediate_size": 64, "image_size": 32,
                                   "patch_size": 8}}


def test_equal_widths_fold_the_memory_projection_into_gpt2_cross_attention() -> None:
    """ViT width 32 = GPT-2 width 32: transformers adds no enc_to_dec_proj; folded, the greedy tokens match the run's
    (checked by the export's own parity check, which compares with the run's decoder); unfolded they do not."""
    from mm_ptft.heads import caption_hf as H

    task = _task(HF_VIT, {"name": "hf", "config": {"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2,
                                                   "n_positions": 32}})
    model = task.export_hf()
    assert not hasattr(model, "enc_to_dec_proj")
    batch = {"image": torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))}
    check = task.hf_parity(model, batch)
    assert check["ok"], check
    cap = task.captioners["image"]
    ours = H.until_eos(cap.decoder.generate(*cap.memory(H.EncodedBatch(task.towers, batch)), cap.bos, cap.eos, 8),
                       cap.eos)
    assert max(len(r) for r in ours) > 2  # not an immediate EOS: the comparison has tokens to compare
    unfolded = task.export_hf()
    unfolded.decoder.load_state_dict(cap.decoder.model.state_dict())  # the cross-attention as trained, no fold
    assert not task.hf_parity(unfolded, batch)["ok"]


@pytest.mark.parametrize("image, decoder, modality, reason", [
    ({"name": "tiny_cnn", "widths": [8, 16], "img_size": 32}, "hf", "image", "model.image is a .*transformers vision"),
    (HF_VIT, "tiny", "image", "built-in TinyCaptionDecoder"),
    (HF_VIT, "hf", "audio", "captions \\['audio'\\].*images only"),
])
def test_what_transformers_cannot_express_is_refused_naming_why(image, decoder, modality, reason) -> None:
    spec = ({"name": "tiny", "dim": 32, "depth": 1, "heads": 2, "max_length": 32} if decoder == "tiny" else
            {"name": "hf", "config": {"model_type": "gpt2", "n_embd": 48, "n_layer": 1, "n_head": 2, "n_positions": 32}})
    with pytest.raises(NotImplementedError, match=reason) as err:
        _task(image, spec, modality).export_hf()
    assert "--format mm_ptft" in str(err.value)
