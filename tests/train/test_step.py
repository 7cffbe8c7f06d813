"""The host-sync-free step: a NaN/Inf step skipped on the device leaves weights and optimizer state exactly as a
reference that never took it; non-finite steps counted on the device; between log steps a run reads nothing from
a tensor; and a train log covers the wall time since the previous one, evaluation and checkpoints included."""
import copy
import json
import os
import subprocess
import sys
import time

import pytest
import timm.optim
import torch
import torch.nn.functional as F
from torch import nn

from mm_ptft.config import RunConfig, TrainConfig
from mm_ptft.contracts import Callback, Task
from mm_ptft.data.text import Records
from mm_ptft.encoders import build_encoder
from mm_ptft.encoders.image import IMAGE_ENCODERS
from mm_ptft.heads.image_classification import EmaCallback, ImageClassificationTask
from mm_ptft.train import step as S
from mm_ptft.train.trainer import Trainer
from mm_ptft.types import IMAGE, LABELS

from mm_paths import ROOT
from sync_util import NanLossAt, stray_reads


def set_grads(model, value):
    for p in model.parameters():
        p.grad = torch.full_like(p, value) if value is not None else torch.randn_like(p)


def state_of(opt):
    return [{k: v.clone() for k, v in opt.state[p].items()} for p in S.params_of(opt)]


FUSED = [
    lambda ps: torch.optim.AdamW(ps, lr=0.1, weight_decay=0.1, fused=True),
    lambda ps: torch.optim.Adam(ps, lr=0.1, weight_decay=0.1, fused=True),
    lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1, fused=True),
]
UNDONE = [  # no found_inf input: stepped, then rolled back on the device (S.Undo)
    lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1, fused=False),
    lambda ps: torch.optim.RAdam(ps, lr=0.1, weight_decay=0.1),
    lambda ps: timm.optim.Lion(ps, lr=0.1, weight_decay=0.1),
]


DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]  # the same paths on a GPU where there is one


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("make,undo", [(m, False) for m in FUSED] + [(m, True) for m in UNDONE])
def test_a_bad_step_skipped_on_the_device_changes_nothing(make, undo, device):
    torch.manual_seed(0)
    model = nn.Linear(4, 3).to(device)
    opt, rollback = make(model.parameters()), S.Undo() if undo else None
    set_grads(model, None)
    assert not S.skips_on_device(opt) and not S.Undo.ready(opt)  # no state yet: a skipped first step would
    assert S.step_unless(opt, torch.tensor(0.0), on_device=False) is True  # leave it uninitialised
    ref_model = copy.deepcopy(model)
    ref_opt = make(ref_model.parameters())
    ref_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # (load_state_dict would share its tensors)
    before, state = [p.detach().clone() for p in model.parameters()], state_of(opt)

    set_grads(model, float("nan"))
    assert S.skips_on_device(opt) != undo and S.Undo.ready(opt)  # (the flag goes first where both could)
    found_inf = S.nonfinite(S.grad_norm(S.params_of(opt), 1.0))
    assert S.step_unless(opt, found_inf, on_device=not undo, undo=rollback) is None
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))  # weight decay did not apply either
    for got, want in zip(state_of(opt), state):  # moments, momentum buffers and step counts as they were
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)

    for _ in range(2):  # good steps step, as the reference that never saw the bad one does
        torch.manual_seed(1)
        set_grads(model, None)
        torch.manual_seed(1)
        set_grads(ref_model, None)
        S.step_unless(opt, S.nonfinite(S.grad_norm(S.params_of(opt), 0.0)), on_device=not undo, undo=rollback)
        ref_opt.step()
        assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ref_model.parameters()))
    assert not torch.equal(model.weight, before[0])


@pytest.mark.parametrize("case", ["group counter", "state elsewhere", "plain state"])
def test_state_a_rollback_cannot_reach_keeps_the_host_decision(case):
    """timm's Lamb counts steps in its param group; an optimizer keeping state off its parameters' device (torch's
    CPU ``step`` counters beside CUDA parameters; here a meta tensor) or in plain numbers: decided on the host."""
    model = nn.Linear(2, 2)
    opt = timm.optim.Lamb(model.parameters(), lr=0.1) if case == "group counter" else \
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, fused=False)
    if case != "group counter":
        opt.state[model.weight]["extra"] = torch.zeros(1, device="meta") if case == "state elsewhere" else 0
    set_grads(model, 1.0)
    assert S.step_unless(opt, torch.tensor(0.0), on_device=False) is True
    assert not S.Undo.ready(opt) and S.step_unless(opt, torch.tensor(1.0), False, S.Undo()) is False


def test_non_fused_optimizers_and_new_state_are_decided_on_the_host():
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, fused=False)
    set_grads(model, 1.0)
    before = [p.detach().clone() for p in model.parameters()]
    assert not S.skips_on_device(opt)
    assert S.step_unless(opt, torch.tensor(1.0), on_device=False) is False
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before)) and not opt.state
    assert S.step_unless(opt, torch.tensor(0.0), on_device=False) is True
    assert torch.allclose(model.weight, before[0] - 0.1)  # plain SGD's first step: w - lr * g


def test_a_stateless_optimizer_skips_on_the_device_after_its_first_step():
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, fused=True)  # no momentum: it keeps no state
    set_grads(model, 1.0)
    assert not S.skips_on_device(opt)
    assert S.step_unless(opt, torch.tensor(0.0), on_device=False) is True
    assert not opt.state and S.skips_on_device(opt)
    before = [p.detach().clone() for p in model.parameters()]
    S.step_unless(opt, torch.tensor(1.0), on_device=True)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))


@pytest.mark.parametrize("bad", [False, True])
def test_the_fp16_scaler_flag_says_whether_it_skipped(bad):
    """``scaler_found_inf`` is the GradScaler's own verdict (it halves its scale exactly when it skipped)."""
    model = nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(model(torch.randn(4, 3)).sum() * (float("inf") if bad else 1.0)).backward()
    before = model.weight.detach().clone()
    scaler.unscale_(opt)
    scaler.step(opt)
    flag = S.scaler_found_inf(scaler, opt)
    scaler.update()
    assert float(flag) == float(bad) and (scaler.get_scale() == 512.0) == bad
    assert torch.equal(model.weight, before) == bad


def test_grad_norm_clips_like_the_formula():
    model = nn.Linear(3, 1, bias=False)
    model.weight.grad = torch.tensor([[3.0, 4.0, 0.0]])  # norm 5
    norm = S.grad_norm(S.params_of(torch.optim.SGD(model.parameters(), lr=1.0)), 1.0)
    assert float(norm) == pytest.approx(5.0)
    assert torch.allclose(model.weight.grad, torch.tensor([[0.6, 0.8, 0.0]]), atol=1e-5)  # scaled by 1/5
    model.weight.grad = torch.tensor([[3.0, 4.0, 0.0]])
    assert float(S.grad_norm([model.weight], 0.0)) == pytest.approx(5.0)
    assert torch.equal(model.weight.grad, torch.tensor([[3.0, 4.0, 0.0]]))  # 0: no clipping


def test_fault_counter_windows():
    counter = S.FaultCounter(torch.device("cpu"), total=5)
    for bad in [0, 1, 1, 0, 1, 1, 1]:
        counter.add(torch.tensor(float(bad)))
    assert counter.read() == (5, 3, 10)  # 5 bad, longest run 3 (still going), 5 + 5 in all
    for bad in [1, 0]:
        counter.add(torch.tensor(float(bad)))
    assert counter.read() == (1, 4, 11)  # the run open at the last read went on to 4
    assert counter.read() == (0, 0, 11)


# ---- in the trainer ---------------------------------------------------------------------------------
class Counting(Task):
    """A linear model whose i-th training call has loss ``i`` (plus 0 * the model's output, for a gradient)."""

    main_metric, greater_is_better = "loss", False

    def __init__(self, clock=None):
        super().__init__()
        self.linear, self.calls, self.clock = nn.Linear(4, 2), 0, clock

    def forward(self, batch):
        loss = F.cross_entropy(self.linear(batch["x"]), batch[LABELS])
        if self.training:
            self.calls += 1
            if self.clock is not None:
                self.clock.advance(1.0)  # each training step takes 1 s of the fake clock
            loss = loss * 0 + self.calls
        return {"loss": loss}


def data(n):
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))  # (N, 4)
    return Records([{"x": x[i], LABELS: int(x[i, 0] > 0)} for i in range(n)])


def collate(items):
    return {"x": torch.stack([it["x"] for it in items]), LABELS: torch.tensor([it[LABELS] for it in items])}


def trainer_for(tmp_path, task, callbacks=(), **train):
    tc = TrainConfig(**{"batch_size": 8, "report": False, "device": "cpu", "precision": "fp32", **train})
    return Trainer(task, RunConfig(task="toy", output_dir=str(tmp_path), train=tc), data(16), None, collate,
                   callbacks=callbacks)


def train_logs(tmp_path):
    recs = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r["kind"] == "train"]


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


class SlowSave(Callback):
    def __init__(self, clock):
        self.clock = clock

    def on_save(self, trainer, path):
        self.clock.advance(10.0)


def test_a_train_log_covers_the_time_since_the_previous_one(tmp_path, monkeypatch):
    """2 batches per epoch, a checkpoint (10 s) at every epoch end, logs at steps 3 and 6: each window holds
    3 steps (1 s each) and one checkpoint, across epoch boundaries; losses are the mean over its steps."""
    clock = FakeClock()
    monkeypatch.setattr(time, "perf_counter", clock)
    trainer_for(tmp_path, Counting(clock), [SlowSave(clock)], max_steps=6, log_every=3).fit()
    logs = train_logs(tmp_path)
    assert [r["step"] for r in logs] == [3, 6]
    for r, losses in zip(logs, [(1, 2, 3), (4, 5, 6)]):
        assert r["loss"] == pytest.approx(sum(losses) / 3)
        assert r["train_time_s"] == pytest.approx(3.0) and r["save_time_s"] == pytest.approx(10.0)
        assert r["eval_time_s"] == pytest.approx(0.0)
        assert r["samples_per_s"] == pytest.approx(3 * 8 / 13.0)  # 24 samples in 13 s of wall time


def test_a_real_sleep_in_a_save_is_inside_the_window(tmp_path):
    class Sleep(Callback):
        def on_save(self, trainer, path):
            time.sleep(0.3)

    t0 = time.perf_counter()
    trainer_for(tmp_path, Counting(), [Sleep()], max_steps=4, log_every=4).fit()
    (log,) = train_logs(tmp_path)
    wall = 4 * 8 / log["samples_per_s"]
    assert log["save_time_s"] >= 0.3 and wall >= log["save_time_s"] + log["train_time_s"] - 1e-6
    assert wall >= 0.3 and wall <= time.perf_counter() - t0


def test_no_tensor_is_read_between_log_steps(tmp_path, monkeypatch):
    class StepTimer(Callback):
        every_step = True  # called after every step: the trainer need not know which ones were skipped

        def __init__(self):
            self.steps = []

        def on_step_end(self, trainer):
            self.steps.append(trainer.step)

    task, timer = Counting(), StepTimer()
    trainer = trainer_for(tmp_path, task, [timer], max_steps=9, log_every=4, save_every=0, eval_every=100)
    assert stray_reads(monkeypatch, trainer) == []
    assert trainer.step == 9 and timer.steps == list(range(1, 10))


@pytest.mark.parametrize("device", DEVICES)
def test_ema_weights_cost_no_host_read_and_skip_the_nan_step(tmp_path, monkeypatch, device):
    """The image classifier's EMA callback gates its update on the device: a run with EMA on and a NaN loss at
    step 6 reads nothing between log steps, skips step 6 (weights and EMA) and counts 8 EMA steps of 9."""
    class NanAt6(ImageClassificationTask):
        calls = 0

        def forward(self, batch):
            out = super().forward(batch)
            if self.training:
                self.calls += 1
                out["loss"] = out["loss"] * (float("nan") if self.calls == 6 else 1.0)
            return out

    torch.manual_seed(0)
    task = NanAt6(build_encoder(IMAGE_ENCODERS, {"name": "tiny_cnn", "widths": [4, 4, 8, 8], "img_size": 16},
                                "model.image"), 2, ema_decay=0.9)
    images = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(0))  # (N, 3, H, W)
    items = Records([{IMAGE: images[i], LABELS: i % 2} for i in range(16)])
    tc = TrainConfig(batch_size=8, report=False, device=device, precision="fp32", max_steps=9, log_every=4,
                     save_every=0, eval_every=100)
    trainer = Trainer(task, RunConfig(task="toy", output_dir=str(tmp_path), train=tc), items, None,
                      lambda its: {IMAGE: torch.stack([it[IMAGE] for it in its]),
                                   LABELS: torch.tensor([it[LABELS] for it in its])}, callbacks=[EmaCallback(task)])
    assert not trainer._host_steps
    assert stray_reads(monkeypatch, trainer) == []
    assert trainer.step == 9 and trainer.bad_steps_total == 1 and int(task.ema_steps) == 8


def test_an_optimizer_growing_its_state_in_a_rolled_back_step_is_an_error():
    class Growing(torch.optim.SGD):
        def step(self, closure=None):
            super().step(closure)
            for p in S.params_of(self):
                self.state[p][f"extra{len(self.state[p])}"] = torch.zeros(1)

    model = nn.Linear(2, 2)
    opt = Growing(model.parameters(), lr=0.1, momentum=0.9)
    set_grads(model, 1.0)
    S.step_unless(opt, torch.tensor(0.0), on_device=False)
    assert S.Undo.ready(opt)
    with pytest.raises(RuntimeError, match="train.undo_skips=false"):
        S.step_unless(opt, torch.tensor(1.0), False, S.Undo())


@pytest.mark.parametrize("device", DEVICES)
def test_undo_skips_a_nan_step_of_plain_sgd_without_host_reads(tmp_path, monkeypatch, device):
    """train.undo_skips with SGD (no fused kernel on CPU): a NaN loss at step 4 is rolled back on the device, with
    no host read between log steps, and the run ends with the weights of the host-decided run, bit for bit."""
    weights = {}
    for undo in (False, True):
        torch.manual_seed(0)
        task = NanLossAt(4)
        trainer = trainer_for(tmp_path / str(undo), task, max_steps=7, log_every=7, save_every=0, eval_every=100,
                              undo_skips=undo, device=device)
        trainer.cfg.optim.name, trainer.cfg.optim.momentum, trainer.cfg.optim.fused = "sgd", 0.9, False
        stray = stray_reads(monkeypatch, trainer)
        monkeypatch.undo()
        assert (stray == []) == undo, stray  # the host-decided run reads each step's verdict
        assert isinstance(trainer.opt, torch.optim.SGD) and trainer.bad_steps_total == 1
        weights[undo] = [p.detach().clone() for p in task.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(weights[False], weights[True]))


@pytest.mark.slow  # a 2-process torchrun launch: ~18 s on 2 shared CPUs
def test_fsdp_skips_a_nan_step_on_the_device_on_both_ranks(tmp_path):
    """FSDP2 on 2 gloo ranks: fused AdamW takes the device flag with DTensor parameters, so a NaN loss at step 3
    leaves every rank's parameter shards and optimizer state exactly as they were (and no other step does),
    with no host read between log steps."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "tests", "train", "fsdp_skip_worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got == {"stray": [], "host_steps": False, "bad": 1, "unchanged_after": [3], "steps": 5}, rank
