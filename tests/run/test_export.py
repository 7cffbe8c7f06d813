"""Export (ONNX via onnxruntime, TorchScript) of trained tiny runs matches PyTorch on fresh inputs of another
batch size and length than the trace; int8 quantisation really quantises; unsupported cases name the problem."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mm_ptft.cli import main as cli_main
from mm_ptft.run import load_config
from mm_ptft.run.export import ExportError, export_run, export_spec, run_onnx, sidecar
from mm_ptft.run import load_run, train

from mm_paths import ROOT, TEXT_TINY

ATOL = 1e-4  # fp32 export vs eager PyTorch, on logits / log-probs
FAST = ["train.max_steps=3", "train.report=false", "train.num_workers=0"]


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    """The tiny text recipe (a 2-layer random-init BERT) trained for 3 steps."""
    out = tmp_path_factory.mktemp("text_export")
    train(load_config(TEXT_TINY, [f"output_dir={out}", "data.generate.n_train=96", "data.generate.n_eval=16", *FAST]))
    return out


def _text_batch(meta: dict, texts: list[str]) -> dict[str, torch.Tensor]:
    """Tokenise with the exported tokenizer directory and pad as the JSON says (no mm_ptft code)."""
    from transformers import AutoTokenizer

    pre = meta["preprocessing"]["text"]
    tok = AutoTokenizer.from_pretrained(pre["tokenizer_dir"])
    ids = [tok(t, add_special_tokens=True)["input_ids"][: pre["max_length"]] for t in texts]
    L = max(map(len, ids))
    input_ids = torch.full((len(ids), L), pre["pad_token_id"], dtype=torch.long)  # (B, L)
    mask = torch.zeros((len(ids), L), dtype=torch.long)  # (B, L)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
    return {"text": input_ids, "text_mask": mask}


TEXTS = ["the chef baked bread in the oven with garlic and a little salt for dinner tonight",
         "the rocket reached orbit", "a goal in the final minute won the match"]


def test_text_onnx_matches_pytorch(text_run, tmp_path):
    path = export_run(text_run, "onnx", tmp_path / "text.onnx")
    meta = json.loads(sidecar(path).read_text())
    assert [i["name"] for i in meta["inputs"]] == ["input_ids", "attention_mask"]
    assert meta["inputs"][0]["shape"] == ["batch", "sequence"] and meta["outputs"] == ["logits"]
    assert meta["labels"] == load_config(text_run / "config.yaml").data.labels
    assert meta["check"]["max_abs_diff"] < ATOL
    batch = _text_batch(meta, TEXTS)  # 3 rows, another length than the 2-row trace
    _, prepared, _ = load_run(text_run)
    with torch.no_grad():
        ref = prepared.task(batch)["logits"]  # (3, C)
    got = run_onnx(path, {"input_ids": batch["text"], "attention_mask": batch["text_mask"]})[0]
    assert got.shape == tuple(ref.shape)
    np.testing.assert_allclose(got, ref.numpy(), atol=ATOL, rtol=0)


def test_text_torchscript_and_int8(text_run, tmp_path):
    path = export_run(text_run, "torchscript", tmp_path / "text.pt")
    meta = json.loads(sidecar(path).read_text())
    batch = _text_batch(meta, TEXTS)
    _, prepared, _ = load_run(text_run)
    with torch.no_grad():
        ref = prepared.task(batch)["logits"]  # (3, C)
        got = torch.jit.load(str(path))(batch["text"], batch["text_mask"])  # (3, C)
        torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
        q = export_run(text_run, "torchscript", tmp_path / "text.int8.pt", quantize="int8")
        qmodel = torch.jit.load(str(q))
        assert "quantized::linear_dynamic" in str(qmodel.inlined_graph)  # int8 weights, not a copy of fp32
        qlogits = qmodel(batch["text"], batch["text_mask"])  # (3, C)
    # int8 is an approximation: close, not equal (the tiny model's logits are O(0.1..1))
    assert 0 < float((qlogits - ref).abs().max()) < 0.1
    onnx_q = export_run(text_run, "onnx", tmp_path / "text.int8.onnx", quantize="int8")
    import onnx

    ops = {n.op_type for n in onnx.load(str(onnx_q)).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear"}, ops
    got_q = run_onnx(onnx_q, {"input_ids": batch["text"], "attention_mask": batch["text_mask"]})[0]
    assert np.abs(got_q - ref.numpy()).max() < 0.1


def test_cli_export_writes_model_and_description(text_run, tmp_path, capsys):
    out = tmp_path / "cli" / "m.onnx"
    assert cli_main(["export", str(text_run), "--format", "onnx", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["model"] == str(out) and out.is_file() and (tmp_path / "cli" / f"{out.name}.json").is_file()
    assert (tmp_path / "cli" / "m_tokenizer" / "tokenizer.json").is_file()


def test_image_onnx_and_torchscript_match(tmp_path):
    run = tmp_path / "image"
    recipe = os.path.join(ROOT, "recipes", "image_classification", "tiny.yaml")
    train(load_config(recipe, [f"output_dir={run}", "data.generate.n_train=48", "data.generate.n_eval=8", *FAST]))
    onnx_path = export_run(run, "onnx")
    ts_path = export_run(run, "torchscript")
    meta = json.loads(sidecar(onnx_path).read_text())
    assert meta["preprocessing"]["image"]["size"] == [32, 32] and len(meta["preprocessing"]["image"]["mean"]) == 3
    _, prepared, _ = load_run(run)
    x = torch.randn(5, 3, 32, 32)  # (B, 3, H, W): another batch size than the trace
    with torch.no_grad():
        ref = prepared.task({"image": x})["logits"]  # (5, C)
        np.testing.assert_allclose(run_onnx(onnx_path, {"pixel_values": x})[0], ref.numpy(), atol=ATOL, rtol=0)
        torch.testing.assert_close(torch.jit.load(str(ts_path))(x), ref, atol=ATOL, rtol=0)


def test_ctc_onnx_log_probs_match(tmp_path):
    run = tmp_path / "speech"
    recipe = os.path.join(ROOT, "recipes", "speech_recognition", "tiny.yaml")
    train(load_config(recipe, [f"output_dir={run}", "data.generate.n_train=24", "data.generate.n_eval=6",
                               "train.max_steps=2", "train.report=false", "train.num_workers=0"]))
    path = export_run(run, "onnx")
    meta = json.loads(sidecar(path).read_text())
    assert meta["vocab"][0] == "<blank>" and meta["outputs"] == ["log_probs", "frame_lengths"]
    _, prepared, _ = load_run(run)
    batch = prepared.collate([prepared.eval_data[i] for i in range(3)])  # 3 clips, padded
    n = batch["audio"].shape[-1] - 5  # another length than the trace
    batch = {"audio": batch["audio"][..., :n].contiguous(), "audio_lengths": batch["audio_lengths"].clamp(max=n)}
    with torch.no_grad():
        ref = prepared.task(batch)
    got, frames = run_onnx(path, {"audio": batch["audio"], "audio_lengths": batch["audio_lengths"]})
    np.testing.assert_allclose(got, ref["log_probs"].numpy(), atol=ATOL, rtol=0)
    assert frames.tolist() == ref["frame_lengths"].tolist()


def test_unsupported_task_and_options_are_named(text_run, tmp_path):
    with pytest.raises(ExportError, match="Linear: export supports classification"):
        export_spec(nn.Linear(2, 2))
    with pytest.raises(ExportError, match="--format 'tflite'"):
        export_run(text_run, "tflite")
    with pytest.raises(ExportError, match="--quantize 'int4'"):
        export_run(text_run, "onnx", quantize="int4")


def test_multimodal_torchscript_matches_and_onnx_stft_error_is_named(tmp_path):
    """Waveform audio + image + text: TorchScript traces; the ONNX exporter cannot write torch.stft."""
    run = tmp_path / "mm"
    recipe = os.path.join(ROOT, "recipes", "multimodal_classification", "tiny.yaml")
    train(load_config(recipe, [f"output_dir={run}", "data.generate.n_train=24", "data.generate.n_eval=6",
                               "train.max_steps=2", "train.report=false"]))
    path = export_run(run, "torchscript")
    meta = json.loads(sidecar(path).read_text())
    names = [i["name"] for i in meta["inputs"]]
    assert names == ["audio", "audio_lengths", "pixel_values", "input_ids", "attention_mask"]
    _, prepared, _ = load_run(run)
    batch = prepared.collate([prepared.eval_data[i] for i in range(3)])  # another batch size than the trace
    keys = ["audio", "audio_lengths", "image", "text", "text_mask"]
    with torch.no_grad():
        ref = prepared.task({k: batch[k] for k in keys})["logits"]  # (3, C)
        torch.testing.assert_close(torch.jit.load(str(path))(*[batch[k] for k in keys]), ref, atol=ATOL, rtol=0)
    with pytest.raises(ExportError, match=r"MultimodalClassifier with audio encoder TinyAudioEncoder.*torch\.stft"):
        export_run(run, "onnx")


def test_an_existing_out_file_is_refused_unless_overwrite_and_formats_keep_their_own_description(text_run, tmp_path):
    """--out onto a file the user has is refused (as an existing directory is) unless --overwrite; an ONNX and a
    TorchScript export with one stem each keep their own description."""
    mine = tmp_path / "model.onnx"
    mine.write_bytes(b"not yours")
    with pytest.raises(ExportError, match="exists; give another --out or pass --overwrite"):
        export_run(text_run, "onnx", mine, check=False)
    assert mine.read_bytes() == b"not yours"
    onnx = export_run(text_run, "onnx", mine, check=False, overwrite=True)
    ts = export_run(text_run, "torchscript", tmp_path / "model.pt", check=False)
    assert sidecar(onnx) != sidecar(ts)
    assert json.loads(sidecar(onnx).read_text())["format"] == "onnx"
    assert json.loads(sidecar(ts).read_text())["format"] == "torchscript"
