"""Forward + backward of every registered objective, generated from the registry."""
from __future__ import annotations

import pytest
import torch

from mm_ptft.run.components import load_components
from mm_ptft.objectives import OBJECTIVES, EncodedBatch

load_components()

SPECS = {
    "clip": {"name": "clip", "embed_dim": 16},
    "siglip": {"name": "siglip", "embed_dim": 16, "anchor": "text"},
    "mlm": {"name": "mlm"},
    "clm": {"name": "clm"},
    "nsp": {"name": "nsp"},
    "sop": {"name": "sop"},
    "conditioned_mlm": {"name": "conditioned_mlm", "modality": "audio",
                        "fusion": {"name": "bottleneck", "out_dim": 32, "heads": 2}},
    "mae": {"name": "mae", "patch_size": 8, "decoder_dim": 16},
    "masked_spectrogram": {"name": "masked_spectrogram", "n_mels": 16, "decoder_dim": 16, "span": 3},
    "captioning": {"name": "captioning", "decoder": {"name": "tiny", "dim": 16, "depth": 1, "heads": 2}},
    "itm": {"name": "itm", "fusion": {"name": "cross_attention", "out_dim": 16, "heads": 2}},
    "masked_video": {"name": "masked_video", "patch_size": 8, "tubelet_size": 2, "max_frames": 4, "decoder_dim": 16},
}
VIDEO_READERS = {"masked_video"}  # objectives that read a video encoder: the shared fixtures get one


def _with_video(name: str, encoders: dict, batch: dict) -> tuple[dict, dict]:
    if name not in VIDEO_READERS:
        return encoders, batch
    from mm_ptft.encoders.base import build_encoder
    from mm_ptft.encoders.video import VIDEO_ENCODERS

    video = build_encoder(VIDEO_ENCODERS, {"name": "tiny_3d", "widths": [8, 16], "img_size": 32}, "model.video")
    clips = torch.randn(len(batch["image"]), 4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(clips.shape[:2], dtype=torch.bool)
    mask[0, 2:] = False  # one clip of 2 real frames
    return {**encoders, "video": video}, {**batch, "video": clips, "video_mask": mask}


def test_every_objective_has_a_spec() -> None:
    assert set(SPECS) == set(OBJECTIVES.names())


@pytest.mark.parametrize("name", sorted(SPECS))
def test_forward_backward(name: str, encoders, batch) -> None:
    torch.manual_seed(0)
    encoders, batch = _with_video(name, encoders, batch)
    obj = OBJECTIVES.build(SPECS[name], f"model.objectives.{name}", encoders=encoders)
    if hasattr(obj, "bind"):  # reads another objective (ITM: the contrastive similarities)
        obj.bind({"clip": OBJECTIVES.build(SPECS["clip"], "model.objectives.clip", encoders=encoders), name: obj})
    assert obj.applies_to(batch)
    out = obj(EncodedBatch(encoders, batch), batch)
    assert out and all(k.endswith("_loss") for k in out)
    loss = sum(out.values())
    assert torch.isfinite(loss) and loss.item() > 0
    for enc in encoders.values():
        enc.zero_grad()
    loss.backward()
    trained = [m for m in sorted(obj.modalities) if any(p.grad is not None and p.grad.abs().sum() > 0
                                                      for p in encoders[m].parameters())]
    assert trained == sorted(obj.modalities), "every encoder the objective uses must receive gradient"
    assert any(p.grad is not None for p in obj.parameters())


def test_eval_masks_are_deterministic(encoders, batch) -> None:
    obj = OBJECTIVES.build(SPECS["mae"], "o", encoders=encoders).eval()
    for e in encoders.values():
        e.eval()
    with torch.no_grad():
        first = obj(EncodedBatch(encoders, batch), batch)["mae_loss"]
        obj.train().eval()  # a new evaluation restarts the same mask sequence
        again = obj(EncodedBatch(encoders, batch), batch)["mae_loss"]
    assert first.item() == again.item()
    for e in encoders.values():
        e.train()


def test_missing_encoder_is_a_clear_error(encoders) -> None:
    with pytest.raises(KeyError, match="model.audio"):
        OBJECTIVES.build({"name": "masked_spectrogram"}, "o", encoders={"text": encoders["text"]})
