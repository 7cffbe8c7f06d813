"""ITM: hard negatives never pick a positive and follow softmax(similarity) over the negatives (hand-made
similarities), duplicate captions count as positives, and the objective trains bound to a clip objective. On 2 gloo
ranks the negatives come from the global batch, and the loss and gradients equal one process's on the concatenated
batch (hand reference); a rank without pairs joins the gathers."""
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


# ---- distributed: hard negatives from the global batch on 2 gloo processes -----------------------------------------

class _Text(torch.nn.Module):
    """A stand-in text encoder: token embeddings (B, L, 6), pooled by their masked mean."""

    modality = "text"

    def __init__(self) -> None:
        super().__init__()
        self.out_dim, self.emb = 6, torch.nn.Embedding(20, 6)

    def forward(self, batch):
        from mm_ptft.types import EncoderOutput

        mask = batch["text_mask"].bool()
        tokens = self.emb(batch["text"])  # (B, L, 6)
        pooled = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # (B, 6)
        return EncoderOutput(pooled, tokens, mask)


class _Image(torch.nn.Module):
    """A stand-in image encoder: a linear map of 3 precomputed patch features (B, 3, 5) → tokens (B, 3, 4)."""

    modality = "image"

    def __init__(self) -> None:
        super().__init__()
        self.out_dim, self.lin = 4, torch.nn.Linear(5, 4)

    def forward(self, batch):
        from mm_ptft.types import EncoderOutput

        tokens = self.lin(batch["image"])  # (B, 3, 4)
        return EncoderOutput(tokens.mean(1), tokens)


def _itm_modules():
    from mm_ptft.objectives.contrastive import ContrastiveObjective
    from mm_ptft.objectives.matching import MatchingObjective

    torch.manual_seed(0)
    encs = {"image": _Image(), "text": _Text()}
    clip = ContrastiveObjective({"image": 4, "text": 6}, [("image", "text")], "clip", 8, init_scale=4.0)
    obj = MatchingObjective({"image": 4, "text": 6}, {"name": "cross_attention", "out_dim": 8, "heads": 2,
                                                     "dropout": 0.0})
    obj.bind({"clip": clip})
    return encs, obj


GLOBAL_B, LOCAL_B, DUPLICATE = 8, 4, (1, 6)  # captions 1 (rank 0) and 6 (rank 1) are the same token sequence


def _itm_batch(rank: int):
    """Rank 0's captions are 3 tokens long, rank 1's 5 (so the gathered text tokens need padding); caption 6 repeats
    caption 1 (padded to another length)."""
    g = torch.Generator().manual_seed(7)
    images = torch.randn(GLOBAL_B, 3, 5, generator=g)
    ids = torch.randint(1, 20, (GLOBAL_B, 5), generator=g)
    mask = torch.ones(GLOBAL_B, 5, dtype=torch.long)
    mask[:LOCAL_B, 3:] = 0
    ids = ids.masked_fill(~mask.bool(), 0)
    ids[DUPLICATE[1]] = 0
    ids[DUPLICATE[1], :3] = ids[DUPLICATE[0], :3]
    mask[DUPLICATE[1], 3:] = 0
    if rank < 0:  # the concatenated batch, one process
        return {"image": images, "text": ids, "text_mask": mask}
    rows = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
    width = 3 if rank == 0 else 5
    return {"image": images[rows], "text": ids[rows, :width], "text_mask": mask[rows, :width]}


def _itm_worker(rank: int, world: int, port: int, out_path: str) -> None:
    from datetime import timedelta

    import torch.distributed as dist

    from mm_ptft.objectives import EncodedBatch

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=300))
    encs, obj = _itm_modules()
    batch = _itm_batch(rank)
    torch.manual_seed(100 + rank)
    with torch.no_grad():  # many draws: which global rows become negatives
        draws = [obj.match_pairs(EncodedBatch(encs, batch), batch) for _ in range(30)]
    p = obj.match_pairs(EncodedBatch(encs, batch), batch)
    loss, _ = obj.pair_loss(p)
    loss.backward()
    params = {**{f"enc.{k}.{n}": q for k, e in encs.items() for n, q in e.named_parameters()},
              **{f"itm.{n}": q for n, q in obj.named_parameters()}}
    grads = {}
    for name, q in params.items():  # what DDP does: average the gradients over the ranks
        g = q.grad if q.grad is not None else torch.zeros_like(q)
        dist.all_reduce(g)
        grads[name] = g / world
    sims = obj.similarities(EncodedBatch(encs, batch), gather=True)
    mean = loss.detach().clone()
    dist.all_reduce(mean)
    result = {"loss": mean / world, "grads": grads, "offset": p.offset, "sim_i2t": sims[0],
              "pairs": (p.image_idx, p.text_idx, p.labels), "neg_text": torch.stack([d.text_idx[LOCAL_B:2 * LOCAL_B]
                                                                               for d in draws])}
    result["mixed"] = _mixed(rank)
    results = [None] * world
    dist.all_gather_object(results, result)
    if rank == 0:
        torch.save(results, out_path)
    dist.barrier()
    dist.destroy_process_group()


class _TextNorm(torch.nn.Module):
    """A second objective that applies to text-only batches."""

    modalities, name = ("text",), "norm"

    def applies_to(self, batch) -> bool:
        return "text" in batch

    def forward(self, feats, batch):
        return {"norm_loss": feats["text"].pooled.pow(2).mean()}


def _mixed(rank: int) -> dict:
    """Rank 0's batch is paired, rank 1's text only: rank 1 joins the clip and ITM gathers with no rows."""
    encs, obj = _itm_modules()
    task = PretrainTask(encs, {"clip": obj._similarity[0], "itm": obj, "norm": _TextNorm()},
                        sources=["pairs", "texts"])
    batch = _itm_batch(0)
    torch.manual_seed(5)
    out = task({"pairs": batch} if rank == 0 else {"texts": {k: batch[k] for k in ("text", "text_mask")}})
    out["loss"].backward()
    return {k: float(v) for k, v in out.items() if k.endswith("loss")}


@pytest.fixture(scope="module")
def itm_two_ranks(tmp_path_factory):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path_factory.mktemp("itm") / "itm.pt")
    mp.spawn(_itm_worker, args=(2, port, out), nprocs=2, join=True)
    return torch.load(out, weights_only=False)


@pytest.mark.slow  # one spawn of 2 gloo ranks shared by the three tests (~20 s on 2 busy cores)
def test_two_ranks_mine_negatives_from_the_global_batch(itm_two_ranks) -> None:
    for rank, r in enumerate(itm_two_ranks):
        assert r["offset"] == rank * LOCAL_B and r["sim_i2t"].shape == (LOCAL_B, GLOBAL_B)
        negs = r["neg_text"]  # (draws, B) the global caption drawn as each image's negative (every row has one)
        other = (negs < rank * LOCAL_B) | (negs >= (rank + 1) * LOCAL_B)
        assert other.any(), "no negative came from the other rank's batch"
        own = torch.arange(LOCAL_B) + rank * LOCAL_B
        assert not (negs == own).any(), "a sample's own caption was drawn as its negative"
        dup_row, dup_of = (DUPLICATE[0], DUPLICATE[1]) if rank == 0 else (DUPLICATE[1] - LOCAL_B, DUPLICATE[0])
        assert not (negs[:, dup_row] == dup_of).any(), "the same caption on the other rank was drawn as a negative"


@pytest.mark.slow  # one spawn of 2 gloo ranks shared by the three tests (~20 s on 2 busy cores)
def test_two_rank_itm_loss_and_gradients_equal_one_process_on_the_concatenated_batch(itm_two_ranks) -> None:
    """Hand reference: one process, the 8 samples in one batch (captions padded to 5), the same pairs the two ranks
    drew (their global indices), mean 2-way cross-entropy over all of them."""
    import torch.nn.functional as F

    encs, obj = _itm_modules()
    batch = _itm_batch(-1)
    img, txt = encs["image"](batch), encs["text"](batch)
    clip = obj._similarity[0]
    with torch.no_grad():  # the similarities against every sample of the global batch
        sim = clip.losses["image_text"].scale * clip.embed({"image": img}, "image") @ clip.embed({"text": txt}, "text").T
    i_idx = torch.cat([r["pairs"][0] for r in itm_two_ranks])
    t_idx = torch.cat([r["pairs"][1] for r in itm_two_ranks])
    labels = torch.cat([r["pairs"][2] for r in itm_two_ranks])
    ones = torch.ones(GLOBAL_B, 3, dtype=torch.bool)
    logits = obj.match_logits((img.tokens[i_idx], ones[i_idx]), (txt.tokens[t_idx], txt.mask[t_idx]))  # (P, 2)
    ref = F.cross_entropy(logits, labels)
    ref.backward()
    for rank, r in enumerate(itm_two_ranks):
        torch.testing.assert_close(r["sim_i2t"], sim[rank * LOCAL_B:(rank + 1) * LOCAL_B], atol=1e-5, rtol=1e-5)
    assert itm_two_ranks[0]["loss"].item() == pytest.approx(ref.item(), abs=1e-5)
    params = {**{f"enc.{k}.{n}": q for k, e in encs.items() for n, q in e.named_parameters()},
              **{f"itm.{n}": q for n, q in obj.named_parameters()}}
    for name, q in params.items():
        want = q.grad if q.grad is not None else torch.zeros_like(q)
        torch.testing.assert_close(itm_two_ranks[0]["grads"][name], want, atol=1e-5, rtol=1e-4, msg=name)
    assert params["enc.text.emb.weight"].grad.abs().sum() > 0  # the gathered tokens carried gradients back


@pytest.mark.slow  # one spawn of 2 gloo ranks shared by the three tests (~20 s on 2 busy cores)
def test_a_rank_without_pairs_joins_the_itm_gathers(itm_two_ranks) -> None:
    """Mixed sources: rank 1 had no (image, text) batch; both ranks finished forward and backward, and rank 0's ITM
    loss is its pairs' mean cross-entropy times 2 (the world size over the global pair count: rank 1 added none)."""
    r0, r1 = itm_two_ranks[0]["mixed"], itm_two_ranks[1]["mixed"]
    assert "itm_loss" in r0 and "itm_loss" not in r1 and "norm_loss" in r1
    assert 0 < r0["itm_loss"] < 10
