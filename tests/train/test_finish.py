"""The run's finish (issue 31): encoders/ exported from memory only when the picked checkpoint holds exactly those
weights, report.md drawn in a child process; every artifact on disk and checked when ``train`` returns."""
import json

import pytest
import torch
from safetensors.torch import load_file

from mm_ptft.contracts import Callback
from mm_ptft.run import load_config, train
from mm_ptft.train import checkpoint as ckpt

from mm_paths import TEXT_TINY

KEY = "embeddings.word_embeddings.weight"


def cfg_for(data, out, *extra):
    return load_config(TEXT_TINY, [f"output_dir={out}", f"data.train_file={data['train_file']}",
                                   f"data.eval_file={data['eval_file']}", "train.batch_size=32", "train.max_steps=4",
                                   "train.eval_every=2", "train.log_every=1", *extra])


def test_a_finished_run_holds_every_artifact_and_exports_without_a_reload(topics_data, tmp_path, monkeypatch):
    """Best = last (accuracy rose): encoders/ equal the final checkpoint's weights, written without reloading or
    re-hashing it; the checkpoint verifies (meta.json SHA-256 recomputed by hashlib here) and resumes into a fresh
    model with the same weights; report.md and its PNGs are there, naming the final metrics."""
    import hashlib

    loads, verified = [], []
    monkeypatch.setattr(ckpt, "load_weights", lambda path, model: loads.append(path))
    real_verify = ckpt.verify
    monkeypatch.setattr(ckpt, "verify", lambda path: verified.append(path) or real_verify(path))
    run = tmp_path / "run"
    results = train(cfg_for(topics_data, run, "train.metric_for_best=loss", "train.greater_is_better=false"))
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    assert best["step"] == 4, "the setup needs the last evaluation to be the best"
    final = run / "checkpoints" / "step_00000004"
    assert loads == [] and final not in verified
    source = json.loads((run / "encoders" / "text" / "source.json").read_text())
    assert source["checkpoint"] == "checkpoints/step_00000004"
    saved, weights = load_file(str(run / "encoders" / "text" / "model.safetensors")), load_file(str(final / ckpt.WEIGHTS))
    assert torch.equal(saved[KEY], weights["encoder.model." + KEY])
    meta = json.loads((final / ckpt.META).read_text())
    for name, want in meta["files"].items():
        assert hashlib.sha256((final / name).read_bytes()).hexdigest() == want["sha256"], name
    assert "optimizer" in torch.load(final / ckpt.STATE, weights_only=True)
    record = json.loads((run / "final_metrics.json").read_text())
    assert record["checkpoint"] == "checkpoints/step_00000004" and record["accuracy"] == results["accuracy"]
    report = (run / "report.md").read_text()
    assert "## Final metrics (step 4, checkpoints/step_00000004)" in report and f"{results['accuracy']:.4f}" in report
    for png in ("train_curves.png", "eval_curves.png", "confusion_matrix.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    monkeypatch.undo()
    again = train(cfg_for(topics_data, run, "train.metric_for_best=loss", "train.greater_is_better=false",
                          "train.resume=true", "train.max_steps=6", "train.on_config_change=new"))
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6] and "accuracy" in again


class _Nudge(Callback):
    """Changes a weight in place once training is over (after the final checkpoint)."""

    nudged = None

    def on_train_end(self, trainer, results):
        weight = dict(trainer.task.named_parameters())["encoder.model." + KEY]
        with torch.no_grad():
            weight.add_(1.0)
        self.nudged = weight.detach().clone()


def test_weights_changed_after_the_last_checkpoint_are_not_exported(topics_data, tmp_path):
    """The reload is skipped only for unchanged weights: a change after the final checkpoint is seen (a version
    counter), and encoders/ come from the checkpoint (as eval/predict use), not from the changed memory."""
    from mm_ptft.run import build_trainer, fit_trainer, start
    from mm_ptft.tasks import get_recipe

    run = tmp_path / "run"
    cfg = cfg_for(topics_data, run, "train.report=false", "train.metric_for_best=loss", "train.greater_is_better=false")
    start(cfg)
    nudge = _Nudge()
    trainer = build_trainer(get_recipe(cfg.task).prepare(cfg), cfg, callbacks=[nudge])
    fit_trainer(trainer, cfg)
    saved = load_file(str(run / "encoders" / "text" / "model.safetensors"))
    weights = load_file(str(run / "checkpoints" / "step_00000004" / ckpt.WEIGHTS))
    assert torch.equal(saved[KEY], weights["encoder.model." + KEY])
    assert torch.equal(nudge.nudged, weights["encoder.model." + KEY] + 1.0)  # the change the export must not keep


class _Garble(Callback):
    """Leaves metrics.jsonl unreadable for the report (a half-written row)."""

    def on_train_end(self, trainer, results):
        with open(trainer.run_dir / "metrics.jsonl", "a") as f:
            f.write("{not json\n")


def test_a_report_that_fails_in_its_process_fails_the_run(topics_data, tmp_path):
    from mm_ptft.run import build_trainer, fit_trainer, start
    from mm_ptft.tasks import get_recipe

    cfg = cfg_for(topics_data, tmp_path / "run")
    start(cfg)
    trainer = build_trainer(get_recipe(cfg.task).prepare(cfg), cfg, callbacks=[_Garble()])
    with pytest.raises(RuntimeError, match=r"report.md for .* failed \(exit 1\).*JSONDecodeError"):
        fit_trainer(trainer, cfg)
