"""Optimizers and warmup schedules from their registries, checked against hand computations."""
import warnings

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


@pytest.mark.parametrize("name", ["constant", "linear", "cosine"])
@pytest.mark.parametrize("warmup, total", [(0, 103), (10, 100), (7, 7), (3, 1)])
def test_warmup_schedules_give_transformers_values_exactly(name, warmup, total):
    """Every step's lr, bit for bit, against transformers' ``get_scheduler`` (what HF's Trainer and earlier
    mm_ptft runs used): the schedule is written here so a run need not import transformers.optimization."""
    from transformers import get_scheduler

    def lrs(make):
        p = torch.nn.Parameter(torch.zeros(1))
        q = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([{"params": [p], "lr": 5e-5}, {"params": [q], "lr": 3e-4}])
        sched, out = make(opt), []
        for _ in range(total + 3):
            out.append(list(sched.get_last_lr()))
            opt.step()
            sched.step()
        return out

    hf = {"constant": "constant_with_warmup"}.get(name, name)
    ref = lrs(lambda o: get_scheduler(hf, o, num_warmup_steps=warmup, num_training_steps=max(total, 1)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # warmup >= total warns
        ours = lrs(lambda o: build_scheduler(o, SchedConfig(name=name, warmup_steps=warmup), total_steps=total))
    assert ours == ref


def test_a_text_run_does_not_import_transformers_trainer_utilities():
    """Building the linear schedule leaves transformers.optimization / trainer_utils (and peft) unimported."""
    import subprocess
    import sys

    code = ("import sys, torch\nfrom mm_ptft.config import SchedConfig\n"
            "from mm_ptft.train.optim import build_scheduler\n"
            "o = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)\n"
            "build_scheduler(o, SchedConfig(name='linear', warmup_steps=2), 10)\n"
            "print(sorted(m for m in ('transformers.optimization', 'transformers.trainer_utils', 'peft') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name, cls", [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)])
def test_optimizers(name, cls):
    p = torch.nn.Parameter(torch.zeros(2))
    assert isinstance(build_optimizer([{"params": [p]}], OptimConfig(name=name), torch.device("cpu")), cls)


def lr_sequence(sched_cfg, total=30, lr=2.0):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer([{"params": [p]}], OptimConfig(name="sgd", lr=lr), torch.device("cpu"))
    sched = build_scheduler(opt, sched_cfg, total_steps=total)
    lrs = []
    for _ in range(total):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return lrs


def warm(s, w, lr=2.0):
    return lr * s / w


@pytest.mark.parametrize("cfg, formula", [
    (SchedConfig(name="exponential", warmup_steps=4, gamma=0.9), lambda s: 2.0 * 0.9 ** (s - 4)),
    (SchedConfig(name="step", warmup_steps=4, gamma=0.5, step_size=7), lambda s: 2.0 * 0.5 ** ((s - 4) // 7)),
    (SchedConfig(name="polynomial", warmup_steps=4, power=2.0, lr_end=0.2),
     lambda s: 0.2 + (2.0 - 0.2) * (1 - (s - 4) / 26) ** 2),
    (SchedConfig(name="step", warmup_steps=0, gamma=0.1, step_size=10), lambda s: 2.0 * 0.1 ** (s // 10)),
])
def test_decay_schedules_match_their_formula(cfg, formula):
    """Every step's lr: linear warmup from 0, then the schedule's closed form (hand-written here)."""
    expected = [warm(s, cfg.warmup_steps) if s < cfg.warmup_steps else formula(s) for s in range(30)]
    assert lr_sequence(cfg) == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_polynomial_reaches_lr_end_and_checks_it():
    cfg = SchedConfig(name="polynomial", warmup_steps=0, power=1.0, lr_end=0.5)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer([{"params": [p]}], OptimConfig(name="sgd", lr=2.0), torch.device("cpu"))
    sched = build_scheduler(opt, cfg, total_steps=10)
    for _ in range(12):
        opt.step()
        sched.step()
    assert sched.get_last_lr()[0] == pytest.approx(0.5)  # stays at lr_end past the end
    from mm_ptft.config import ConfigError
    with pytest.raises(ConfigError, match="lr_end"):
        build_scheduler(opt, SchedConfig(name="polynomial", lr_end=3.0), total_steps=10)


def test_l1_adds_l1_times_sum_abs_weights_and_shrinks_them(topics_data, tmp_path):
    """The logged l1_loss at step 1 is l1 * sum|w| over the initial non-bias/non-norm weights (counted here
    independently), the step's loss exceeds the l1=0 run's by exactly that, and the weights end up smaller."""
    import json

    from mm_ptft.contracts import Callback
    from mm_ptft.run import load_config, train
    from mm_paths import TEXT_TINY

    class Initial(Callback):
        def on_train_start(self, trainer):
            self.sum_abs = sum(float(p.detach().abs().sum()) for n, p in trainer.task.named_parameters()
                               if p.requires_grad and p.ndim >= 2 and "norm" not in n.lower())

        def on_train_end(self, trainer, results):
            self.final = sum(float(p.detach().abs().sum()) for n, p in trainer.task.named_parameters()
                             if p.requires_grad and p.ndim >= 2 and "norm" not in n.lower())

    def run(l1):
        out, cb = tmp_path / f"l1_{l1}", Initial()
        train(load_config(TEXT_TINY, [f"output_dir={out}", f"data.train_file={topics_data['train_file']}",
                                      f"data.eval_file={topics_data['eval_file']}", "train.batch_size=16",
                                      "train.max_steps=6", "train.log_every=1", "train.report=false",
                                      "train.report_to=[]", "optim.weight_decay=0.0", f"optim.l1={l1}"]), [cb])
        rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
        return [r for r in rows if r["kind"] == "train"], cb

    l1 = 1e-4
    plain, cb0 = run(0.0)
    pen, cb1 = run(l1)
    assert "l1_loss" not in plain[0]
    assert cb1.sum_abs == pytest.approx(cb0.sum_abs)  # same seeded initial weights
    assert pen[0]["l1_loss"] == pytest.approx(l1 * cb1.sum_abs, rel=1e-5)
    assert pen[0]["loss"] - plain[0]["loss"] == pytest.approx(pen[0]["l1_loss"], rel=1e-4)
    assert cb1.final < cb0.final


# ---- optimizers by name: torch's classes and timm's names through one registry fallback -------------------------
def two_step(name: str, lr: float, wd: float, grads: list[list[float]], **kwargs) -> list[float]:
    """Parameters w = [[1, -2]] (one decayed group) after one optimizer step per gradient in ``grads``."""
    w = torch.nn.Parameter(torch.tensor([[1.0, -2.0]], dtype=torch.float64))
    opt = build_optimizer([{"params": [w], "weight_decay": wd, "lr": lr}],
                          OptimConfig(name=name, lr=lr, weight_decay=wd, kwargs=kwargs), torch.device("cpu"))
    for g in grads:
        w.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
    return w.detach().flatten().tolist()


GRADS = [[0.3, 0.1], [-0.2, 0.25]]  # norm < 1, so LAMB's default max_grad_norm=1 clipping does not act


def test_lamb_steps_as_its_update_rule():
    """LAMB (You et al. 2019), by hand: Adam moments with bias correction, u = m̂/(√v̂+eps) + wd·w, then
    w -= lr · (‖w‖/‖u‖) · u (the layer-wise trust ratio)."""
    import math
    b1, b2, eps, lr, wd = 0.9, 0.999, 1e-6, 0.1, 0.1
    w, m, v = [1.0, -2.0], [0.0, 0.0], [0.0, 0.0]
    for t, g in enumerate(GRADS, 1):
        m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g)]
        v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v, g)]
        u = [(mi / (1 - b1 ** t)) / (math.sqrt(vi / (1 - b2 ** t)) + eps) + wd * wi for mi, vi, wi in zip(m, v, w)]
        trust = math.hypot(*w) / math.hypot(*u)
        w = [wi - lr * trust * ui for wi, ui in zip(w, u)]
    assert two_step("lamb", lr, wd, GRADS) == pytest.approx(w, rel=1e-9)
    assert two_step("timm.lamb", lr, wd, GRADS) == pytest.approx(w, rel=1e-9)


def test_lion_steps_as_its_update_rule():
    """Lion (Chen et al. 2023), by hand: w -= lr·(sign(β1·m + (1-β1)·g) + wd·w); then m = β2·m + (1-β2)·g."""
    b1, b2, lr, wd = 0.9, 0.99, 0.01, 0.5
    sign = lambda x: (x > 0) - (x < 0)  # noqa: E731
    w, m = [1.0, -2.0], [0.0, 0.0]
    for g in GRADS:
        c = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g)]
        w = [wi * (1 - lr * wd) - lr * sign(ci) for wi, ci in zip(w, c)]
        m = [b2 * mi + (1 - b2) * gi for mi, gi in zip(m, g)]
    assert two_step("lion", lr, wd, GRADS) == pytest.approx(w, rel=1e-12)


def test_torch_optimizer_by_class_name_matches_torch_itself():
    """``torch.RAdam`` with kwargs is torch.optim.RAdam built directly with the same arguments."""
    w = torch.nn.Parameter(torch.tensor([[1.0, -2.0]], dtype=torch.float64))
    ref = torch.optim.RAdam([w], lr=0.05, betas=(0.8, 0.9), weight_decay=0.1, decoupled_weight_decay=True)
    for g in GRADS * 3:
        w.grad = torch.tensor([g], dtype=torch.float64)
        ref.step()
    got = two_step("torch.RAdam", 0.05, 0.1, GRADS * 3, betas=[0.8, 0.9], decoupled_weight_decay=True)
    assert got == pytest.approx(w.detach().flatten().tolist(), rel=1e-12)
    opt = build_optimizer([{"params": [w]}], OptimConfig(name="torch.Adafactor"), torch.device("cpu"))
    assert isinstance(opt, torch.optim.Adafactor)


def test_param_groups_keep_their_lr_and_weight_decay():
    """Per-group lr (LLRD) and no-decay groups reach a fallback optimizer unchanged."""
    a, b = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2))
    groups = [{"params": [a], "lr": 0.5, "weight_decay": 0.1}, {"params": [b], "lr": 0.05, "weight_decay": 0.0}]
    for name in ("lion", "torch.NAdam"):
        opt = build_optimizer([dict(g) for g in groups], OptimConfig(name=name, lr=1.0), torch.device("cpu"))
        assert [(g["lr"], g["weight_decay"]) for g in opt.param_groups] == [(0.5, 0.1), (0.05, 0.0)]


def test_optimizer_kwargs_and_names_are_checked():
    from mm_ptft.config import ConfigError
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ConfigError, match=r"optim\.kwargs\.betaz.*Lamb has no argument"):
        build_optimizer([{"params": [p]}], OptimConfig(name="lamb", kwargs={"betaz": [0.9, 0.9]}), torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"optim\.kwargs\.amsgrd.*AdamW"):
        build_optimizer([{"params": [p]}], OptimConfig(name="adamw", kwargs={"amsgrd": True}), torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"optim\.kwargs\.lr: set from optim\.lr"):
        build_optimizer([{"params": [p]}], OptimConfig(name="torch.RAdam", kwargs={"lr": 1.0}), torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"optim.name='torch.Nope'.*adamw.*torch\.<Optimizer class>.*lamb"):
        build_optimizer([{"params": [p]}], OptimConfig(name="torch.Nope"), torch.device("cpu"))
    opt = build_optimizer([{"params": [p]}], OptimConfig(name="adamw", kwargs={"amsgrad": True}), torch.device("cpu"))
    assert opt.param_groups[0]["amsgrad"] is True
