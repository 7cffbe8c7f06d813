"""Retrieval recall@K against torchmetrics' RetrievalRecall; zero-shot accuracy; loss means."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mm_ptft.metrics.retrieval import PretrainMetrics, recall_at_k


def _torchmetrics_recall(sim: torch.Tensor, k: int) -> float:
    from torchmetrics.retrieval import RetrievalRecall

    n, m = sim.shape
    indexes = torch.arange(n).repeat_interleave(m)  # one query per row
    target = torch.eye(n, m, dtype=torch.bool).flatten()
    return float(RetrievalRecall(top_k=k)(sim.flatten(), target, indexes=indexes))


@pytest.mark.parametrize("seed", [0, 1])
def test_recall_matches_torchmetrics(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(40, 8, generator=g)
    sim = a @ (a + 1.5 * torch.randn(40, 8, generator=g)).T  # noisy pairs: recalls strictly between 0 and 1
    ours = recall_at_k(sim, (1, 5, 10))
    for k, v in ours.items():
        assert v == pytest.approx(_torchmetrics_recall(sim, k), abs=1e-6)
    assert 0 < ours[1] < ours[5] < ours[10] < 1


def test_pretrain_metrics_keys_and_values() -> None:
    emb = F.normalize(torch.randn(20, 6), dim=-1)
    m = PretrainMetrics([("image", "text")], num_classes=2)
    labels = torch.arange(20) % 2
    for s in (slice(0, 12), slice(12, 20)):  # two eval batches of different sizes
        logits = torch.stack([labels[s] == 0, labels[s] == 1], 1).float()  # perfect zero-shot
        out = {"clip_image_text_loss": torch.tensor(2.0 if s.start == 0 else 4.0),
               "embeddings": {"image": emb[s], "text": emb[s]}, "zeroshot_logits": {"image": logits}}
        m.update(out, {"labels": labels[s]})
    r = m.compute()
    assert r["image_to_text_r1"] == 1.0 and r["text_to_image_r1"] == 1.0 and r["mean_r1"] == 1.0
    assert r["zeroshot_image_accuracy"] == 1.0 and r["zeroshot_accuracy"] == 1.0
    assert r["clip_image_text_loss"] == pytest.approx((2 * 12 + 4 * 8) / 20)  # weighted by batch size
    shuffled = PretrainMetrics([("image", "text")])
    shuffled.update({"embeddings": {"image": emb, "text": emb.roll(1, 0)}}, {})
    assert shuffled.compute()["image_to_text_r1"] == 0.0
