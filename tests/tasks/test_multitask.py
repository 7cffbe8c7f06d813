"""The multitask recipe end to end: text classification + text regression on one tiny shared text encoder
trains through train.py and beats chance (accuracy 0.25 on four balanced topics) and the mean predictor
(R² 0) in one evaluation; ``mm-ptft eval`` of the run reproduces it; a run resumed from a mid-epoch
checkpoint ends with the same weights (sampler state included); bad configs raise errors naming the key."""
from __future__ import annotations

import json
import runpy
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mm_ptft.config import ConfigError
from mm_ptft.run import evaluate, load_config, predict, train
from mm_ptft.tasks.multitask import Multitask
from mm_ptft.train.rundir import final_results

from mm_paths import ROOT

RECIPE = Path(ROOT) / "recipes" / "multitask"
SMALL = ["train.report=false", "tasks.topic.data.generate.n_train=400", "tasks.topic.data.generate.n_eval=100",
         "tasks.warmth.data.generate.n_train=200", "tasks.warmth.data.generate.n_eval=100"]


def cfg(out: Path, *extra: str):
    return load_config(str(RECIPE / "tiny.yaml"), [f"output_dir={out}", *SMALL, *extra])


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("multitask") / "run"
    main = runpy.run_path(str(RECIPE / "train.py"))["main"]
    return out, main([str(RECIPE / "tiny.yaml"), f"output_dir={out}", *SMALL])


def test_tiny_recipe_beats_chance_and_the_mean_predictor_on_both_tasks(run):
    out, results = run
    assert results["topic/accuracy"] >= 0.4, results  # chance: 0.25
    assert results["warmth/r2"] >= 0.3, results  # the mean predictor: 0
    assert {"topic/macro_f1", "topic/loss", "warmth/mse", "warmth/loss", "loss"} <= set(results)
    best = json.loads((out / "checkpoints" / "best.json").read_text())
    assert "topic/accuracy" in best  # train.metric_for_best picked the checkpoint
    log = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in log if r["kind"] == "train"]
    assert all({"topic_loss", "warmth_loss"} <= set(r) for r in train_rows[1:])  # every logged window mixes both


def test_eval_of_the_run_reproduces_its_metrics_from_the_saved_config(run):
    out, _ = run
    saved = load_config(str(out / "config.yaml"))
    assert saved.tasks["topic"].data["labels"] == ["cooking", "finance", "space", "sports"]  # learned, kept
    assert saved.tasks["warmth"].data["target_mean"] is not None
    best = json.loads((out / "checkpoints" / "best.json").read_text())
    again = evaluate(out)  # the best checkpoint, rebuilt through each task's own recipe
    assert again["topic/accuracy"] == pytest.approx(best["topic/accuracy"])
    assert again["warmth/r2"] > 0.3


def test_predict_gives_every_tasks_prediction_without_the_training_data(run, tmp_path):
    out, _ = run
    moved = tmp_path / "moved"  # a run copied elsewhere, its generated data left behind
    shutil.copytree(out, moved, ignore=shutil.ignore_patterns("generated_data"))
    rows = predict(moved, ["A hot scorching sweltering day.", "A freezing icy frosty day."])
    assert all(set(r) == {"topic", "warmth"} for r in rows)
    assert rows[0]["topic"]["label"] in ["cooking", "finance", "space", "sports"]
    assert sum(rows[0]["topic"]["scores"].values()) == pytest.approx(1.0, abs=1e-5)
    assert rows[1]["warmth"]["prediction"] < rows[0]["warmth"]["prediction"]


def test_the_tasks_share_one_encoder(tmp_path):
    prepared = Multitask.prepare(cfg(tmp_path / "run"))
    tasks = prepared.task.tasks
    assert tasks["topic"].encoder is tasks["warmth"].encoder
    assert list(prepared.task.encoders()) == ["text"]
    n = len(prepared.train_data)  # the mixture lists task by task; the trainer's sampler shuffles it
    batch = prepared.collate([prepared.train_data[i] for i in (*range(20), *range(n - 20, n))])
    assert set(batch) == {"topic", "warmth"} and batch["topic"]["text"].ndim == 2  # {task: sub-batch}


def _weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / f"step_{step:08d}" / "model.safetensors"))


@pytest.mark.parametrize("sampling", ["temperature", "round_robin"])
def test_resume_from_a_mid_epoch_checkpoint_gives_identical_weights(tmp_path, sampling):
    """8 steps of an 18-step epoch, checkpoints every 3: resuming from step 3 (mid-epoch: the loader's
    position and the mixture/round-robin order restored) must end where the uninterrupted run ends."""
    extra = [f"data.sampling={sampling}", "train.max_steps=8", "train.save_every=3", "train.eval_every=8",
             "train.keep_last=10", "train.batch_size=16", "sched.warmup_steps=2", "tasks.topic.data.generate.n_eval=20",
             "tasks.warmth.data.generate.n_eval=20"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(cfg(straight, *extra))
    shutil.copytree(straight / "checkpoints" / "step_00000003", resumed / "checkpoints" / "step_00000003")
    shutil.copy(straight / "config.yaml", resumed / "config.yaml")
    state = torch.load(resumed / "checkpoints" / "step_00000003" / "trainer_state.pt", weights_only=True)
    assert state["loader"] is not None and state["batches_done"] == 3  # really mid-epoch
    train(cfg(resumed, *extra, "train.resume=true"))
    a, b = _weights(straight, 8), _weights(resumed, 8)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("override, message", [
    ("tasks.topic.recipe=text_clasification", r"tasks.topic.recipe: unknown task 'text_clasification'"),
    ("tasks.topic.recipe=multitask", r"tasks.topic.recipe='multitask': name a single-task recipe"),
    ("tasks.topic.data.generate=null", r"tasks.topic \(text_classification\): data.labels is empty and there is no "
                                       r"data.train_file"),
    ("tasks.warmth.data.txt_column=text", r"tasks.warmth: unknown config key 'data.txt_column'"),
    ("tasks.warmth.model.text={name: tiny}", r"tasks.warmth.model.text: the tasks share one encoder"),
    ("model.text=null", r"model.text is not set, but tasks.topic \(text_classification\) needs a text encoder"),
    ("train.metric_for_best=topics/accuracy", r"train.metric_for_best='topics/accuracy'"),
    ("data.sampling=uniform", r"data.sampling='uniform'"),
])
def test_bad_config_names_the_key(tmp_path, override, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        Multitask.prepare(cfg(tmp_path / "run", override))


def test_no_tasks_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="tasks is empty"):
        Multitask.prepare(load_config({"task": "multitask", "output_dir": str(tmp_path)}))


AUDIO = {"audio": {"name": "crnn", "sample_rate": 16000, "input_kind": "features", "n_mels": 40, "dim": 32, "depth": 1,
                   "subsample": 2}}
SPEECH = {"recipe": "speech_recognition", "data": {"generate": {
    "name": "tone_speech", "n_train": 8, "n_eval": 4, "sample_rate": 16000, "max_words": 1}}}
IMAGE = {"image": {"name": "tiny_cnn", "widths": [16, 32, 48, 64], "img_size": 64, "out_indices": [0, 1, 2]}}
BOXES = {"recipe": "detection", "data": {"generate": {"name": "detection_shapes", "n_train": 8, "n_eval": 4, "size": 64}},
         "model": {"detector": {"name": "faster_rcnn", "anchor_scale": 4.0, "representation_size": 32},
                   "neck_channels": 16, "min_size": [64], "max_size": 64}}


def _shapes(modality: str, **generate) -> dict:
    """An audio-only or image-only shape classifier (the multimodal classification recipe on one modality)."""
    return {"recipe": "multimodal_classification", "model": {"fusion": {"name": "concat", "out_dim": 16}},
            "data": {"modalities": [modality], "generate": {"name": "shapes_captions", "n_train": 8, "n_eval": 4,
                                                            **generate}}}


@pytest.mark.parametrize("modality, encoders, other, expected", [
    ("audio", AUDIO, ("speech", SPEECH), {"speech/wer", "speech/cer", "speech/loss"}),  # CTC
    ("image", IMAGE, ("boxes", BOXES), {"boxes/map", "boxes/map_50"}),  # detection: no eval loss
], ids=["ctc", "detection"])
def test_other_heads_share_one_encoder_with_a_classifier(tmp_path, modality, encoders, other, expected):
    """CTC speech recognition beside an audio-only shape classifier, detection beside an image-only one: one
    encoder serves both recipes' data pipelines; a round-robin batch of each task trains the shared encoder,
    and one evaluation gives both tasks' metrics."""
    from mm_ptft.train.trainer import Trainer

    shape = _shapes(modality, **({"seconds": 0.3} if modality == "audio" else {"image_size": 64}))
    c = load_config({"task": "multitask", "output_dir": str(tmp_path / "run"), "seed": 0,
                     "train": {"batch_size": 4, "report": False, "precision": "fp32", "device": "cpu"},
                     "data": {"sampling": "round_robin"}, "model": encoders,
                     "tasks": {"shape": shape, other[0]: other[1]}})
    prepared = Multitask.prepare(c)
    task = prepared.task
    assert list(task.encoders()) == [modality]
    batches = list(Trainer.from_prepared(prepared, c).train_loader)[:2]
    first, second = sorted(["shape", other[0]])
    assert [list(b) for b in batches] == [[first], [second]]  # round-robin: one task per batch, in turn
    task.train()
    enc = task.encoders()[modality]
    for batch in batches:
        task.zero_grad()
        task(batch)["loss"].backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters()), list(batch)
    results = Trainer.from_prepared(prepared, c, train=False).evaluate()
    assert expected | {"shape/accuracy", "shape/loss", "loss"} <= set(results)


@pytest.mark.slow
@pytest.mark.parametrize("sampling", ["round_robin", "temperature"])
def test_two_processes_train_and_evaluate_every_task(tmp_path, sampling):
    """torchrun, 2 CPU processes (gloo): round-robin batches split over the ranks, mixed batches whose ranks hold
    different tasks (unused heads on a rank); one synced evaluation of both tasks."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mm_ptft.cli",
           "train", str(RECIPE / "tiny.yaml"), f"output_dir={out}", f"data.sampling={sampling}", "train.max_steps=4",
           "train.eval_every=4", "train.device=cpu", "train.batch_size=8", *SMALL]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = final_results(out)
    assert {"topic/accuracy", "warmth/r2", "loss"} <= set(final)
