"""ImageClassificationTask: MixUp/CutMix only in training, EMA updated once per optimizer step
(checked against the EMA formula) through its trainer callback, a NaN/Inf step skipped by the EMA on the device
(checked against the formula and timm's ModelEmaV3 updated only on the good steps), EMA metrics, checkpoint reload,
and LoRA on a ViT encoder."""
import copy
from types import SimpleNamespace

import pytest
import torch
from timm.utils import ModelEmaV3

from mm_ptft.config import FinetuneConfig
from mm_ptft.data.image import ImageAugment, batch_mix
from mm_ptft.encoders import build_encoder
from mm_ptft.encoders.image import IMAGE_ENCODERS
from mm_ptft.train.finetune import apply_finetune
from mm_ptft.heads.image_classification import EmaCallback, ImageClassificationTask
from mm_ptft.train import step as S

CNN = {"name": "tiny_cnn", "widths": [8, 8, 16, 16], "img_size": 32}
VIT = {"name": "tiny_vit", "img_size": 32, "patch_size": 8, "dim": 32, "depth": 2, "heads": 2}


def make(spec=CNN, **kw) -> ImageClassificationTask:
    torch.manual_seed(0)
    return ImageClassificationTask(build_encoder(IMAGE_ENCODERS, spec, "model.image"), 3, **kw)


def batch(device="cpu"):
    return {"image": torch.randn(4, 3, 32, 32).to(device), "labels": torch.tensor([0, 1, 2, 1]).to(device)}


def test_mixing_applies_in_training_only():
    task = make(mix=batch_mix(ImageAugment(mixup_alpha=0.5), 3))
    seen = []
    task.head.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    task.train()
    b = batch()
    task(b)
    task.eval()
    with torch.no_grad():
        logits = task(b)["logits"]
        plain = task.head(task.encoder(b).pooled)
    torch.testing.assert_close(logits, plain)  # eval: the batch is not mixed
    assert task(b)["loss"] > 0


@pytest.mark.parametrize("optimizer", ["sgd", "fused_adamw"])
def test_ema_follows_the_formula_once_per_optimizer_step(optimizer):
    task = make(ema_decay=0.9).train()
    ema_callback = EmaCallback(task)  # the trainer calls it after every optimizer step
    params = list(task.parameters())
    opt = torch.optim.SGD(params, lr=0.5) if optimizer == "sgd" else torch.optim.AdamW(params, lr=0.1, fused=True)
    out = task(batch())  # creates the EMA from the initial weights
    w0 = task.head.proj.weight.detach().clone()
    torch.testing.assert_close(task.ema.module["head"].proj.weight, w0)
    task(batch())  # forwards without an optimizer step leave the EMA alone
    torch.testing.assert_close(task.ema.module["head"].proj.weight, w0)
    ema = w0
    for step in (1, 2):
        out["loss"].backward()
        opt.step()
        ema_callback.on_step_end(SimpleNamespace(found_inf=torch.zeros(())))  # folds the new weights in
        opt.zero_grad()
        w = task.head.proj.weight.detach().clone()
        d = task.ema.get_decay(step)  # timm's warmed-up decay: 0 at step 1, then rising towards 0.9
        ema = d * ema + (1 - d) * w
        torch.testing.assert_close(task.ema.module["head"].proj.weight, ema)
        out = task(batch())
    assert 0 < task.ema.get_decay(2) < 0.9 and not torch.allclose(ema, w) and int(task.ema_steps) == 2
    other = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1.0)  # another model's optimizer
    other.param_groups[0]["params"][0].grad = torch.ones(1)
    other.step()
    assert int(task.ema_steps) == 2
    assert not any(p.requires_grad for p in task.ema.parameters())
    assert set(task.encoders()) == {"image"} and task.encoders()["image"] is task.encoder


@pytest.mark.parametrize("device", ["cpu", *(["cuda"] if torch.cuda.is_available() else [])])
def test_a_skipped_nan_step_leaves_the_ema_as_a_reference_that_never_saw_it(device):
    """4 optimizer steps, the 3rd with a NaN loss (skipped by the fused optimizer on the device): the EMA equals
    the formula over the 3 good steps, and bit for bit timm's ModelEmaV3 updated on the host after good steps only
    (what the host-gated callback did), BatchNorm counters included."""
    task = make(ema_decay=0.9).train().to(device)
    opt = torch.optim.AdamW(list(task.parameters()), lr=0.1, fused=True)
    callback = EmaCallback(task)
    task(batch(device))  # creates the EMA from the initial weights
    ref = ModelEmaV3(copy.deepcopy(task.ema.module), decay=0.9, use_warmup=True, stochastic_rounding=False)
    hand, good = task.ema.module["head"].proj.weight.detach().clone(), 0
    for step in (1, 2, 3, 4):
        loss = task(batch(device))["loss"] * (float("nan") if step == 3 else 1.0)
        loss.backward()
        found_inf = S.nonfinite(S.grad_norm(S.params_of(opt), 1.0))
        S.step_unless(opt, found_inf, S.skips_on_device(opt))
        opt.zero_grad()
        before = copy.deepcopy(task.ema.module.state_dict())
        callback.on_step_end(SimpleNamespace(found_inf=found_inf))
        if step != 3:
            good += 1
            ref.update(task._live(), step=good)
            d = 0.0 if good == 1 else min(1 - (1 + good - 1) ** (-2 / 3), 0.9)  # timm's warm-up, by hand
            hand = d * hand + (1 - d) * task.head.proj.weight.detach()
        else:  # the skip happened on the device and the EMA did not move (not even its BatchNorm counters)
            assert float(found_inf) == 1.0
            assert all(torch.equal(v, before[k]) for k, v in task.ema.module.state_dict().items())
    assert int(task.ema_steps) == good == 3
    torch.testing.assert_close(task.ema.module["head"].proj.weight, hand)
    got, want = task.ema.module.state_dict(), ref.module.state_dict()
    assert got.keys() == want.keys()
    for k in got:
        assert torch.equal(got[k], want[k]), k
    assert int(got["encoder.stem.1.num_batches_tracked"]) == 5  # the live counter as of the last good step


def test_ema_metrics_and_checkpoint_reload():
    task = make(ema_decay=0.5).train()
    task(batch())
    task.eval()
    metrics = task.build_metrics()
    with torch.no_grad():
        b = batch()
        metrics.update(task(b), b)
    values = metrics.compute()
    assert {"accuracy", "macro_f1", "ema_accuracy", "ema_macro_f1"} <= set(values)
    fresh = make(ema_decay=0.5)
    assert fresh.ema is None
    fresh.load_state_dict(task.state_dict())  # what resume / evaluation do
    torch.testing.assert_close(fresh.ema.module["head"].proj.weight, task.ema.module["head"].proj.weight)


def test_lora_on_a_vit_encoder_trains_only_adapters_and_the_head():
    task = make(VIT, ema_decay=0.9)
    apply_finetune(task, FinetuneConfig(strategy="lora", lora_r=2))
    trainable = {n for n, p in task.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    task.train()
    task(batch())["loss"].backward()
    assert any("lora_" in n for n, _ in task.ema.named_parameters())  # the EMA copies the adapted model


@pytest.mark.parametrize("strategy", ["linear_probe", "llrd"])
def test_other_finetune_strategies_apply(strategy):
    task = make(VIT)
    apply_finetune(task, FinetuneConfig(strategy=strategy))
    enc_trainable = [p.requires_grad for p in task.encoder.parameters()]
    assert (not any(enc_trainable)) if strategy == "linear_probe" else all(enc_trainable)
    assert task.encoder.num_layers == 2  # blocks.0 / blocks.1 found for layer-wise LR decay
