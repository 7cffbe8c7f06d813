"""Frozen parts stay in eval mode while the rest trains: a linear probe, ``freeze_layers`` or LoRA on a
real timm ResNet (random init, BatchNorm everywhere) leaves every frozen BatchNorm's running mean, var
and batch counter bit-identical; full fine-tuning changes them."""
from __future__ import annotations

import pytest
import torch

from mm_ptft.config import FinetuneConfig, RunConfig, TrainConfig
from mm_ptft.contracts import keep_frozen_in_eval
from mm_ptft.data.image import ImageCollator
from mm_ptft.encoders import build_encoder
from mm_ptft.encoders.image import IMAGE_ENCODERS
from mm_ptft.train.finetune import prepare_for_training
from mm_ptft.heads.classification import ClassificationTask
from mm_ptft.train.trainer import Trainer


def resnet_task() -> ClassificationTask:
    torch.manual_seed(0)
    spec = {"name": "timm", "name_or_path": "resnet10t", "pretrained": False}
    return ClassificationTask(build_encoder(IMAGE_ENCODERS, spec, "model.image"), 3, dropout=0.5)


def bn_buffers(task: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every BatchNorm buffer (running_mean, running_var, num_batches_tracked), copied."""
    return {f"{name}.{b}": buf.clone() for name, m in task.named_modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for b, buf in m.named_buffers()}


def train_two_steps(task: ClassificationTask, ft: FinetuneConfig, out: str) -> None:
    g = torch.Generator().manual_seed(0)
    data = [{"image": torch.randn(3, 32, 32, generator=g), "labels": i % 3} for i in range(16)]  # (3, 32, 32)
    cfg = RunConfig(task="image_classification", output_dir=out, finetune=ft,
                    train=TrainConfig(max_steps=2, batch_size=8, device="cpu", report=False, log_every=1))
    groups = prepare_for_training(task, cfg)  # the strategy is applied by the run path, once
    Trainer(task, cfg, data, None, ImageCollator(), group_builder=groups).fit()


STRATEGIES = {
    "linear_probe": FinetuneConfig(strategy="linear_probe"),
    "freeze_layers": FinetuneConfig(strategy="freeze_layers", freeze_layers=2),
    "lora": FinetuneConfig(strategy="lora", lora_targets=["conv2"], lora_r=2),
    "full": FinetuneConfig(strategy="full"),
}


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_frozen_batchnorm_statistics_do_not_change(tmp_path, strategy):
    task = resnet_task()
    head_before = task.head.proj.weight.detach().clone()
    before = bn_buffers(task)
    train_two_steps(task, STRATEGIES[strategy], str(tmp_path))
    after = bn_buffers(task)
    assert not torch.equal(head_before, task.head.proj.weight)  # the trainable part did train
    frozen = {k for k, p in task.named_parameters() if not p.requires_grad}
    bn_frozen = {k for k in before if f"{k.rsplit('.', 1)[0]}.weight" in frozen}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert bool(bn_frozen) == (strategy != "full")
    assert changed == set(before) - bn_frozen  # frozen statistics stay, every trainable one moved
    assert task.training and task.head.training  # the head (and its dropout) still trains


def test_train_mode_skips_frozen_parts_but_not_parameter_free_ones():
    task = resnet_task()
    task.encoder.requires_grad_(False)
    task.train()
    assert not any(m.training for m in task.encoder.modules())
    assert task.head.training and all(m.training for m in task.head.modules())  # its dropout too
    task.eval()
    task.encoder.requires_grad_(True)
    task.train()
    assert all(m.training for m in task.modules())


def test_keep_frozen_in_eval_under_a_wrapper():
    """DDP and torch.compile call ``train`` on the wrapped task through ``nn.Module.train``."""
    task = resnet_task()
    task.encoder.requires_grad_(False)
    wrapper = torch.nn.Sequential(task)  # stands in for DDP / OptimizedModule: the task is its child
    wrapper.train()
    assert not task.encoder.training and task.head.training
    plain = torch.nn.Sequential(torch.nn.BatchNorm1d(2).requires_grad_(False), torch.nn.Linear(2, 2))
    keep_frozen_in_eval(plain)
    assert not plain[0].training and plain[1].training
