"""Regularisation toward the starting weights (``finetune.regularize``): L2-SP and EWC penalties against hand
computations on a toy model, the empirical Fisher of a 2-parameter logistic model against its closed form, the
penalty's gradient pulling toward θ0, and the named loss part in training only."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mm_ptft.config import ConfigError
from mm_ptft.contracts import Task
from mm_ptft.train.regularize import attach, fisher_diagonal
from mm_ptft.types import LABELS


class ToyEncoder(nn.Module):
    """Just enough of an encoder (``EncoderLike``) for ``Task.encoders()`` to find it."""

    modality, out_dim = "text", 2

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, x):
        return self.lin(x)

    def lora_targets(self):
        return []

    def set_grad_checkpointing(self, enabled=True):
        pass

    def save_pretrained(self, path):
        pass


class ToyTask(Task):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder, self.head = ToyEncoder(), nn.Linear(2, 2)

    def forward(self, batch):
        return {"loss": F.cross_entropy(self.head(self.encoder(batch["x"])), batch[LABELS])}


BATCH = {"x": torch.tensor([[1.0, -2.0], [0.5, 3.0]]), LABELS: torch.tensor([0, 1])}


def shift(task: ToyTask) -> None:
    """Move the encoder by known amounts (weight +0.1, bias -0.3 everywhere) and the head far away."""
    with torch.no_grad():
        task.encoder.lin.weight += 0.1
        task.encoder.lin.bias -= 0.3
        task.head.weight += 5.0


def test_l2sp_is_half_lambda_times_the_squared_distance_over_encoder_params_only():
    task = ToyTask()
    penalty = attach(task, {"name": "l2_sp", "weight": 0.5})
    shift(task)
    task.train()
    out = task(BATCH)
    # 4 weights moved by 0.1, 2 biases by 0.3; the head's move does not count
    expected = 0.5 / 2 * (4 * 0.1 ** 2 + 2 * 0.3 ** 2)
    assert out["l2sp_loss"].item() == pytest.approx(expected, rel=1e-5)
    penalty.handle.remove()
    plain = task(BATCH)["loss"]
    assert out["loss"].item() == pytest.approx(plain.item() + expected, rel=1e-5)


def test_penalty_only_in_training_mode():
    task = ToyTask()
    attach(task, {"name": "l2_sp", "weight": 1.0})
    shift(task)
    task.eval()
    assert "l2sp_loss" not in task(BATCH)


def test_l2sp_gradient_is_lambda_times_the_displacement_and_a_step_moves_back():
    task = ToyTask()
    theta0 = task.encoder.lin.weight.detach().clone()
    penalty = attach(task, {"name": "l2_sp", "weight": 2.0})
    shift(task)
    w = task.encoder.lin.weight
    (grad,) = torch.autograd.grad(penalty.value(), [w])
    assert torch.allclose(grad, 2.0 * torch.full_like(w, 0.1), atol=1e-6)  # λ (θ − θ0)
    with torch.no_grad():
        before = (w - theta0).norm().item()
        w -= 0.1 * grad
    assert (w - theta0).norm().item() == pytest.approx(before * (1 - 0.1 * 2.0), rel=1e-5)


def test_ewc_weights_each_squared_displacement_by_its_fisher():
    task = ToyTask()
    star = {k: p.detach().clone() for k, p in
            {"text/lin.weight": task.encoder.lin.weight, "text/lin.bias": task.encoder.lin.bias}.items()}
    fisher = {"text/lin.weight": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "text/lin.bias": torch.tensor([0.5, 0.0])}
    seen = []

    def load_previous(run_dir, samples):
        seen.append((run_dir, samples))
        return star, fisher

    attach(task, {"name": "ewc", "weight": 3.0, "fisher_from": "runs/a", "fisher_samples": 7}, load_previous)
    shift(task)
    task.train()
    out = task(BATCH)
    expected = 3.0 / 2 * ((1 + 2 + 3 + 4) * 0.1 ** 2 + 0.5 * 0.3 ** 2)
    assert out["ewc_loss"].item() == pytest.approx(expected, rel=1e-5)
    assert seen == [("runs/a", 7)]


def test_fisher_of_a_two_parameter_logistic_model_matches_the_closed_form():
    """p(y=1|x) = σ(w·x): ∂ log p(y|x)/∂w = (y − σ(w·x)) x, so F_i = mean_n ((σ_n − y_n) x_ni)²."""
    w = nn.Parameter(torch.tensor([0.7, -0.4]))
    xs = [(1.0, 2.0), (-1.5, 0.5), (0.3, -2.0), (2.0, 1.0)]
    ys = [1, 0, 0, 1]

    def model(batch):
        logit = batch["x"] @ w  # (1,)
        return {"loss": F.binary_cross_entropy_with_logits(logit, batch["y"])}

    samples = [{"x": torch.tensor([x]), "y": torch.tensor([float(y)])} for x, y in zip(xs, ys)]
    got = fisher_diagonal(model, samples, {"w": w})["w"]
    sig = [1 / (1 + math.exp(-(0.7 * a - 0.4 * b))) for a, b in xs]
    expected = [sum(((s - y) * x[i]) ** 2 for s, y, x in zip(sig, ys, xs)) / len(xs) for i in range(2)]
    assert got.tolist() == pytest.approx(expected, rel=1e-5)


def test_bad_specs_name_the_key():
    with pytest.raises(ConfigError, match="finetune.regularize.*l2_sp"):
        attach(ToyTask(), {"name": "l3", "weight": 1.0})
    with pytest.raises(ConfigError, match="finetune.regularize.*weight"):
        attach(ToyTask(), {"name": "l2_sp", "wieght": 1.0})
    with pytest.raises(ConfigError, match="finetune.regularize.weight"):
        attach(ToyTask(), {"name": "l2_sp", "weight": -1.0})
    task = ToyTask()
    task.encoder.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        attach(task, {"name": "l2_sp", "weight": 1.0})
    wrong = {"text/lin.weight": torch.zeros(3, 2)}
    with pytest.raises(ConfigError, match="fisher_from.*shape"):
        attach(ToyTask(), {"name": "ewc", "weight": 1.0, "fisher_from": "r"}, lambda r, n: (wrong, wrong))
