"""ITM: hard negatives never pick a positive and follow softmax(similarity) over the negatives (hand-made
similarities), duplicate captions count as positives, and the objective trains bound to a clip objective."""
from __future__ import annotations

import math

import pytest
import torch

from mm_ptft.heads.pretraining import PretrainTask
from mm_ptft.objectives import OBJECTIVES
from mm_ptft.objectives.matching import hard_negatives, itm, same_text


def test_negatives_never_positive_and_hardest_most_often() -> None:
    sim = torch.tensor([[5.0, 3.0, 1.0, 0.0],  # row 0: column 1 is the hardest negative
                        [0.0, 5.0, 2.0, 2.0],
                        [0.0, 4.0, 5.0, 0.0],
                        [1.0, 2.0, 3.0, 9.0]])
    positive = torch.eye(4, dtype=torch.bool)
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(4, 4)
    n = 20000
    for _ in range(n // 100):
        idx, valid = hard_negatives(sim.repeat(100, 1), positive.repeat(100, 1), g)
        assert valid.all()
        counts.index_put_((torch.arange(4).repeat(100), idx), torch.ones(400), accumulate=True)
    assert counts.diagonal().sum() == 0, "a positive was drawn as a negative"
    freq = counts / counts.sum(1, keepdim=True)
    for row in range(4):  # expected: exp(s) over the negatives only, renormalised (hand computation)
        neg = [c for c in range(4) if c != row]
        z = sum(math.exp(sim[row, c]) for c in neg)
        for c in neg:
            assert freq[row, c].item() == pytest.approx(math.exp(sim[row, c]) / z, abs=0.02)
    assert freq[0].argmax().item() == 1 and freq[0, 1] > freq[0, 2] > freq[0, 3]


def test_duplicate_captions_are_positives_and_a_row_of_positives_has_no_negative() -> None:
    ids = torch.tensor([[2, 5, 3, 0], [2, 5, 3, 0], [2, 6, 3, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0]])
    pos = same_text(ids, mask)
    assert pos.tolist() == [[True, True, False], [True, True, False], [False, False, True]]
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        idx, valid = hard_negatives(torch.randn(3, 3, generator=g) * 5, pos, g)
        assert valid.all() and idx[0] == 2 and idx[1] == 2 and idx[2] in (0, 1)
    _, valid = hard_negatives(torch.zeros(2, 2), torch.ones(2, 2, dtype=torch.bool))
    assert not valid.any()


def test_itm_trains_with_clip_and_reports_accuracy(encoders, batch) -> None:
    torch.manual_seed(0)
    objectives = {"clip": OBJECTIVES.build({"name": "clip", "embed_dim": 16, "pairs": [["image", "text"]]}, "c",
                                           encoders=encoders),
                  "itm": itm(encoders, fusion={"name": "cross_attention", "out_dim": 32, "heads": 2})}
    task = PretrainTask({k: encoders[k] for k in ("image", "text")}, objectives, {"clip": 1.0, "itm": 1.0})
    task.train()
    out = task(batch)
    assert {"itm_loss", "clip_image_text_loss", "loss"} <= set(out)
    out["loss"].backward()
    assert any(p.grad is not None for p in objectives["itm"].fusion.parameters())
    assert all(p.grad is not None for p in encoders["image"].parameters() if p.requires_grad)
    task.eval()
    with torch.no_grad():
        ev = task(batch)
    pairs = ev["totals"]["itm_pairs"].item()
    assert batch["text"].shape[0] < pairs <= 3 * batch["text"].shape[0]
    assert 0 <= ev["totals"]["itm_correct"].item() <= pairs


def test_itm_without_contrastive_objective_is_an_error(encoders) -> None:
    with pytest.raises(ValueError, match="contrastive objective"):
        PretrainTask({k: encoders[k] for k in ("image", "text")}, {"itm": itm(encoders)})
    with pytest.raises(ValueError, match="named 'other'"):
        clip = OBJECTIVES.build({"name": "clip", "embed_dim": 16}, "c", encoders=encoders)
        PretrainTask(dict(encoders), {"clip": clip, "itm": itm(encoders, contrastive="other")})
