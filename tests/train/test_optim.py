"""Optimizers and warmup schedules from their registries, checked against hand computations."""
import pytest
import torch

from mm_ptft.config import OptimConfig, SchedConfig
from mm_ptft.train.optim import build_optimizer, build_scheduler


@pytest.mark.parametrize("name, step, expected", [
    ("linear", 5, 0.5), ("linear", 10, 1.0), ("linear", 55, 45 / 90), ("linear", 100, 0.0),
    ("cosine", 55, 0.5), ("cosine", 10, 1.0), ("constant", 5, 0.5), ("constant", 80, 1.0),
])
def test_schedules_with_warmup(name, step, expected):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer([{"params": [p]}], OptimConfig(name="sgd", lr=1.0), torch.device("cpu"))
    sched = build_scheduler(opt, SchedConfig(name=name, warmup_steps=10), total_steps=100)
    for _ in range(step):
        opt.step()
        sched.step()
    assert sched.get_last_lr()[0] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("name, cls", [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)])
def test_optimizers(name, cls):
    p = torch.nn.Parameter(torch.zeros(2))
    assert isinstance(build_optimizer([{"params": [p]}], OptimConfig(name=name), torch.device("cpu")), cls)
