"""The public Python API (``mm_ptft.build_encoder``, ``load_encoder``, ``train``…): lazy on import, registries
full on first use, and everything it builds saves and reloads to identical outputs."""
import json
import subprocess
import sys

import pytest
import torch
import yaml

import mm_ptft
from mm_ptft.config import ConfigError
from mm_ptft.data.text import TextCollator
from mm_ptft.encoders.image import IMAGE_ENCODERS
from mm_ptft.tasks.text_classification import TextClassificationConfig
from mm_ptft.types import AUDIO, AUDIO_LENGTHS, IMAGE
from mm_ptft.train.rundir import final_results

from mm_paths import ROOT, TEXT_TINY

CORPUS = ["the cat sat on the mat", "a dog ran in the park", "stock market bond rally", "bake bread in an oven"] * 5
BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 64}
# (modality, registry name, kwargs): one per kind of encoder the API is promised to round-trip
BUILDS = {
    "text_tiny": ("text", "tiny", {"dim": 32, "depth": 1, "heads": 2, "max_length": 32, "vocab_size": 120}),
    "text_hf": ("text", "hf", {"config": BERT, "vocab_size": 120, "pooling": "mean"}),
    "image_timm": ("image", "timm", {"name_or_path": "resnet10t", "pretrained": False}),
    "image_torchvision": ("image", "torchvision", {"name_or_path": "resnet18", "weights": None, "img_size": 64}),
    "image_tiny_cnn": ("image", "tiny_cnn", {"widths": [8, 16, 32, 32], "img_size": 64}),
    "audio_tiny": ("audio", "tiny", {"dim": 32, "depth": 1, "heads": 2, "n_mels": 16}),
}


def _subprocess(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "PYTHONPATH": ROOT})
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _inputs(enc, modality):
    g = torch.Generator().manual_seed(0)
    if modality == "text":
        ids = enc.tokenizer(["the cat sat", "a dog ran in the park"])["input_ids"]
        return TextCollator(enc.tokenizer.pad_token_id)([{"text": i} for i in ids])
    if modality == "image":
        return {IMAGE: torch.randn(2, 3, 64, 64, generator=g)}
    return {AUDIO: torch.randn(2, 4000, generator=g), AUDIO_LENGTHS: torch.tensor([4000, 2500])}


def test_import_is_light_and_registries_are_full_on_first_use():
    """A fresh process: ``import mm_ptft`` loads neither the API nor transformers; the first API call fills every
    registry without importing a submodule first."""
    out = _subprocess(
        "import sys, json, mm_ptft\n"
        "light = not {'mm_ptft.api', 'transformers', 'mm_ptft.encoders'} & set(sys.modules)\n"
        "regs = {k: r.names() for k, r in mm_ptft.registries().items()}\n"
        "print(json.dumps({'light': light, 'regs': regs, 'listed': mm_ptft.list_components('image_encoder')}))\n")
    got = json.loads(out.strip().splitlines()[-1])
    assert got["light"]
    regs = got["regs"]
    for kind in ("text_encoder", "image_encoder", "audio_encoder", "objective", "fusion", "task", "optimizer"):
        assert regs.get(kind), (kind, regs)
    assert {"timm", "torchvision", "tiny_cnn"} <= set(regs["image_encoder"]) and got["listed"] == regs["image_encoder"]
    assert "text_classification" in regs["task"]


def test_train_is_the_training_package_and_the_api_function_in_any_import_order():
    out = _subprocess(
        "import sys, mm_ptft.train.trainer as T, mm_ptft\n"
        "from mm_ptft import train\n"
        "print(train is sys.modules['mm_ptft.train'], callable(mm_ptft.train), mm_ptft.train.trainer is T,\n"
        "      mm_ptft.train.__doc__.startswith('Training loop'))\n")
    assert out.split() == ["True", "True", "True", "True"]


@pytest.mark.parametrize("key", sorted(BUILDS))
def test_built_through_the_api_saves_and_reloads(key, tmp_path):
    modality, name, kwargs = BUILDS[key]
    torch.manual_seed(0)
    extra = {"corpus": CORPUS} if modality == "text" else {}
    enc = mm_ptft.build_encoder(modality, name, **kwargs, **extra).eval()
    assert enc.modality == modality and enc.spec == {"name": name, **kwargs}  # the runtime corpus is not spec
    enc.save_pretrained(tmp_path / "enc")
    again = mm_ptft.load_encoder(tmp_path / "enc").eval()
    assert type(again) is type(enc)
    batch = _inputs(enc, modality)
    with torch.no_grad():
        a, b = enc(batch), again(batch)
    assert torch.equal(a.pooled, b.pooled)
    if a.tokens is not None:
        assert torch.equal(a.tokens, b.tokens)


def test_an_encoder_built_by_a_registry_directly_saves(tmp_path):
    """Was: ``save_pretrained`` failed with AttributeError ``spec`` on ``REGISTRY.build()``."""
    enc = IMAGE_ENCODERS.build({"name": "tiny_cnn", "widths": [8, 8, 16, 16], "img_size": 32}).eval()
    assert enc.spec == {"name": "tiny_cnn", "widths": [8, 8, 16, 16], "img_size": 32}
    enc.save_pretrained(tmp_path / "enc")
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(enc({IMAGE: x}).pooled, mm_ptft.load_encoder(tmp_path / "enc").eval()({IMAGE: x}).pooled)


def test_an_encoder_built_outside_a_registry_says_how_to_build_one(tmp_path):
    from mm_ptft.encoders.image import TinyCNN

    with pytest.raises(ValueError, match="not built from a registry.*mm_ptft.build_encoder"):
        TinyCNN([8, 8, 16, 16], 32, None).save_pretrained(tmp_path / "enc")


def test_load_encoder_names_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an encoder directory"):
        mm_ptft.load_encoder(tmp_path)
    enc = mm_ptft.build_encoder("image", "tiny_cnn", widths=[8, 8, 16, 16], img_size=32)
    enc.save_pretrained(tmp_path / "enc")
    with pytest.raises(ValueError, match="holds a image encoder, not a text one"):
        mm_ptft.load_encoder(tmp_path / "enc", modality="text")


def test_load_config_from_a_dataclass_or_a_path_with_python_or_string_overrides(tmp_path):
    cfg = mm_ptft.load_config(TEXT_TINY, ["train.max_steps=3"], **{"optim.lr": 1e-5, "output_dir": str(tmp_path)})
    assert (cfg.train.max_steps, cfg.optim.lr, cfg.output_dir) == (3, 1e-5, str(tmp_path))
    again = mm_ptft.load_config(cfg, {"model.text.pooling": "cls"})
    assert isinstance(again, TextClassificationConfig) and again.model.text["pooling"] == "cls"
    assert again.optim.lr == 1e-5 and again.model.text["config"]["hidden_size"] == 64
    with pytest.raises(ConfigError, match="optim.lrr"):
        mm_ptft.load_config(TEXT_TINY, {"optim.lrr": 0.1})


def test_train_predict_evaluate_and_reload_through_the_api(tmp_path):
    run = tmp_path / "run"
    overrides = {"output_dir": str(run), "train.report": False, "train.max_steps": 6, "train.eval_every": 3,
                 "data.generate.n_train": 96, "data.generate.n_eval": 32, "sched.warmup_steps": 0}
    results = mm_ptft.train(TEXT_TINY, ["train.batch_size=16"], **overrides)
    assert results == final_results(run) and "accuracy" in results
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == 6 and saved["train"]["batch_size"] == 16
    assert mm_ptft.evaluate(run)["accuracy"] == pytest.approx(
        json.loads((run / "checkpoints" / "best.json").read_text())["accuracy"])
    rows = mm_ptft.predict(run, ["the chef baked bread"])
    assert len(rows) == 1 and "label" in rows[0]
    cfg, prepared, _ = mm_ptft.load_run(run, with_data=False)
    enc = mm_ptft.load_encoder(run)  # the run's one encoder, encoders/text/
    assert enc.modality == "text" and cfg.train.max_steps == 6
    batch = _inputs(enc, "text")
    with torch.no_grad():
        ref = prepared.task.encoders()["text"].eval()(batch).pooled
        assert torch.allclose(enc.eval()(batch).pooled, ref, atol=1e-6)
