"""Contrastive losses against open_clip and a hand computation; all-gather equivalence under gloo."""
from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mm_ptft.objectives import EncodedBatch
from mm_ptft.objectives.contrastive import ContrastiveLoss, clip_loss, resolve_pairs, siglip_loss


def _pairs(n: int = 16, d: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clip_loss_matches_open_clip(seed: int) -> None:
    from open_clip.loss import ClipLoss

    a, b = _pairs(seed=seed)
    scale = torch.tensor(1 / 0.07)
    ref = ClipLoss()(F.normalize(a, dim=-1), F.normalize(b, dim=-1), scale)
    assert clip_loss(a, b, scale).item() == pytest.approx(ref.item(), abs=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_siglip_loss_matches_open_clip(seed: int) -> None:
    from open_clip.loss import SigLipLoss

    a, b = _pairs(seed=seed)
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    ref = SigLipLoss()(F.normalize(a, dim=-1), F.normalize(b, dim=-1), scale, bias)
    assert siglip_loss(a, b, scale, bias).item() == pytest.approx(ref.item(), abs=1e-5)


def test_losses_match_hand_computation() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # normalised: e1, e2
    b = torch.tensor([[3.0, 4.0], [0.0, 1.0]])  # normalised: (0.6, 0.8), e2
    s = 2.0
    sim = [[0.6, 0.0], [0.8, 1.0]]  # cos(a_i, b_j)
    ce = lambda row, i: -math.log(math.exp(s * row[i]) / sum(math.exp(s * v) for v in row))  # noqa: E731
    a2b = (ce(sim[0], 0) + ce(sim[1], 1)) / 2
    b2a = (ce([sim[0][0], sim[1][0]], 0) + ce([sim[0][1], sim[1][1]], 1)) / 2
    assert clip_loss(a, b, s).item() == pytest.approx((a2b + b2a) / 2, abs=1e-6)
    bias = -1.0
    lsig = lambda z: -math.log(1 + math.exp(-z))  # noqa: E731
    total = sum(-lsig((1 if i == j else -1) * (s * sim[i][j] + bias)) for i in range(2) for j in range(2))
    assert siglip_loss(a, b, s, bias).item() == pytest.approx(total / 2, abs=1e-6)


def test_perfect_alignment_gives_low_clip_loss() -> None:
    a = torch.eye(8)
    assert clip_loss(a, a.clone(), 100.0).item() < 1e-3
    assert clip_loss(a, a.roll(1, 0), 100.0).item() > 10  # every pair mismatched


def test_module_owns_learnable_temperature_and_bias() -> None:
    a, b = _pairs()
    for kind, names in (("clip", {"log_scale"}), ("siglip", {"log_scale", "bias"})):
        mod = ContrastiveLoss(kind)
        mod(a.requires_grad_(), b).backward()
        assert {n for n, p in mod.named_parameters() if p.grad is not None} == names
    with pytest.raises(ValueError, match="choose one of"):
        ContrastiveLoss("infonce")


def test_resolve_pairs() -> None:
    assert resolve_pairs(["text", "image", "audio"], "all") == [("audio", "image"), ("audio", "text"), ("image", "text")]
    anchored = resolve_pairs(["text", "image", "audio"], "all", anchor="text")
    assert anchored == [("audio", "text"), ("image", "text")]
    assert resolve_pairs(["image", "text"], [["text", "image"]]) == [("image", "text")]
    with pytest.raises(ValueError, match="two different modalities"):
        resolve_pairs(["image", "text"], [["image", "audio"]])


def test_objective_emits_one_loss_per_pair_present() -> None:
    from mm_ptft.objectives.contrastive import ContrastiveObjective

    class Fixed(nn.Module):
        def __init__(self, key: str) -> None:
            super().__init__()
            self.key = key

        def forward(self, batch):
            from mm_ptft.types import EncoderOutput
            return EncoderOutput(batch[self.key])

    obj = ContrastiveObjective({"audio": 6, "image": 5, "text": 4}, [("image", "text"), ("audio", "text")], "siglip", 8)
    encs = {"text": Fixed("text"), "image": Fixed("image"), "audio": Fixed("audio")}
    batch = {"text": torch.randn(4, 4), "image": torch.randn(4, 5)}
    out = obj(EncodedBatch(encs, batch), batch)
    assert set(out) == {"siglip_image_text_loss"}
    batch["audio"] = torch.randn(4, 6)
    assert set(obj(EncodedBatch(encs, batch), batch)) == {"siglip_image_text_loss", "siglip_audio_text_loss"}


# ---- distributed: B per rank on 2 gloo processes == 2B in one process ------------------------------

class _Pair(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.pa, self.pb = nn.Linear(6, 5), nn.Linear(7, 5)
        self.loss = ContrastiveLoss(kind, init_scale=5.0, init_bias=-2.0)

    def forward(self, xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        return self.loss(self.pa(xa), self.pb(xb))


def _data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return torch.randn(n, 6, generator=g), torch.randn(n, 7, generator=g)


def _worker(rank: int, world: int, port: int, per_rank: int, out_path: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    from datetime import timedelta

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=300))  # a collective mismatch fails, not hangs
    xa, xb = _data(per_rank * world)
    sl = slice(rank * per_rank, (rank + 1) * per_rank)
    results = {}
    for kind in KINDS:
        model = DDP(_Pair(kind))
        loss = model(xa[sl], xb[sl])
        loss.backward()  # DDP averages parameter gradients over ranks, as in training
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        results[kind] = {"loss": mean_loss / world, "grads": {n: p.grad for n, p in model.module.named_parameters()}}
    results["mixed"] = _mixed_sources(rank)
    if rank == 0:
        torch.save(results, out_path)
    dist.barrier()  # leave together: a gloo rank tearing down while its peer still sends can abort
    dist.destroy_process_group()


class _Lin(nn.Module):
    """A stand-in encoder: a linear map of precomputed features under one batch key."""

    def __init__(self, key: str, dim: int) -> None:
        super().__init__()
        self.key, self.modality, self.out_dim = key, key, 4
        self.lin = nn.Linear(dim, 4)

    def forward(self, batch):
        from mm_ptft.types import EncoderOutput

        return EncoderOutput(self.lin(batch[self.key]))


class _TextNorm(nn.Module):
    """A second objective that applies to text-only batches."""

    modalities, name = ("text",), "norm"

    def applies_to(self, batch) -> bool:
        return "text" in batch

    def forward(self, feats, batch):
        return {"norm_loss": feats["text"].pooled.pow(2).mean()}


def _mixed_task():
    from mm_ptft.heads.pretraining import PretrainTask
    from mm_ptft.objectives.contrastive import ContrastiveObjective

    torch.manual_seed(0)
    encs = {"image": _Lin("image", 6), "text": _Lin("text", 7)}
    objs = {"clip": ContrastiveObjective({"image": 4, "text": 4}, [("image", "text")], "clip", 5), "norm": _TextNorm()}
    return PretrainTask(encs, objs, sources=["pairs", "texts"])


def _mixed_batches():
    xa, xb = _data(5)
    return [{"pairs": {"image": xa[:3], "text": xb[:3]}}, {"texts": {"text": xb[3:]}}]


def _mixed_sources(rank: int) -> float:
    """Rank 0 holds a paired source, rank 1 only text: rank 1 must join the all-gather (0 rows)."""
    task = _mixed_task()
    out = task(_mixed_batches()[rank])
    out["loss"].backward()
    return float(out.get("clip_image_text_loss", torch.tensor(-1.0)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


KINDS = ("clip", "siglip")


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory) -> dict:
    """Both losses computed by 2 gloo processes with ``per_rank`` samples each (one spawn)."""
    import torch.multiprocessing as mp

    out = str(tmp_path_factory.mktemp("dist") / "dist.pt")
    mp.spawn(_worker, args=(2, _free_port(), 5, out), nprocs=2, join=True)
    return torch.load(out, weights_only=True)


@pytest.mark.parametrize("kind", KINDS)
def test_two_gloo_processes_match_one_process_with_double_batch(kind: str, two_process_results: dict) -> None:
    got = two_process_results[kind]
    ref_model = _Pair(kind)
    xa, xb = _data(10)  # one process, batch 2B
    ref_loss = ref_model(xa, xb)
    ref_loss.backward()
    assert got["loss"].item() == pytest.approx(ref_loss.item(), abs=1e-5)
    for name, p in ref_model.named_parameters():
        torch.testing.assert_close(got["grads"][name], p.grad, atol=1e-5, rtol=1e-4, msg=name)
    # without gathering, each rank would only see B-1 negatives and the loss would differ:
    with torch.no_grad():
        local = 0.5 * sum(float(_Pair(kind)(xa[s], xb[s])) for s in (slice(0, 5), slice(5, 10)))
    assert abs(local - ref_loss.item()) > 1e-3


def test_mixed_batches_where_one_rank_lacks_a_source_do_not_deadlock(two_process_results: dict) -> None:
    """Rank 1's batch has no paired source; it joined the gather, and rank 0's loss equals the
    one-process loss on its own 3 pairs (rank 1 added no negatives)."""
    task = _mixed_task()
    ref = task(_mixed_batches()[0])["clip_image_text_loss"]
    assert two_process_results["mixed"] == pytest.approx(ref.item(), abs=1e-5)
