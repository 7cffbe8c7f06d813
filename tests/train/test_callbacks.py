"""Trainer callbacks: each hook is called at its point in the loop with the trainer (and its arguments);
``on_step_end`` only after optimizer steps that changed the weights (not after skipped non-finite ones),
and the trainer uses the parameter groups it is handed."""
import torch
import torch.nn.functional as F
from torch import nn

from mm_ptft.config import RunConfig, TrainConfig
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


def test_trainer_uses_the_param_groups_it_is_handed(tmp_path):
    task = Linear()
    groups = lambda m: [{"params": [m.linear.weight], "lr": 0.5}]  # noqa: E731  (the bias is not trained)
    cfg = RunConfig(task="toy", output_dir=str(tmp_path), train=TrainConfig(batch_size=8, max_steps=2, report=False,
                                                                            device="cpu"))
    bias = task.linear.bias.detach().clone()
    trainer = Trainer(task, cfg, data(), None, collate, param_groups=groups)
    trainer.fit()
    assert len(trainer.opt.param_groups) == 1 and trainer.opt.param_groups[0]["params"][0] is task.linear.weight
    assert torch.equal(task.linear.bias, bias)
