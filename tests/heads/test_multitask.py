"""The multitask model: per-task loss weights combine as the hand-computed weighted sum (and the shared
encoder's gradient is the same weighted sum of the tasks' gradients); one evaluation returns every task's
metrics, equal to scikit-learn's on the same predictions."""
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, mean_absolute_error, r2_score

from mm_ptft.encoders import TEXT_ENCODERS, build_encoder
from mm_ptft.heads.classification import ClassificationTask
from mm_ptft.heads.multitask import MultiTask
from mm_ptft.heads.regression import RegressionTask
from mm_ptft.types import LABELS, TEXT, TEXT_MASK

WEIGHTS = {"topic": 0.3, "warmth": 2.0}
CORPUS = [" ".join(f"w{i}" for i in range(k, k + 10)) for k in range(0, 40, 10)]
VOCAB = 30  # ids below the learned vocabulary (40 words + specials)


def _model() -> MultiTask:
    torch.manual_seed(0)
    enc = build_encoder(TEXT_ENCODERS, {"name": "tiny", "dim": 16, "depth": 1, "heads": 2, "vocab_size": 60},
                        "model.text", corpus=CORPUS)
    assert len(enc.tokenizer) > VOCAB
    return MultiTask({"topic": ClassificationTask(enc, 3, dropout=0.0),
                      "warmth": RegressionTask(enc, dropout=0.0, target_mean=1.0, target_std=2.0)}, WEIGHTS)


def _batch(n: int, labels: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {TEXT: torch.randint(5, VOCAB, (n, 6), generator=g), TEXT_MASK: torch.ones(n, 6, dtype=torch.long),
            LABELS: labels}


def _batches() -> dict[str, dict[str, torch.Tensor]]:
    return {"topic": _batch(5, torch.tensor([0, 2, 1, 1, 0]), 1),
            "warmth": _batch(4, torch.tensor([0.5, -1.0, 3.0, 2.0]), 2)}


def test_loss_is_the_weighted_sum_of_the_tasks_own_losses():
    model, batch = _model(), _batches()
    model.train()  # the tiny encoder has dropout: the same seed gives both forwards (tasks in sorted order) the same masks
    torch.manual_seed(7)
    out = model(batch)
    torch.manual_seed(7)
    logits = model.tasks["topic"](batch["topic"])["logits"]  # (5, 3)
    ce = F.cross_entropy(logits, batch["topic"][LABELS])
    pred = model.tasks["warmth"](batch["warmth"])["predictions"]  # (4,)
    mse = (((pred - batch["warmth"][LABELS]) / 2.0) ** 2).mean()  # on the standardised scale (std 2)
    assert out["topic_loss"].item() == pytest.approx(ce.item(), rel=1e-6)
    assert out["warmth_loss"].item() == pytest.approx(mse.item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx(0.3 * ce.item() + 2.0 * mse.item(), rel=1e-6)

    enc = model.tasks["topic"].encoder
    assert enc is model.tasks["warmth"].encoder and len(model.encoders()) == 1  # one shared encoder
    emb = enc.tok_embed.weight  # (V, D)
    grads = []
    for loss in (ce, mse):
        model.zero_grad()
        loss.backward(retain_graph=True)
        grads.append(emb.grad.clone())
    model.zero_grad()
    out["loss"].backward()
    torch.testing.assert_close(emb.grad, 0.3 * grads[0] + 2.0 * grads[1], rtol=1e-5, atol=1e-7)


def test_a_batch_with_one_task_trains_that_task_alone():
    model, batch = _model(), _batches()
    model.train()
    out = model({"warmth": batch["warmth"]})
    assert set(out) == {"loss", "warmth_loss"}
    assert out["loss"].item() == pytest.approx(2.0 * out["warmth_loss"].item())
    with pytest.raises(KeyError, match=r"batch holds tasks \['nope'\]"):
        model({"nope": batch["warmth"]})


def test_one_evaluation_returns_every_tasks_metrics():
    model = _model().eval()
    metrics = model.build_metrics()
    preds, labels, ce_sum, mse_sum = {"topic": [], "warmth": []}, {"topic": [], "warmth": []}, 0.0, 0.0
    with torch.no_grad():
        for seed in range(3):  # several eval batches, as the trainer feeds them
            batch = {"topic": _batch(6, torch.tensor([0, 1, 2, 2, 1, 0]), 10 + seed),
                     "warmth": _batch(3, torch.tensor([0.0, 1.5, -2.0]) + seed, 20 + seed)}
            out = model(batch)
            metrics.update(out, batch)
            preds["topic"] += out["topic"]["logits"].argmax(-1).tolist()
            preds["warmth"] += out["warmth"]["predictions"].tolist()
            for t in labels:
                labels[t] += batch[t][LABELS].tolist()
            ce_sum += float(F.cross_entropy(out["topic"]["logits"], batch["topic"][LABELS], reduction="sum"))
            mse_sum += float((((out["warmth"]["predictions"] - batch["warmth"][LABELS]) / 2.0) ** 2).sum())
    got = metrics.compute()
    assert got["topic/accuracy"] == pytest.approx(accuracy_score(labels["topic"], preds["topic"]))
    assert got["warmth/r2"] == pytest.approx(r2_score(labels["warmth"], preds["warmth"]), rel=1e-5)
    assert got["warmth/mae"] == pytest.approx(mean_absolute_error(labels["warmth"], preds["warmth"]), rel=1e-5)
    assert got["topic/loss"] == pytest.approx(ce_sum / 18, rel=1e-5)
    assert got["warmth/loss"] == pytest.approx(mse_sum / 9, rel=1e-5)
    assert got["loss"] == pytest.approx(0.3 * ce_sum / 18 + 2.0 * mse_sum / 9, rel=1e-5)
    assert {"topic/macro_f1", "warmth/mse"} <= set(got)
