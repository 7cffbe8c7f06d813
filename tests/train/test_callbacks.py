"""Trainer callbacks: each hook is called at its point in the loop with the trainer (and its arguments);
``on_step_end`` only after optimizer steps that changed the weights (not after skipped non-finite ones) unless the
callback asks for every step,
and the trainer uses the parameter groups it is handed. Callbacks from ``train.callbacks`` (registry entries),
early stopping among them, and a callback stopping the run through ``trainer.should_stop``."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mm_ptft.config import ConfigError, OptimConfig, RunConfig, SchedConfig, TrainConfig
from mm_ptft.contracts import Callback, Task
from mm_ptft.data.text import Records
from mm_ptft.train.trainer import Trainer
from mm_ptft.types import LABELS


class Linear(Task):
    main_metric, greater_is_better = "loss", False

    def __init__(self, nan_calls=()):
        super().__init__()
        self.linear, self.calls, self.nan_calls = nn.Linear(4, 2), 0, set(nan_calls)

    def forward(self, batch):
        loss = F.cross_entropy(self.linear(batch["x"]), batch[LABELS])
        if self.training:
            self.calls += 1
            loss = loss * float("nan") if self.calls in self.nan_calls else loss
        return {"loss": loss}

    def build_metrics(self):
        return _NoMetrics()


class _NoMetrics:
    def update(self, out, batch):
        pass

    def compute(self):
        return {}

    def to(self, device):
        return self


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_train_start(self, trainer):
        self.events.append(("start", trainer.step))

    def on_step_end(self, trainer):
        self.events.append(("step", trainer.step))

    def on_evaluate(self, trainer, results):
        self.events.append(("evaluate", trainer.step))

    def on_save(self, trainer, path):
        self.events.append(("save", path is not None))

    def on_train_end(self, trainer, results):
        self.events.append(("end", trainer.step))


def data(n=32):
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))  # (N, 4)
    return Records([{"x": x[i], LABELS: int(x[i, 0] > 0)} for i in range(n)])


def collate(items):
    return {"x": torch.stack([it["x"] for it in items]), LABELS: torch.tensor([it[LABELS] for it in items])}


def test_hooks_fire_in_order_and_skip_nonfinite_steps(tmp_path):
    rec = Recorder()
    cfg = RunConfig(task="toy", output_dir=str(tmp_path), train=TrainConfig(batch_size=8, max_steps=4, eval_every=2,
                                                                            log_every=1, report=False, device="cpu"))
    Trainer(Linear(nan_calls={3}), cfg, data(), data(8), collate, callbacks=[rec]).fit()
    assert rec.events == [("start", 0), ("step", 1), ("step", 2), ("evaluate", 2), ("save", True),
                          ("step", 4), ("evaluate", 4), ("save", True), ("end", 4)]  # step 3 was skipped (NaN)


def test_an_every_step_callback_also_sees_skipped_steps(tmp_path):
    class EveryStep(Recorder):
        every_step = True

    rec, cfg = EveryStep(), RunConfig(task="toy", output_dir=str(tmp_path),
                                      train=TrainConfig(batch_size=8, max_steps=4, report=False, device="cpu"))
    trainer = Trainer(Linear(nan_calls={1, 3}), cfg, data(), None, collate, callbacks=[rec])
    trainer.fit()
    assert [s for kind, s in rec.events if kind == "step"] == [1, 2, 3, 4]  # steps 1 and 3 skipped (NaN)
    assert trainer.bad_steps_total == 2


def test_trainer_uses_the_group_builder_it_is_handed(tmp_path):
    task = Linear()
    groups = lambda m: [{"params": [m.linear.weight], "lr": 0.5}]  # noqa: E731  (the bias is not trained)
    cfg = RunConfig(task="toy", output_dir=str(tmp_path), train=TrainConfig(batch_size=8, max_steps=2, report=False,
                                                                            device="cpu"))
    bias = task.linear.bias.detach().clone()
    trainer = Trainer(task, cfg, data(), None, collate, group_builder=groups)
    trainer.fit()
    assert len(trainer.opt.param_groups) == 1 and trainer.opt.param_groups[0]["params"][0] is task.linear.weight
    assert torch.equal(task.linear.bias, bias)


def frozen_cfg(out, **train):
    """lr 0: the eval loss never improves."""
    tc = dict(batch_size=8, max_steps=20, eval_every=2, log_every=1, report=False, device="cpu")
    return RunConfig(task="toy", output_dir=str(out), train=TrainConfig(**{**tc, **train}),
                     optim=OptimConfig(lr=0.0), sched=SchedConfig(name="constant"))


def rows(run_dir, kind):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_early_stopping_from_config_stops_and_logs(tmp_path):
    cfg = frozen_cfg(tmp_path, callbacks=[{"name": "early_stopping", "patience": 1, "metric": "loss", "mode": "min"}])
    trainer = Trainer(Linear(), cfg, data(), data(8), collate)
    trainer.fit()
    evals = rows(tmp_path, "eval")
    assert trainer.step == 4 and [r["step"] for r in evals] == [2, 4]
    (stop,) = rows(tmp_path, "early_stop")
    assert stop["step"] == 4 and stop["best_step"] == 2 and stop["best_loss"] == evals[0]["loss"]


def test_early_stopping_patience_survives_a_resume(tmp_path):
    """The callback's count is in the checkpoint: 1 stale eval before the resume + 2 after = patience 3."""
    Trainer(Linear(), frozen_cfg(tmp_path, max_steps=4, early_stopping_patience=3), data(), data(8), collate).fit()
    assert not rows(tmp_path, "early_stop")
    cfg = frozen_cfg(tmp_path, max_steps=12, early_stopping_patience=3, resume=True)
    trainer = Trainer(Linear(), cfg, data(), data(8), collate)
    trainer.fit()
    assert trainer.step == 8 and [(r["step"], r["best_step"]) for r in rows(tmp_path, "early_stop")] == [(8, 2)]


def test_a_callback_stops_the_run_through_should_stop(tmp_path):
    class StopAt3(Callback):
        def on_step_end(self, trainer):
            trainer.should_stop = trainer.step == 3

    trainer = Trainer(Linear(), frozen_cfg(tmp_path), data(), data(8), collate, callbacks=[StopAt3()])
    trainer.fit()
    assert trainer.step == 3 and [r["step"] for r in rows(tmp_path, "eval")] == [2, 3]  # the final eval still runs


@pytest.mark.parametrize("spec, match", [
    ({"name": "nope"}, r"train\.callbacks\[0\]\.name='nope'.*early_stopping"),
    ({"name": "early_stopping", "patience": 2, "patiense": 3}, r"train\.callbacks\[0\].*patiense"),
    ({"name": "early_stopping", "mode": "up"}, r"mode='up'"),
    ({"name": "early_stopping", "metric": "accuracy"}, r"metric='accuracy'.*mode: max\|min"),
])
def test_bad_callback_config_names_the_key(tmp_path, spec, match):
    with pytest.raises(ConfigError, match=match):
        Trainer(Linear(), frozen_cfg(tmp_path, callbacks=[spec]), data(), None, collate).fit()
