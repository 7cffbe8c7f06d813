"""The trainer's fit-time state (``mm_ptft.train.fit_state``): one ``FitState`` per ``fit`` — ``evaluate`` works
before any ``fit`` and logs nothing stale after one, and a second ``fit`` on the same trainer starts from nothing
the first left behind (it trains exactly as a fresh trainer on the same weights)."""
import copy
import json
import logging

import pytest
import torch
import torch.nn.functional as F

from mm_ptft.config import RunConfig, TrainConfig
from mm_ptft.train.fit_state import FitState
from mm_ptft.train.trainer import Trainer
from mm_ptft.types import COUNTS, LABELS

from test_callbacks import Linear, collate, data


def counting_collate(items):
    """``collate``, and one counted skip per batch (as a stream's loader workers report them)."""
    return {**collate(items), COUNTS: {"skipped_rows": 1}}


def cfg(out, **train):
    return RunConfig(task="toy", output_dir=str(out), train=TrainConfig(**{
        **dict(batch_size=8, max_steps=4, eval_every=2, log_every=1, report=False, device="cpu",
                # fp32: the hand-computed references are fp32 (auto is bf16 on a CPU with AVX512-BF16)
                precision="fp32"), **train}))


def rows(run_dir):
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_evaluate_before_any_fit_needs_no_fit_state(tmp_path, caplog):
    task, eval_data = Linear(), data(12)
    trainer = Trainer(task, cfg(tmp_path), None, eval_data, counting_collate, train_lengths=None)
    assert trainer.state is None
    with pytest.raises(AttributeError, match="once fit"):
        trainer.step  # noqa: B018
    with caplog.at_level(logging.INFO, logger="mm_ptft"):
        results = trainer.evaluate()
    batch = collate([eval_data[i] for i in range(len(eval_data))])
    with torch.no_grad():  # the whole split's mean loss, by hand (batches of 8 and 4 weighted by their rows)
        expected = F.cross_entropy(task.linear(batch["x"]), batch[LABELS]).item()
    assert results == {"loss": pytest.approx(expected, rel=1e-6)}
    assert trainer.state is None and not (tmp_path / "metrics.jsonl").exists()
    assert not any("[data]" in r.getMessage() for r in caplog.records)  # the skips are counted, not logged


def test_eval_skips_are_logged_at_each_evaluation_and_not_after_fit(tmp_path, caplog):
    trainer = Trainer(Linear(), cfg(tmp_path), data(), data(12), counting_collate)
    trainer.fit()
    logged = rows(tmp_path)
    assert [(r["step"], r["eval_skipped_rows"]) for r in logged if "eval_skipped_rows" in r] == [(2, 2), (4, 2)]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mm_ptft"):
        assert set(trainer.evaluate()) == {"loss"}
    assert rows(tmp_path) == logged  # the closed run's log is left alone
    assert not any("[data]" in r.getMessage() for r in caplog.records)


def test_a_second_fit_starts_from_a_fresh_state(tmp_path):
    task = Linear()
    trainer = Trainer(task, cfg(tmp_path / "a"), data(), data(8), collate)
    trainer.fit()
    first = trainer.state
    after_first = copy.deepcopy(task.state_dict())
    trainer.fit()
    assert isinstance(trainer.state, FitState) and trainer.state is not first
    assert trainer.step == 4 and trainer.opt is not first.opt and trainer.state.scaler is not first.scaler
    assert trainer.state.sched.last_epoch == 4 and trainer.best_step in (2, 4)

    fresh = Linear()
    fresh.load_state_dict(after_first)
    Trainer(fresh, cfg(tmp_path / "b"), data(), data(8), collate).fit()
    assert all(torch.equal(a, b) for a, b in zip(task.state_dict().values(), fresh.state_dict().values()))
    assert not torch.equal(task.linear.weight, after_first["linear.weight"])  # the second fit did train
