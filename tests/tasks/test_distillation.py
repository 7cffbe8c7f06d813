"""Knowledge distillation: the loss against a hand computation, a student distilled from a tiny text teacher
trains (its KD loss falls, accuracy beats chance), the teacher stays frozen, the run exports its student.

Distilled vs student-alone accuracy is *not* asserted: on the tiny generated topics data it varies by seed
(see recipes/distillation/README.md for measured numbers)."""
from __future__ import annotations

import json
import math
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mm_ptft.config import ConfigError
from mm_ptft.heads.distillation import kd_loss
from mm_ptft.run import load_config, load_run, train
from mm_ptft.run.export import sidecar
from mm_ptft.tasks.distillation import Distillation

from mm_paths import ROOT, TEXT_TINY

RECIPE = Path(ROOT) / "recipes" / "distillation"
STUDENT = "{text: {name: tiny, dim: 32, depth: 1, heads: 2, max_length: 64}, dropout: 0.0}"


def test_kd_loss_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)  # (B, C)
    T = 3.0
    ps = np.exp(s.numpy() / T) / np.exp(s.numpy() / T).sum(-1, keepdims=True)
    pt = np.exp(t.numpy() / T) / np.exp(t.numpy() / T).sum(-1, keepdims=True)
    ref = (pt * (np.log(pt) - np.log(ps))).sum(-1).mean() * T * T  # KL(teacher || student), batch mean, * T^2
    assert float(kd_loss(s, t, T)) == pytest.approx(ref, rel=1e-5)
    assert float(kd_loss(t, t, T)) == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher")
    train(load_config(TEXT_TINY, [f"output_dir={out}", "data.generate.n_train=400", "data.generate.n_eval=80",
                                  "train.epochs=3", "optim.lr=0.003", "train.report=false"]))
    return out


def _distill(teacher: Path, out: Path, *extra: str) -> dict:
    main = runpy.run_path(str(RECIPE / "train.py"))["main"]
    return main([str(RECIPE / "tiny.yaml"), f"output_dir={out}", f"model.teacher_run={teacher}",
                 f"model.student={STUDENT}", "train.epochs=3", "train.log_every=2", "train.report=false", *extra])


def test_distilled_student_trains_teacher_frozen_and_exports(teacher, tmp_path):
    out = tmp_path / "kd"
    results = _distill(teacher, out)
    assert results["accuracy"] >= 0.45, results  # four balanced topics: chance is 0.25
    kd = [r["kd_loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
          if r.get("kind") == "train" and "kd_loss" in r]
    assert len(kd) >= 6 and np.mean(kd[-3:]) < 0.8 * np.mean(kd[:3]), kd  # the student moves toward the teacher

    cfg, prepared, _ = load_run(out)
    task = prepared.task
    assert not any(p.requires_grad for p in task.teacher.parameters())
    task.train()
    assert not task.teacher.training and task.student.training
    _, teacher_prep, _ = load_run(teacher)  # the teacher's weights are those of its own run, untouched
    for (name, p), q in zip(task.teacher.state_dict().items(), teacher_prep.task.state_dict().values()):
        assert torch.equal(p, q), name
    assert cfg.data["labels"] == load_config(teacher / "config.yaml").data.labels  # resolved data saved
    n_student = sum(p.numel() for p in task.student.parameters())
    assert n_student < sum(p.numel() for p in task.teacher.parameters()) / 2

    from mm_ptft.run.export import export_run

    path = export_run(out, "onnx")  # a distilled run exports the student alone
    meta = json.loads(sidecar(path).read_text())
    assert meta["task"] == "text_classification" and meta["check"]["max_abs_diff"] < 1e-4

    task.eval()
    with torch.no_grad():
        rows = Distillation.predict(cfg, prepared, ["the rocket reached orbit around the moon"])
    assert rows[0]["label"] in cfg.data["labels"]


def test_loss_parts_and_alpha(teacher, tmp_path):
    cfg = load_config(RECIPE / "tiny.yaml", [f"output_dir={tmp_path}", f"model.teacher_run={teacher}",
                                            f"model.student={STUDENT}", "model.alpha=0.25", "model.temperature=4"])
    prepared = Distillation.prepare(cfg)
    batch = prepared.collate([prepared.train_data[i] for i in range(8)])
    out = {k: v.detach() for k, v in prepared.task.train()(batch).items()}
    assert set(out) >= {"loss", "kd_loss", "ce_loss", "logits"}
    assert float(out["loss"]) == pytest.approx(0.25 * float(out["kd_loss"]) + 0.75 * float(out["ce_loss"]), rel=1e-6)
    assert float(out["ce_loss"]) == pytest.approx(float(F.cross_entropy(out["logits"], batch["labels"])), rel=1e-6)
    assert math.isfinite(float(out["kd_loss"])) and float(out["kd_loss"]) > 0


def test_config_errors_name_the_problem(teacher, tmp_path):
    base = [f"output_dir={tmp_path}"]
    with pytest.raises(ConfigError, match="model.teacher_run is empty"):
        Distillation.prepare(load_config(RECIPE / "tiny.yaml", [*base, "model.teacher_run=''", f"model.student={STUDENT}"]))
    from mm_ptft.encoders.text import train_wordpiece

    train_wordpiece(["other words entirely"], 50).save_pretrained(str(tmp_path / "tok"))
    other = "{text: {name: tiny, dim: 32, depth: 1, heads: 2, tokenizer: %s}}" % (tmp_path / "tok")
    with pytest.raises(ConfigError, match="student's tokenizer .* differs from the teacher's"):
        Distillation.prepare(load_config(RECIPE / "tiny.yaml", [*base, f"model.teacher_run={teacher}",
                                                               f"model.student={other}"]))
    with pytest.raises(ConfigError, match="model.alpha=1.5"):
        Distillation.prepare(load_config(RECIPE / "tiny.yaml", [*base, f"model.teacher_run={teacher}",
                                                               f"model.student={STUDENT}", "model.alpha=1.5"]))


def test_image_student_with_mixup(tmp_path):
    """An image teacher; MixUp is applied once so teacher and student see the same mixed images."""
    recipe = Path(ROOT) / "recipes" / "image_classification" / "tiny.yaml"
    fast = ["train.max_steps=3", "train.report=false"]
    train(load_config(recipe, [f"output_dir={tmp_path / 't'}", "data.generate.n_train=48", "data.generate.n_eval=8", *fast]))
    cfg = load_config(RECIPE / "tiny.yaml", [f"output_dir={tmp_path / 's'}", f"model.teacher_run={tmp_path / 't'}",
                                            "model.student={image: {name: tiny_cnn, widths: [8, 16], img_size: 32}}",
                                            "data={augment: {mixup_alpha: 0.2}}", *fast])
    prepared = Distillation.prepare(cfg)
    task = prepared.task.train()
    seen = []
    task.teacher.register_forward_pre_hook(lambda m, args: seen.append(args[0]["image"]))
    batch = prepared.collate([prepared.train_data[i] for i in range(6)])
    out = task(batch)
    assert batch["labels"].dim() == 1 and not torch.equal(seen[0], batch["image"])  # the teacher saw mixed images
    assert task.student.mix is not None and math.isfinite(float(out["kd_loss"].detach()))
    out["loss"].backward()
    assert all(p.grad is None for p in task.teacher.parameters())
    assert any(p.grad is not None for p in task.student.parameters())
