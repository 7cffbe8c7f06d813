"""masked_video with ``decoder: hf`` against ``transformers.VideoMAEForPreTraining`` itself: on the same clips and
the same boolean tube mask the suite's loss equals transformers' (≤ 1e-5), step after step of training both with
the same optimiser; padded frames' tubes are left out; the decoder loads from a VideoMAEForPreTraining save."""
import pytest
import torch

from mm_ptft.encoders import build_encoder
from mm_ptft.encoders.video import VIDEO_ENCODERS
from mm_ptft.objectives import OBJECTIVES, EncodedBatch
from mm_ptft.objectives.masked import tube_mask

TINY = {"model_type": "videomae", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "image_size": 32, "patch_size": 8, "num_frames": 4, "tubelet_size": 2,
        "decoder_hidden_size": 24, "decoder_num_hidden_layers": 1, "decoder_num_attention_heads": 2,
        "decoder_intermediate_size": 48, "norm_pix_loss": True}


def build(norm_pix: bool = True, **spec):
    from transformers import VideoMAEConfig, VideoMAEForPreTraining

    torch.manual_seed(0)
    conf = {**TINY, "norm_pix_loss": norm_pix}
    enc = build_encoder(VIDEO_ENCODERS, spec or {"name": "hf", "config": conf}, "model.video")
    obj = OBJECTIVES.build({"name": "masked_video", "decoder": "hf", "mask_ratio": 0.75}, encoders={"video": enc})
    ref = VideoMAEForPreTraining(VideoMAEConfig(**{k: v for k, v in conf.items() if k != "model_type"}))
    ref.videomae.load_state_dict(enc.model.state_dict())
    missing, unexpected = ref.load_state_dict(obj.head.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("videomae.") for k in missing)
    return enc, obj, ref


def clips(step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(step)
    return torch.randn(3, 4, 3, 32, 32, generator=g)  # (B, T, C, H, W), normalised pixels


@pytest.mark.parametrize("norm_pix", [True, False])
def test_loss_equals_videomae_for_pretraining_while_both_train(norm_pix):
    enc, obj, ref = build(norm_pix)
    ours = torch.optim.AdamW([*enc.parameters(), *obj.parameters()], lr=1e-3)
    theirs = torch.optim.AdamW(ref.parameters(), lr=1e-3)
    enc.train(), obj.train(), ref.train()
    for step in range(4):
        video = clips(step)
        torch.manual_seed(100 + step)  # the objective draws its mask from the global RNG in training
        loss = obj(EncodedBatch({"video": enc}, {"video": video}), {"video": video})["mvm_loss"]
        torch.manual_seed(100 + step)  # the same draw, handed to transformers as bool_masked_pos
        mask = tube_mask(3, 2, 16, 0.75, video.device)  # (B, 2 * 16): 12 of 16 patches, every time step
        expected = ref(pixel_values=video, bool_masked_pos=mask).loss
        assert mask.sum(1).tolist() == [24, 24, 24]
        assert abs(loss.item() - expected.item()) <= 1e-5, (step, loss.item(), expected.item())
        for opt, value in ((ours, loss), (theirs, expected)):
            opt.zero_grad()
            value.backward()
            opt.step()
    assert abs(loss.item() - clips_loss_at_init(norm_pix)) > 1e-4  # training moved the loss: not a frozen compare


def clips_loss_at_init(norm_pix: bool) -> float:
    _, _, ref = build(norm_pix)
    torch.manual_seed(103)
    return ref(pixel_values=clips(3), bool_masked_pos=tube_mask(3, 2, 16, 0.75, "cpu")).loss.item()


def test_padded_frames_tubes_are_left_out():
    enc, obj, ref = build()
    enc.eval(), ref.eval()
    video, mask = clips(0), tube_mask(3, 2, 16, 0.75, "cpu")  # 12 masked tubes per time step, step 0's first
    frames = torch.tensor([[True] * 4, [True] * 4, [True, True, False, False]])  # clip 2: time step 1 is padding
    with torch.no_grad():
        got = obj.loss(enc, video, frames, mask)
        per_tube = ((ref(pixel_values=video, bool_masked_pos=mask).logits - _labels(video, mask)) ** 2).mean(-1)
    assert per_tube.shape == (3, 24)
    expected = (per_tube[:2].sum() + per_tube[2, :12].sum()) / 60  # every tube of clips 0-1, 12 of clip 2
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)
    assert abs(got.item() - per_tube.mean().item()) > 1e-4  # and that differs from counting the padded tubes


def _labels(video, mask):
    """The masked tubes' targets as VideoMAEForPreTraining computes them (written out here, not the suite's code):
    ImageNet normalisation undone, tubes of 2 frames x 8 x 8 each normalised per channel, masked tubes in order."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 1, 3, 1, 1)
    x = (video * std + mean).view(3, 2, 2, 3, 4, 8, 4, 8).permute(0, 1, 4, 6, 2, 5, 7, 3).reshape(3, 32, 128, 3)
    x = (x - x.mean(-2, keepdim=True)) / (x.var(-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
    return x.reshape(3, 32, 384)[mask].reshape(3, -1, 384)


def test_decoder_loads_from_a_videomae_for_pretraining_save(tmp_path):
    _, _, ref = build()
    ref.save_pretrained(tmp_path / "mae")
    enc = build_encoder(VIDEO_ENCODERS, {"name": "hf", "name_or_path": str(tmp_path / "mae")}, "model.video")
    obj = OBJECTIVES.build({"name": "masked_video", "decoder": "hf", "init_from_pretrained_head": True},
                           encoders={"video": enc})
    video, mask = clips(1), tube_mask(3, 2, 16, 0.75, "cpu")
    enc.eval(), ref.eval()
    with torch.no_grad():
        assert abs(obj.loss(enc, video, torch.ones(3, 4, dtype=torch.bool), mask).item()
                   - ref(pixel_values=video, bool_masked_pos=mask).loss.item()) <= 1e-5


def test_hf_decoder_needs_a_videomae_encoder():
    enc = build_encoder(VIDEO_ENCODERS, {"name": "tiny_3d", "widths": [8], "img_size": 32}, "model.video")
    with pytest.raises(ValueError, match="decoder=hf.*VideoMAE"):
        OBJECTIVES.build({"name": "masked_video", "decoder": "hf"}, encoders={"video": enc})
    with pytest.raises(ValueError, match="decoder='bad'"):
        OBJECTIVES.build({"name": "masked_video", "decoder": "bad"}, encoders={"video": enc})


def test_init_from_pretrained_head_needs_a_pretraining_save(tmp_path):
    enc, _, _ = build()
    enc.model.save_pretrained(tmp_path / "bare")  # a VideoMAEModel: no decoder in it
    bare = build_encoder(VIDEO_ENCODERS, {"name": "hf", "name_or_path": str(tmp_path / "bare")}, "model.video")
    with pytest.raises(ValueError, match="init_from_pretrained_head.*no VideoMAEForPreTraining decoder"):
        OBJECTIVES.build({"name": "masked_video", "decoder": "hf", "init_from_pretrained_head": True},
                         encoders={"video": bare})
