"""Trainer behaviour on the tiny text recipe: exact resume, accumulation, run directory, early stopping."""
import json

import pytest
import torch
from safetensors.torch import load_file

from mm_ptft.contracts import Callback
from mm_ptft.run import load_config
from mm_ptft.run import train
from mm_ptft.train.trainer import Trainer
from mm_ptft.train.rundir import final_results

from mm_paths import TEXT_TINY

NO_DROPOUT = ["model.dropout=0.0", "model.text.config.hidden_dropout_prob=0.0",
              "model.text.config.attention_probs_dropout_prob=0.0"]


def cfg_for(data, out, *extra):
    return load_config(TEXT_TINY, [f"output_dir={out}", f"data.train_file={data['train_file']}",
                                   f"data.eval_file={data['eval_file']}", "train.batch_size=16", "train.log_every=2",
                                   "train.report=false", *extra])


def final_weights(run_dir):
    ckpts = sorted((run_dir / "checkpoints").glob("step_*"))
    return load_file(str(ckpts[-1] / "model.safetensors"))


class Crash(Exception):
    pass


def crash_then_resume(data, out, steps, crash_at, monkeypatch):
    """Train with ``steps`` into ``out``, crash right after optimizer step ``crash_at``, resume to the end."""
    real_step = Trainer._optimizer_step

    def crashing(self):
        norm = real_step(self)
        if self.step == crash_at:
            raise Crash()
        return norm

    monkeypatch.setattr(Trainer, "_optimizer_step", crashing)
    with pytest.raises(Crash):
        train(cfg_for(data, out, *steps))
    monkeypatch.setattr(Trainer, "_optimizer_step", real_step)
    train(cfg_for(data, out, *steps, "train.resume=true"))


def test_resume_mid_epoch_gives_identical_weights(topics_data, tmp_path, monkeypatch):
    """N steps straight == N/2 steps, crash, resume to N (CPU): bitwise-identical weights."""
    steps = ["train.max_steps=12", "train.eval_every=5", "train.save_every=3"]
    train(cfg_for(topics_data, tmp_path / "straight", *steps))
    crash_then_resume(topics_data, tmp_path / "resumed", steps, 7, monkeypatch)  # after step 6's checkpoint, mid-epoch

    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the log has no duplicate steps after the resume
    steps_logged = [json.loads(ln)["step"] for ln in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
                    if json.loads(ln)["kind"] == "train"]
    assert steps_logged == sorted(set(steps_logged))


def test_grad_accumulation_matches_big_batch(topics_data, tmp_path):
    """2 micro-batches of 16 accumulate to the same update as one batch of 32 (no dropout)."""
    common = ["train.max_steps=3", "train.group_by_length=false", "train.grad_clip=0", *NO_DROPOUT]
    train(cfg_for(topics_data, tmp_path / "accum", *common, "train.grad_accum_steps=2"))
    train(cfg_for(topics_data, tmp_path / "big", *common, "train.batch_size=32"))
    a, b = final_weights(tmp_path / "accum"), final_weights(tmp_path / "big")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4)


def test_run_directory_contents(topics_data, tmp_path):
    out = tmp_path / "run"
    results = train(cfg_for(topics_data, out, "train.max_steps=6", "train.eval_every=3", "train.keep_last=1",
                            "train.report=true"))
    for name in ("config.yaml", "metrics.jsonl", "final_metrics.json", "report.md", "tokenizer", "encoders/text"):
        assert (out / name).exists(), name
    assert list((out / "tensorboard").glob("events.out.tfevents*"))
    final = final_results(out)
    assert set(final) >= {"accuracy", "macro_f1", "loss"} and final == results
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in records} >= {"train", "eval"}
    assert [r["step"] for r in records if r["kind"] == "eval"] == [3, 6]
    best = json.loads((out / "checkpoints" / "best.json").read_text())
    kept = sorted(p.name for p in (out / "checkpoints").glob("step_*"))
    assert kept == sorted({f"step_{6:08d}", best["path"]})  # keep_last=1 plus the best
    resolved = load_config(out / "config.yaml")
    assert resolved.data.labels == ["cooking", "finance", "space", "sports"]
    assert resolved.model.text["tokenizer"].endswith("tokenizer")


def test_early_stopping(topics_data, tmp_path):
    out = tmp_path / "es"
    train(cfg_for(topics_data, out, "train.max_steps=40", "train.eval_every=2", "train.early_stopping_patience=1",
                  "optim.lr=1e-30", "sched.name=constant"))  # lr ~0 (0 is refused): the metric never improves
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [2, 4]
    assert any(r["kind"] == "early_stop" for r in records)


@pytest.mark.parametrize("workers, persistent, prefetch", [(2, True, 4), (0, None, None)])
def test_loader_workers_persist_and_prefetch(topics_data, tmp_path, workers, persistent, prefetch):
    """train.persistent_workers / train.prefetch_factor reach the loader where there are workers (torch refuses
    them without)."""
    from mm_ptft.tasks.text_classification import TextClassification

    cfg = cfg_for(topics_data, tmp_path, f"train.num_workers={workers}", "train.prefetch_factor=4")
    prepared = TextClassification.prepare(cfg)
    loader = Trainer.from_prepared(prepared, cfg).train_loader
    assert loader.num_workers == workers
    assert loader.persistent_workers is bool(persistent) and loader.prefetch_factor == prefetch


@pytest.mark.slow
def test_resume_with_persistent_workers_gives_identical_weights(topics_data, tmp_path, monkeypatch):
    """Workers kept across the epoch boundary (7 batches of 64 per epoch) in the straight run; the resumed run
    starts fresh ones mid-epoch 1: the same weights (and the same as without workers)."""
    steps = ["train.batch_size=64", "train.max_steps=12", "train.save_every=9", "train.eval_every=100",
             "train.num_workers=2", "train.persistent_workers=true"]
    train(cfg_for(topics_data, tmp_path / "straight", *steps))
    train(cfg_for(topics_data, tmp_path / "no_workers", *steps, "train.num_workers=0"))
    crash_then_resume(topics_data, tmp_path / "resumed", steps, 10, monkeypatch)  # after step 9's checkpoint
    a, b, c = (final_weights(tmp_path / d) for d in ("straight", "resumed", "no_workers"))
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]) for k in a)


class LogAndStopAt(Callback):
    """Ends the run after step ``step`` (between log steps), logging the steps since the last train row first."""

    every_step = True

    def __init__(self, step):
        self.at = step

    def on_step_end(self, trainer):
        if trainer.step == self.at:
            trainer.log_train()
            trainer.should_stop = True


def test_a_callback_ending_the_run_between_log_steps_logs_the_steps_it_covers(topics_data, tmp_path):
    """``Trainer.log_train`` from ``on_step_end`` (the preemption callback's path): one row for steps 1-3, their mean
    loss and step 3's gradient norm (as a run that logs every step reports them), and no second row at the stop."""
    common = ["train.max_steps=8", "train.eval_every=100", *NO_DROPOUT]
    train(cfg_for(topics_data, tmp_path / "every", *common, "train.log_every=1"))
    train(cfg_for(topics_data, tmp_path / "stopped", *common, "train.log_every=100"), callbacks=[LogAndStopAt(3)])

    def train_rows(run):
        return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]

    ref = train_rows(tmp_path / "every")[:3]
    (row,) = train_rows(tmp_path / "stopped")
    assert row["step"] == 3
    assert row["loss"] == pytest.approx(sum(r["loss"] for r in ref) / 3, rel=1e-6)
    assert row["grad_norm"] == pytest.approx(ref[2]["grad_norm"], rel=1e-6)
