"""Each pretraining recipe's tiny.yaml runs end to end through its train.py and beats chance;
its saved encoders load into the fine-tuning recipes by path."""
from __future__ import annotations

import json
import math
import os
import runpy
from pathlib import Path

import pytest
import torch
from mm_ptft.train.rundir import final_results

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"
N_EVAL = 200  # eval pairs in every tiny.yaml: retrieval chance R@1 = 1/N_EVAL


@pytest.fixture(autouse=True, scope="module")
def _shared_data_and_one_thread(tmp_path_factory):
    """Generate the paired shapes once for all runs; one intra-op thread (tiny models, shared CPU)."""
    old_env, old_threads = os.environ.get("MM_PTFT_DATA"), torch.get_num_threads()
    os.environ["MM_PTFT_DATA"] = str(tmp_path_factory.mktemp("shared_data"))
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old_threads)
    if old_env is None:
        os.environ.pop("MM_PTFT_DATA", None)
    else:
        os.environ["MM_PTFT_DATA"] = old_env


def run_recipe(name: str, out: Path, *overrides: str, config: str = "tiny.yaml") -> dict:
    main = runpy.run_path(str(RECIPES / name / "train.py"))["main"]
    return main([str(RECIPES / name / config), f"output_dir={out}", "train.report=false", *overrides])


@pytest.fixture(scope="module")
def contrastive_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("contrastive")
    run_recipe("pretrain_contrastive", out, "train.epochs=5")
    return out


def test_contrastive_tiny_retrieval_beats_chance(contrastive_run: Path) -> None:
    r = final_results(contrastive_run)
    chance = 1 / N_EVAL
    assert r["image_to_text_r1"] > 5 * chance and r["text_to_image_r1"] > 5 * chance, r
    assert r["image_to_text_r10"] > 2 * 10 * chance, r
    assert 0 <= r["zeroshot_accuracy"] <= 1
    assert sorted(p.name for p in (contrastive_run / "encoders").iterdir()) == ["image", "text"]


def _same_weights(encoder: torch.nn.Module, directory: Path) -> None:
    from safetensors.torch import load_file

    saved = load_file(str(directory / "model.safetensors"))
    state = encoder.state_dict()
    assert saved and set(saved) <= set(state)
    for k, v in saved.items():
        torch.testing.assert_close(state[k], v, msg=k)


def test_pretrained_encoders_load_into_finetuning_recipes(contrastive_run: Path, tmp_path: Path) -> None:
    from mm_ptft.run import load_config
    from mm_ptft.tasks import get_recipe

    enc = contrastive_run / "encoders"
    text_cfg = load_config(RECIPES / "text_classification" / "tiny.yaml",
                           [f"output_dir={tmp_path / 'text'}", f"model.text={{name_or_path: {enc / 'text'}}}"])
    text = get_recipe("text_classification").prepare(text_cfg).task.encoder
    _same_weights(text, enc / "text")
    # the image encoder fine-tunes on the labelled shapes of the same generated manifest
    manifest = next(Path(os.environ["MM_PTFT_DATA"]).glob("shapes_captions-*/train.jsonl"))
    img_cfg = load_config(RECIPES / "image_classification" / "tiny.yaml",
                          [f"output_dir={tmp_path / 'img'}", "data.generate=null", f"data.train_file={manifest}",
                           "data.path_column=image", "data.verify_images=false",
                           f"model.image={{name_or_path: {enc / 'image'}}}"])
    image = get_recipe("image_classification").prepare(img_cfg).task.encoder
    _same_weights(image, enc / "image")


def test_masked_tiny_mlm_beats_uniform_guessing(tmp_path: Path) -> None:
    r = run_recipe("pretrain_masked", tmp_path)
    vocab = len(__import__("transformers").AutoTokenizer.from_pretrained(str(tmp_path / "encoders" / "text")))
    assert r["mlm_loss"] < 0.7 * math.log(vocab), (r, vocab)  # uniform guessing: log(V)


def _evals(run: Path) -> list[dict]:
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [e for e in logged if e.get("kind") == "eval"]


def test_masked_tiny_clm_perplexity_falls_well_below_uniform(tmp_path: Path) -> None:
    r = run_recipe("pretrain_masked", tmp_path, config="tiny_clm.yaml")
    vocab = len(__import__("transformers").AutoTokenizer.from_pretrained(str(tmp_path / "encoders" / "text")))
    assert r["clm_perplexity"] < 0.2 * vocab, (r, vocab)  # uniform guessing: perplexity = V
    assert r["clm_perplexity"] == pytest.approx(math.exp(r["clm_loss"]), rel=0.05)  # batches differ in tokens
    ppl = [e["clm_perplexity"] for e in _evals(tmp_path)]
    assert len(ppl) >= 3 and ppl[-1] < ppl[0], ppl


def test_masked_tiny_mlm_plus_sop_learns_both(tmp_path: Path) -> None:
    r = run_recipe("pretrain_masked", tmp_path, config="tiny_mlm_sop.yaml")
    vocab = len(__import__("transformers").AutoTokenizer.from_pretrained(str(tmp_path / "encoders" / "text")))
    assert r["mlm_loss"] < 0.5 * math.log(vocab), (r, vocab)
    assert r["sop_loss"] < 0.5 * math.log(2) and r["sop_rows_skipped"] == 0, r  # chance: log 2


def test_joint_tiny_logs_each_objective_and_beats_chance(tmp_path: Path) -> None:
    r = run_recipe("pretrain_joint", tmp_path, "train.max_steps=40", "train.eval_every=40")
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_keys = set().union(*(e.keys() for e in logged if e.get("kind", e.get("split")) == "train"))
    assert {"clip_image_text_loss", "clip_audio_text_loss", "mlm_loss", "loss"} <= train_keys, train_keys
    chance = 1 / N_EVAL
    assert r["audio_to_text_r1"] > 5 * chance and r["image_to_text_r1"] > 3 * chance, r
    assert sorted(p.name for p in (tmp_path / "encoders").iterdir()) == ["audio", "image", "text"]
    # the audio encoder loads by path too
    from mm_ptft.encoders.audio import AUDIO_ENCODERS
    from mm_ptft.encoders.base import build_encoder

    _same_weights(build_encoder(AUDIO_ENCODERS, {"name_or_path": str(tmp_path / "encoders" / "audio")}, "model.audio"),
                  tmp_path / "encoders" / "audio")


def test_joint_tiny_takes_nsp_beside_clip_and_mlm(tmp_path: Path) -> None:
    """nsp joins the joint run's objectives by config: it reads the text of every source that has text."""
    r = run_recipe("pretrain_joint", tmp_path, "train.max_steps=6", "train.eval_every=6", "train.log_every=1",
                   "model.objectives.nsp={name: nsp, weight: 0.5}")
    train = [e for e in (json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines())
             if e.get("kind") == "train"]
    assert all("nsp_loss" in e for e in train) and len(train) == 6
    assert {"nsp_loss", "mlm_loss", "nsp_rows_skipped", "audio_to_text_r1"} <= set(r), r
    assert 0.3 < r["nsp_loss"] < 1.2 and r["nsp_rows_skipped"] == 0  # about log 2 this early


@pytest.mark.parametrize("name", ["pretrain_contrastive", "pretrain_masked", "pretrain_joint"])
def test_gpu_config_is_valid(name: str) -> None:
    from mm_ptft.run import load_config

    cfg = load_config(RECIPES / name / "config.yaml")
    assert cfg.task == name and cfg.train.batch_size >= 64 and not cfg.data.generate


def test_predict_embeds_captions_and_media(contrastive_run: Path) -> None:
    from mm_ptft.run import predict

    manifest = next(Path(os.environ["MM_PTFT_DATA"]).glob("shapes_captions-*/eval.jsonl"))
    row = json.loads(manifest.read_text().splitlines()[0])
    out = predict(contrastive_run, [row["caption"], str(manifest.parent / row["image"])])
    assert [r["modality"] for r in out] == ["text", "image"]
    text, image = (torch.tensor(r["embedding"]) for r in out)
    assert abs(float(text.norm()) - 1) < 1e-3 and abs(float(image.norm()) - 1) < 1e-3
    assert set(out[1]["scores"]) == {"circle", "cross", "square", "triangle"} and "scores" not in out[0]
    assert sum(out[1]["scores"].values()) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.slow
def test_joint_tiny_under_torchrun_with_sources_missing_on_some_ranks(tmp_path: Path) -> None:
    """2 gloo ranks, 2 samples per rank and step: some ranks' batches lack a source that the other
    rank has, so the contrastive all-gathers must be joined with empty shares (else: deadlock), and
    the logged loss parts differ between ranks (the trainer averages over their union)."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29631", "-m",
           "mm_ptft.cli", "train", str(RECIPES / "pretrain_joint" / "tiny.yaml"), f"output_dir={tmp_path}",
           "train.max_steps=20", "train.eval_every=20", "train.batch_size=2", "train.log_every=1",
           "train.device=cpu", "train.report=false"]  # per-step logs: the ranks' loss parts differ
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, timeout=400, env=env, cwd=ROOT)
    r = final_results(tmp_path)
    assert {"audio_to_text_r1", "image_to_text_r1", "mlm_loss"} <= set(r)
