"""Every registered fusion: shapes, gradients, sorted-key order, missing-modality handling."""
from __future__ import annotations

import pytest
import torch

from mm_ptft.encoders.fusion import FUSIONS, build_fusion

from mm_fixtures import one_thread  # noqa: F401  (autouse: one intra-op thread for this module)

DIMS = {"text": 12, "image": 10, "audio": 8}
SPECS = {
    "concat": {"name": "concat", "out_dim": 16, "hidden": 24},
    "gated": {"name": "gated", "out_dim": 16},
    "cross_attention": {"name": "cross_attention", "out_dim": 16, "heads": 2},
    "bottleneck": {"name": "bottleneck", "out_dim": 16, "heads": 2, "num_latents": 3},
}
SKIPS_MISSING = {"gated", "cross_attention", "bottleneck"}


def _inputs(b: int = 3) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(0)
    emb = {"text": torch.randn(b, 5, 12, generator=g), "image": torch.randn(b, 10, generator=g),
           "audio": torch.randn(b, 7, 8, generator=g)}
    masks = {"text": torch.tensor([[1, 1, 1, 0, 0]] * b).bool(), "audio": torch.ones(b, 7).bool()}
    return emb, masks


def test_every_fusion_has_a_spec() -> None:
    assert set(SPECS) == set(FUSIONS.names())


@pytest.mark.parametrize("name", sorted(SPECS))
def test_forward_backward_and_key_order(name: str) -> None:
    torch.manual_seed(0)
    fusion = build_fusion(SPECS[name], DIMS).eval()
    emb, masks = _inputs()
    for v in emb.values():
        v.requires_grad_()
    out = fusion(emb, masks)
    assert out.shape == (3, 16)
    # A loss with random weights: ``out.sum()`` through a final LayerNorm has zero gradient in theory and
    # would pass only on rounding noise. Every input and parameter must get a gradient of real size.
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * weights).sum().backward()
    for key, v in emb.items():
        assert v.grad is not None and v.grad.abs().max() > 1e-3, key
    for pname, param in fusion.named_parameters():
        assert param.grad is not None and param.grad.abs().max() > 1e-4, pname
    reordered = {k: emb[k] for k in ["image", "audio", "text"]}
    torch.testing.assert_close(fusion(reordered, masks), out)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_missing_modality(name: str) -> None:
    fusion = build_fusion(SPECS[name], DIMS).eval()
    emb, masks = _inputs()
    emb["audio"] = None
    if name in SKIPS_MISSING:
        out = fusion(emb, masks)
        del emb["audio"]
        torch.testing.assert_close(fusion(emb, masks), out)  # None and absent mean the same
        assert out.shape == (3, 16) and torch.isfinite(out).all()
    else:
        with pytest.raises(ValueError, match=r"missing \['audio'\]"):
            fusion(emb, masks)


@pytest.mark.parametrize("name", sorted(SKIPS_MISSING))
def test_padding_tokens_do_not_change_the_result(name: str) -> None:
    fusion = build_fusion(SPECS[name], DIMS).eval()
    emb, masks = _inputs()
    out = fusion(emb, masks)
    emb["text"] = emb["text"].clone()
    emb["text"][:, 3:] = 1e3  # masked-out positions
    torch.testing.assert_close(fusion(emb, masks), out)


def test_unknown_modality_and_bad_key_are_clear_errors() -> None:
    fusion = build_fusion(SPECS["gated"], {"text": 12})
    with pytest.raises(KeyError, match="unknown modality"):
        fusion({"text": torch.randn(2, 12), "video": torch.randn(2, 4)})
    with pytest.raises(KeyError, match="model.fusion.depth"):
        build_fusion({"name": "gated", "depth": 2}, DIMS)
