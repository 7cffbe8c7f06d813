"""Masking statistics, losses against hand computations, and conditioning that actually helps."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mm_ptft.objectives import EncodedBatch
from mm_ptft.objectives.masked import (IGNORE, mae_loss, mask_tokens, masked_frames_loss, mlm_loss, patchify,
                                       patchify_video, random_patch_mask, span_mask, tube_mask, videomae_loss)
from mm_ptft.types import EncoderOutput

SPECIALS = [0, 1, 2, 3, 4]  # pad, unk, cls, sep, mask
MASK_ID, VOCAB = 4, 1000


def _ids(b: int = 400, n: int = 60) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, VOCAB, (b, n), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    ids[::2, 40:] = 0  # padding on every other row
    att = (ids != 0).long()
    ids[:, 20] = 1  # an [UNK] in every row
    return ids, att


def test_mlm_masking_proportions_80_10_10_and_never_specials() -> None:
    ids, att = _ids()
    inputs, labels = mask_tokens(ids, att, SPECIALS, MASK_ID, VOCAB, 0.15, torch.Generator().manual_seed(1))
    eligible = att.bool() & (ids >= 5)
    chosen = labels != IGNORE
    assert not (chosen & ~eligible).any(), "a special or padding token was chosen"
    assert torch.equal(inputs[~eligible], ids[~eligible]), "a special or padding token was changed"
    n = int(chosen.sum())
    assert abs(n / int(eligible.sum()) - 0.15) < 0.01  # ~19k eligible tokens: sd of the rate ~0.0026
    assert torch.equal(labels[chosen], ids[chosen])
    as_mask = (inputs == MASK_ID) & chosen
    kept = (inputs == ids) & chosen
    rand = chosen & ~as_mask & ~kept
    # multinomial(n, .8/.1/.1): sd of each share is below 0.01 at n ~ 2.9k
    assert abs(as_mask.sum() / n - 0.8) < 0.03
    assert abs(kept.sum() / n - 0.1) < 0.025
    assert abs(rand.sum() / n - 0.1) < 0.025
    assert not torch.isin(inputs[rand], torch.tensor(SPECIALS)).any(), "random replacement drew a special token"
    assert not ((inputs == MASK_ID) & ~chosen).any()


def test_mlm_loss_hand_values() -> None:
    logits = torch.zeros(1, 3, 10)
    labels = torch.tensor([[IGNORE, 7, IGNORE]])
    assert mlm_loss(logits, labels).item() == pytest.approx(math.log(10), abs=1e-6)
    logits[0, 1, 7] = 100.0
    logits[0, 0, 3] = -50  # an ignored position must not count
    assert mlm_loss(logits, labels).item() < 1e-6
    zero = mlm_loss(logits.requires_grad_(), torch.full((1, 3), IGNORE))
    assert zero.item() == 0.0 and zero.requires_grad


def test_patchify_layout_matches_hand_example() -> None:
    img = torch.arange(16.0).reshape(1, 1, 4, 4)
    p = patchify(img, 2)
    assert p.shape == (1, 4, 4)
    assert p[0, 0].tolist() == [0, 1, 4, 5] and p[0, 1].tolist() == [2, 3, 6, 7]
    assert p[0, 3].tolist() == [10, 11, 14, 15]
    with pytest.raises(ValueError, match="not divisible"):
        patchify(torch.zeros(1, 3, 10, 10), 4)


def test_random_patch_mask_counts_and_mae_loss_uses_masked_patches_only() -> None:
    mask = random_patch_mask(5, 16, 0.75, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert mask.sum(1).tolist() == [12] * 5
    img = torch.randn(5, 3, 8, 8)
    target = patchify(img, 2)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    pred = torch.where(mask[..., None], target, target + 5.0)  # right on masked, wrong on visible
    assert mae_loss(pred, img, mask, 2).item() < 1e-8
    pred = torch.where(mask[..., None], target + 1.0, target)
    assert mae_loss(pred, img, mask, 2).item() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="mask_ratio"):
        random_patch_mask(1, 4, 0.0, torch.device("cpu"))


def test_patchify_video_layout_matches_hand_example() -> None:
    clip = torch.arange(4 * 16.0).reshape(1, 4, 1, 4, 4)  # 4 frames of 4x4, one channel: frame f holds 16f..16f+15
    tubes = patchify_video(clip, 2, 2)  # 2 time steps x 4 patches, each 2 frames x 2 x 2
    assert tubes.shape == (1, 8, 8)
    assert tubes[0, 0].tolist() == [0, 1, 4, 5, 16, 17, 20, 21]  # frames 0-1, top-left patch
    assert tubes[0, 1].tolist() == [2, 3, 6, 7, 18, 19, 22, 23]  # frames 0-1, top-right patch
    assert tubes[0, 4].tolist() == [32, 33, 36, 37, 48, 49, 52, 53]  # frames 2-3, top-left patch
    with pytest.raises(ValueError, match="tubelet_size=2"):
        patchify_video(torch.zeros(1, 3, 1, 4, 4), 2, 2)


def test_tube_mask_masks_the_same_patches_in_every_time_step() -> None:
    mask = tube_mask(6, 3, 16, 0.75, torch.device("cpu"), torch.Generator().manual_seed(0)).view(6, 3, 16)
    assert torch.equal(mask, mask[:, :1].expand(6, 3, 16))  # a tube: one spatial mask repeated over time
    assert mask[:, 0].sum(1).tolist() == [12] * 6  # round(0.75 * 16) patches per clip
    assert len({tuple(m.tolist()) for m in mask[:, 0]}) > 1  # drawn per clip


def test_videomae_loss_is_normalised_pixel_mse_on_masked_tubes_only() -> None:
    g = torch.Generator().manual_seed(0)
    clip = torch.rand(2, 4, 3, 8, 8, generator=g)
    mask = tube_mask(2, 2, 4, 0.5, torch.device("cpu"), g)  # (2, 8)
    # the target by hand: each tube's 2*4*4 pixels per channel, minus their mean, over their unbiased std
    x = patchify_video(clip, 4, 2).reshape(2, 8, 32, 3)
    target = ((x - x.mean(2, keepdim=True)) / (x.var(2, keepdim=True).sqrt() + 1e-6)).reshape(2, 8, 96)
    pred = torch.where(mask[..., None], target, target + 5.0)  # right on masked tubes, wrong on visible ones
    assert videomae_loss(pred, clip, mask, 4, 2).item() < 1e-8
    pred = torch.where(mask[..., None], target + 2.0, target)
    assert videomae_loss(pred, clip, mask, 4, 2).item() == pytest.approx(4.0, abs=1e-5)
    affine = clip * torch.tensor([2.0, 0.5, 3.0]).view(1, 1, 3, 1, 1) - 1.0  # a per-channel normalisation
    assert videomae_loss(target, affine, mask, 4, 2).item() < 1e-8


def test_masked_video_blanks_tubes_of_the_input_and_skips_padded_frames() -> None:
    from mm_ptft.objectives.masked import MaskedVideoObjective

    seen = {}

    class Probe(nn.Module):
        out_dim = token_dim = 8

        def forward(self, batch):
            seen.update(batch)
            return EncoderOutput(torch.zeros(batch["video"].shape[0], 8), torch.zeros(batch["video"].shape[0], 2, 8))

    obj = MaskedVideoObjective(Probe(), image_size=8, max_frames=4, patch_size=4, tubelet_size=2, mask_ratio=0.5)
    clip = torch.rand(2, 4, 3, 8, 8) + 1.0  # never 0: a blanked pixel is exactly 0
    frames = torch.tensor([[True] * 4, [True, True, False, False]])
    torch.manual_seed(0)
    loss = obj(EncodedBatch({"video": Probe()}, {}), {"video": clip, "video_mask": frames})["mvm_loss"]
    blank = seen["video"] == 0  # (2, 4, 3, 8, 8)
    assert torch.equal(blank, blank[:, :1].expand_as(blank))  # the same pixels in every frame: tubes
    assert blank[:, 0].float().mean().item() == 0.5 and torch.equal(seen["video_mask"], frames)
    torch.manual_seed(0)
    mask, _ = obj.masks(clip)
    real = torch.tensor([[True] * 8, [True] * 4 + [False] * 4])  # the second clip's frames 2-3 are padding
    pred = obj.decoder(torch.zeros(2, 2, 8), None, 8)
    assert loss.item() == pytest.approx(videomae_loss(pred, clip, mask & real, 4, 2).item(), abs=1e-6)


def test_span_mask_stays_inside_real_frames_and_covers_about_ratio() -> None:
    lengths = torch.tensor([200, 120, 60])
    m = span_mask(lengths, 200, 0.4, 10, torch.Generator().manual_seed(0))
    assert not m[1, 120:].any() and not m[2, 60:].any()
    for i, n in enumerate(lengths.tolist()):
        frac = m[i, :n].float().mean().item()
        assert 0.1 < frac <= 0.45  # overlapping spans cover at most ratio, typically a bit less
    x = m[0].int()
    starts = ((x[1:] - x[:-1]) == 1).sum() + x[0]
    assert m[0].sum() >= 10 * 1 and starts <= math.ceil(0.4 * 200 / 10)  # contiguous spans, not scattered frames
    pred, tgt = torch.zeros(1, 4, 2), torch.tensor([[[1.0, 1], [2, 2], [3, 3], [4, 4]]])
    assert masked_frames_loss(pred, tgt, torch.tensor([[False, True, False, True]])).item() == pytest.approx(10.0)


class _OneHot(nn.Module):
    """A fixed 'image encoder': the colour id as a one-hot pooled vector."""

    modality, out_dim = "image", 4

    def forward(self, batch):
        return EncoderOutput(nn.functional.one_hot(batch["image"], 4).float())


class _BagText(nn.Module):
    """A minimal trainable 'text encoder' (token + position embeddings) carrying a real tokenizer."""

    modality, out_dim = "text", 16

    def __init__(self, tokenizer) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.tok, self.pos = nn.Embedding(len(tokenizer), 16), nn.Parameter(torch.randn(1, 8, 16))

    def forward(self, batch):
        x = self.tok(batch["text"]) + self.pos[:, : batch["text"].shape[1]]  # (B, L, 16)
        return EncoderOutput(x.mean(1), x, batch["text_mask"].bool())


def test_conditioning_on_another_modality_helps_predict_masked_words(encoders) -> None:
    """'a <colour>' with every word masked: 'a' is guessable from its position, the colour only from the image."""
    from mm_ptft.objectives.masked import ConditionedMLMObjective, MaskedLMObjective

    tok = encoders["text"].tokenizer
    colours = ["red", "blue", "green", "yellow"]
    ids = torch.tensor([tok(f"a {c}")["input_ids"] for c in colours])  # (4, L): [CLS] a colour [SEP]
    assert ids.shape[1] == 4 and len(set(ids[:, 2].tolist())) == 4, "each colour must be a single token"
    losses = {}
    for name in ("cond", "plain"):
        torch.manual_seed(0)
        encs = {"text": _BagText(tok), "image": _OneHot()}
        obj = (ConditionedMLMObjective(encs["text"], encs["image"], {"name": "gated", "out_dim": 16}, 1.0, 2)
               if name == "cond" else MaskedLMObjective(encs["text"], 1.0))
        opt = torch.optim.Adam([*obj.parameters(), *encs["text"].parameters()], lr=1e-2)
        for step in range(80):
            c = torch.randint(0, 4, (16,))
            batch = {"text": ids[c], "text_mask": torch.ones_like(ids[c]), "image": c}
            loss = sum(obj(EncodedBatch(encs, batch), batch).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
        obj.eval()
        with torch.no_grad():
            c = torch.arange(4).repeat(8)
            batch = {"text": ids[c], "text_mask": torch.ones_like(ids[c]), "image": c}
            losses[name] = sum(obj(EncodedBatch(encs, batch), batch).values()).item()
    # without the image the colour stays a 1-in-4 guess: mean loss over the 2 words >= log(4)/2 ~ 0.69
    assert losses["plain"] > 0.5 and losses["cond"] < 0.5 * losses["plain"], losses
