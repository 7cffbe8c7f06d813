"""Numerical faults and damaged checkpoints: NaN/Inf steps are skipped and counted without touching the
weights or the optimizer state; too many in a row stop the run after saving the last good state; a
truncated or corrupted newest checkpoint is reported and the previous good one is used."""
import json
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mm_ptft.config import RunConfig, TrainConfig
from mm_ptft.contracts import Task
from mm_ptft.data.text import Records
from mm_ptft.train import checkpoint as ckpt
from mm_ptft.train.trainer import NonFiniteError, Trainer
from mm_ptft.types import LABELS


@pytest.fixture
def mm_log(caplog):
    """caplog for the ``mm_ptft`` logger (which does not propagate to the root logger)."""
    logger = logging.getLogger("mm_ptft")
    logger.addHandler(caplog.handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.setLevel(old)


class InfGrad(torch.autograd.Function):
    """Identity forward, infinite gradient backward: a finite loss with a non-finite gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


class FaultyTask(Task):
    """Linear classifier that poisons chosen training forward calls (1-based) and records its weights."""

    def __init__(self, nan_calls=(), inf_grad_calls=()):
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.nan_calls, self.inf_grad_calls = set(nan_calls), set(inf_grad_calls)
        self.calls, self.seen = 0, {}

    def forward(self, batch):
        logits = self.linear(batch["x"])  # (B, 3)
        if self.training:
            self.calls += 1
            self.seen[self.calls] = self.linear.weight.detach().clone()
            if self.calls in self.inf_grad_calls:
                logits = InfGrad.apply(logits)
        loss = F.cross_entropy(logits, batch[LABELS])
        if self.training and self.calls in self.nan_calls:
            loss = loss * float("nan")
        return {"logits": logits, "loss": loss}


def collate(items):
    return {"x": torch.stack([it["x"] for it in items]), LABELS: torch.tensor([it[LABELS] for it in items])}


def data(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)  # (N, 4)
    return Records([{"x": x[i], LABELS: int(x[i, 0] > 0) + int(x[i, 1] > 0)} for i in range(n)])


def make_trainer(tmp_path, task, **train_kw):
    tc = TrainConfig(**{"batch_size": 8, "max_steps": 6, "log_every": 1, "report": False, "device": "cpu", **train_kw})
    cfg = RunConfig(task="faulty", output_dir=str(tmp_path), train=tc)
    return Trainer(task, cfg, data(), None, collate)


def events(tmp_path, kind):
    recs = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r["kind"] == kind]


def test_nonfinite_steps_are_skipped_and_counted(tmp_path):
    """Counted on the device, reported at log steps: the fault event gives the steps skipped since the last log."""
    task = FaultyTask(nan_calls={2}, inf_grad_calls={3, 5})
    trainer = make_trainer(tmp_path, task, log_every=4, max_steps=8)
    trainer.fit()
    # calls 2 (NaN loss) and 3 (Inf gradient) changed nothing: call 4 sees the weights call 2 saw
    assert torch.equal(task.seen[2], task.seen[4]) and torch.equal(task.seen[5], task.seen[6])
    assert not torch.equal(task.seen[1], task.seen[2]) and not torch.equal(task.seen[4], task.seen[5])
    faults = events(tmp_path, "fault")
    assert [(f["step"], f["nonfinite_steps_skipped"], f["nonfinite_steps_total"]) for f in faults] == [(4, 2, 2), (8, 1, 3)]
    for state in trainer.opt.state.values():  # AdamW took 5 real steps and its moments stayed finite
        assert int(state["step"]) == 5
        assert torch.isfinite(state["exp_avg"]).all() and torch.isfinite(state["exp_avg_sq"]).all()
    assert all(torch.isfinite(p).all() for p in task.parameters())


def test_a_bad_first_step_creates_no_optimizer_state(tmp_path):
    task = FaultyTask(nan_calls={1})
    trainer = make_trainer(tmp_path, task, max_steps=2)
    trainer.fit()
    assert torch.equal(task.seen[1], task.seen[2])
    assert all(int(state["step"]) == 1 for state in trainer.opt.state.values())
    assert [f["nonfinite_steps_skipped"] for f in events(tmp_path, "fault")] == [1]


@pytest.mark.parametrize("log_every", [1, 2])
def test_too_many_bad_steps_stop_with_a_checkpoint_of_the_last_good_state(tmp_path, log_every):
    """max_bad_steps is checked at log steps: with log_every=2 the run of 4 bad steps (3..6) is seen at step 6."""
    task = FaultyTask(nan_calls={3, 4, 5, 6})
    trainer = make_trainer(tmp_path, task, max_bad_steps=3, log_every=log_every)
    bad = {1: 3, 2: 4}[log_every]  # consecutive bad steps when the check sees them
    with pytest.raises(NonFiniteError, match=rf"{bad} consecutive steps.*train.max_bad_steps=3.*saved in .*step_"):
        trainer.fit()
    newest = ckpt.latest_good(tmp_path / "checkpoints")
    assert newest is not None
    saved = ckpt.read_weights(newest)["linear.weight"]
    assert torch.equal(saved, task.seen[3])  # the weights after the 2 good steps
    assert ckpt.read_state(newest)["bad_steps_total"] == bad
    assert events(tmp_path, "fault")[-1]["nonfinite_steps_total"] == bad


def test_a_run_of_bad_steps_between_logs_still_stops_the_run(tmp_path):
    """4 bad steps in a row (2..5) then good ones: the check at step 8 sees the run of 4 although it ended."""
    task = FaultyTask(nan_calls={2, 3, 4, 5})
    trainer = make_trainer(tmp_path, task, max_bad_steps=4, log_every=8, max_steps=8)
    with pytest.raises(NonFiniteError, match=r"4 consecutive steps"):
        trainer.fit()
    saved = ckpt.read_weights(ckpt.latest_good(tmp_path / "checkpoints"))["linear.weight"]
    assert torch.equal(saved, task.linear.weight.detach()) and torch.isfinite(saved).all()


def save_three(root):
    model = nn.Linear(3, 2)
    for step in (1, 2, 3):
        with torch.no_grad():
            model.weight.fill_(step)
        ckpt.save(root, step, model, {"step": step}, "task: x\n")
    return model


@pytest.mark.parametrize("damage, message", [
    (lambda d: d.joinpath(ckpt.WEIGHTS).write_bytes(d.joinpath(ckpt.WEIGHTS).read_bytes()[:50]), "truncated"),
    (lambda d: d.joinpath(ckpt.STATE).write_bytes(bytes([b ^ 0xFF if i == 40 else b for i, b in
                                                          enumerate(d.joinpath(ckpt.STATE).read_bytes())])),
     "checksum mismatch"),
    (lambda d: d.joinpath(ckpt.META).unlink(), "meta.json missing"),
    (lambda d: d.joinpath(ckpt.WEIGHTS).write_bytes(b""), "0 bytes"),
])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, mm_log, damage, message):
    root = tmp_path / "checkpoints"
    model = save_three(root)
    damage(root / "step_00000003")
    found = ckpt.latest_good(root)
    assert found == root / "step_00000002"
    assert "step_00000003" in mm_log.text and message in mm_log.text
    ckpt.load(found, model)
    assert torch.equal(model.weight, torch.full((2, 3), 2.0))


def test_resume_skips_a_corrupted_checkpoint(tmp_path, mm_log):
    make_trainer(tmp_path, FaultyTask(), save_every=2).fit()  # checkpoints at steps 2, 4, 6
    newest = tmp_path / "checkpoints" / "step_00000006"
    newest.joinpath(ckpt.WEIGHTS).write_bytes(newest.joinpath(ckpt.WEIGHTS).read_bytes()[:-7])
    task = FaultyTask()
    trainer = make_trainer(tmp_path, task, save_every=2, resume=True)
    trainer.cfg.train.max_steps = 8
    trainer.fit()
    assert "step_00000006 is unusable" in mm_log.text
    assert "resumed from" in mm_log.text and "(step 4," in mm_log.text
    assert task.calls == 4  # steps 5..8 after resuming at step 4
