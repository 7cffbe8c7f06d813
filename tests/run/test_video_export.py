"""Exporting video classification runs. ``--format hf`` of a transformers video encoder (VideoMAE, TimeSformer) is a
directory that ``AutoModelForVideoClassification`` + its image processor, and ``pipeline("video-classification")``,
load and that predict what ``mm-ptft predict`` does on a clip decoded by PyAV itself; the built-in encoders
(``tiny_3d``, ``frames``) refuse ``--format hf`` naming why and export to onnx / torchscript / mm_ptft."""
import json
import os
import random

import pytest
import torch

av = pytest.importorskip("av")

from mm_ptft import run  # noqa: E402
from mm_ptft.contracts import ExportError  # noqa: E402
from mm_ptft.data.generated.video import moving_clip, write_video  # noqa: E402
from mm_ptft.run import load_config  # noqa: E402
from mm_ptft.run.export import export_run  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "recipes", "video_classification", "tiny.yaml")
# frame_stride=1 on a 4-frame clip: the run samples frames 0-3, as the pipeline's PyAV path does (linspace 0..3)
SMALL = ["data.generate.n_train=24", "data.generate.n_eval=8", "data.generate.frames=8", "train.report=false",
         "train.epochs=1", "data.sampling.frame_stride=1"]
SIZES = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
         "image_size": 32, "patch_size": 8, "num_frames": 4}
TOL = 1e-4  # max |Δ probability|; measured: VideoMAE 1.3e-6 (2-core CPU)


def train(out, video):
    conf = load_config(TINY, [f"output_dir={out}", *SMALL])
    conf.model.video = video
    run.train(conf)
    return out


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(str(tmp_path_factory.mktemp("clip") / "right.mp4"),
                       moving_clip(random.Random(0), "right", 32, 4, 2.0))


def pyav_frames(path):
    with av.open(path) as c:  # the independent decode
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_videomae_hf_export_loads_in_transformers_and_predicts_as_mm_ptft_predict(tmp_path, clip):
    from transformers import AutoImageProcessor, AutoModelForVideoClassification, pipeline

    run_dir = train(tmp_path / "run", {"name": "hf", "config": {"model_type": "videomae", **SIZES}})
    out = export_run(run_dir, "hf", tmp_path / "hf")
    manifest = json.loads((out / "mm_ptft.json").read_text())
    assert manifest["class"] == "VideoMAEForVideoClassification" and manifest["parity"]["max_abs_diff_prob"] <= TOL
    ours = run.predict(run_dir, [clip])[0]["scores"]

    model = AutoModelForVideoClassification.from_pretrained(str(out)).eval()
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    assert sorted(names) == sorted(ours)
    x = AutoImageProcessor.from_pretrained(str(out))(pyav_frames(clip), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        probs = model(pixel_values=x).logits.softmax(-1)[0]  # (C,)
    delta = max(abs(float(probs[i]) - ours[n]) for i, n in enumerate(names))
    assert delta <= TOL, delta

    pipe = pipeline("video-classification", model=str(out))
    pipe.video_processor = None  # its video processor decodes with torchcodec only; None: PyAV + image processor
    got = {r["label"]: r["score"] for r in pipe(clip, top_k=len(names))}
    assert max(abs(got[n] - ours[n]) for n in names) <= TOL


def test_videomae_encoder_directory_keeps_its_fc_norm(tmp_path):
    from mm_ptft.encoders import build_encoder
    from mm_ptft.encoders.video import VIDEO_ENCODERS

    torch.manual_seed(0)
    enc = build_encoder(VIDEO_ENCODERS, {"name": "hf", "config": {"model_type": "videomae", **SIZES}}, "model.video")
    with torch.no_grad():
        enc.fc_norm.weight.uniform_(0.5, 1.5)
    enc.save_pretrained(tmp_path / "enc")
    again = build_encoder(VIDEO_ENCODERS, {"name": "hf", "name_or_path": str(tmp_path / "enc")}, "model.video")
    x = torch.randn(2, 4, 3, 32, 32)
    enc.eval(), again.eval()
    with torch.no_grad():
        tokens = enc.model(pixel_values=x).last_hidden_state  # (2, N, D)
        assert torch.allclose(enc({"video": x}).pooled, enc.fc_norm(tokens.mean(1)), atol=1e-6)
        assert torch.allclose(again({"video": x}).pooled, enc({"video": x}).pooled, atol=1e-6)


def test_timesformer_hf_export_loads(tmp_path):
    from transformers import AutoModelForVideoClassification

    run_dir = train(tmp_path / "run", {"name": "hf", "config": {"model_type": "timesformer", **SIZES}})
    out = export_run(run_dir, "hf", tmp_path / "hf")
    assert json.loads((out / "mm_ptft.json").read_text())["parity"]["max_abs_diff_prob"] <= TOL
    assert type(AutoModelForVideoClassification.from_pretrained(str(out))).__name__ == "TimesformerForVideoClassification"


def test_built_in_encoders_refuse_hf_and_export_onnx_torchscript_mm_ptft(tmp_path):
    run_dir = train(tmp_path / "run", {"name": "tiny_3d", "widths": [8, 16], "img_size": 32})
    with pytest.raises(ExportError, match="--format hf: Tiny3DCNN.*not a Hugging Face model.*--format mm_ptft"):
        export_run(run_dir, "hf", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    for fmt in ("onnx", "torchscript"):
        path = export_run(run_dir, fmt, tmp_path / fmt)
        desc = json.loads((tmp_path / f"{fmt}.json").read_text())
        assert [i["name"] for i in desc["inputs"]] == ["video", "video_mask"] and desc["check"]["max_abs_diff"] < 1e-4
        assert os.path.isfile(path)
    assert os.path.isfile(export_run(run_dir, "mm_ptft", tmp_path / "mm") / "model.safetensors")
