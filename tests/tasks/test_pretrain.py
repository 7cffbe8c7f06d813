"""PretrainTask routing of mixed batches, weighted totals, eval outputs, and encoder handoff."""
from __future__ import annotations

import pytest
import torch

from mm_ptft.run.components import load_components
from mm_ptft.heads.pretraining import PretrainTask
from mm_ptft.objectives import OBJECTIVES

from mm_fixtures import one_thread, tiny_encoders  # noqa: F401  (one_thread: autouse)

load_components()
CAPTIONS = ["a small red circle", "a large blue square", "the triangle is green and small", "a yellow cross"] * 2


@pytest.fixture(scope="module")
def encoders() -> dict:
    return tiny_encoders(16, 16, CAPTIONS, vocab_size=80)


def _batch(encoders, keys, n=4) -> dict:
    from mm_ptft.data.multimodal import MultimodalCollator

    tok = encoders["text"].tokenizer
    items = []
    for i in range(n):
        it = {"text": tok(CAPTIONS[i])["input_ids"], "image": torch.randn(3, 16, 16), "audio": torch.randn(1200),
              "labels": i % 2}
        items.append({k: v for k, v in it.items() if k in keys})
    return MultimodalCollator(tok.pad_token_id)(items)


def _task(encoders, prompts=None, num_classes=0) -> PretrainTask:
    objectives = {"clip": OBJECTIVES.build({"name": "clip", "pairs": [["image", "text"], ["audio", "text"]],
                                            "embed_dim": 8}, "o", encoders=encoders),
                  "mlm": OBJECTIVES.build({"name": "mlm"}, "o", encoders=encoders)}
    return PretrainTask(encoders, objectives, {"clip": 1.0, "mlm": 0.5}, ["audio_text", "image_text", "text"], prompts,
                        num_classes)


def test_mixed_batch_routes_each_source_to_its_objectives(encoders) -> None:
    torch.manual_seed(0)
    task = _task(encoders)
    batch = {"image_text": _batch(encoders, {"text", "image"}), "text": _batch(encoders, {"text"}, 3)}
    out = task(batch)
    assert set(out) == {"clip_image_text_loss", "mlm_loss", "loss"}  # no audio source in this batch
    expected = out["clip_image_text_loss"].item() + 0.5 * out["mlm_loss"].item()
    assert out["loss"].item() == pytest.approx(expected, rel=1e-6)
    out["loss"].backward()
    assert any(p.grad is not None for p in encoders["image"].parameters())
    assert all(p.grad is None for p in encoders["audio"].parameters())  # nothing was routed to audio
    audio_only = task({"audio_text": _batch(encoders, {"text", "audio"})})
    assert set(audio_only) == {"clip_audio_text_loss", "mlm_loss", "loss"}
    with pytest.raises(ValueError, match="no objective applies"):
        _task(encoders)({"image": _batch(encoders, {"image"})})


def test_eval_outputs_embeddings_and_zeroshot(encoders) -> None:
    tok = encoders["text"].tokenizer
    enc = tok(["a circle", "a red circle", "a square", "a red square"], padding=True, return_tensors="pt")
    task = _task(encoders, (enc["input_ids"], enc["attention_mask"]), num_classes=2).eval()
    with torch.no_grad():
        out = task(_batch(encoders, {"text", "image", "audio", "labels"}))
    assert set(out["embeddings"]) == {"audio", "image", "text"}
    assert out["zeroshot_logits"]["image"].shape == (4, 2) and "text" not in out["zeroshot_logits"]
    metrics = task.build_metrics()
    metrics.update(out, _batch(encoders, {"labels"}))
    r = metrics.compute()
    assert {"image_to_text_r1", "text_to_audio_r10", "mean_r1", "zeroshot_accuracy", "mlm_loss"} <= set(r)
    assert task.main_metric == "mean_r1" and task.greater_is_better
    task.train()


def test_saved_encoders_reload_by_path_with_identical_outputs(encoders, tmp_path) -> None:
    """The handoff: a pretraining run's encoders/<modality>/ rebuilds the same encoder in any recipe."""
    from mm_ptft.encoders import TEXT_ENCODERS, build_encoder
    from mm_ptft.encoders.audio import AUDIO_ENCODERS
    from mm_ptft.encoders.image import IMAGE_ENCODERS
    from mm_ptft.train.finetune import save_encoders

    save_encoders(_task(encoders), tmp_path / "encoders")
    batch = _batch(encoders, {"text", "image", "audio"})
    registries = {"text": TEXT_ENCODERS, "image": IMAGE_ENCODERS, "audio": AUDIO_ENCODERS}
    for m, reg in registries.items():
        loaded = build_encoder(reg, {"name_or_path": str(tmp_path / "encoders" / m)}, f"model.{m}").eval()
        with torch.no_grad():
            torch.testing.assert_close(loaded(batch).pooled, encoders[m].eval()(batch).pooled)
        encoders[m].train()


def test_config_errors_name_the_key(tmp_path) -> None:
    from mm_ptft.config import ConfigError
    from mm_ptft.tasks.pretrain_common import EncoderSpecs, build_encoders

    with pytest.raises(ConfigError, match=r"model.audio is not set"):
        build_encoders(EncoderSpecs(text={"name": "tiny"}), ["audio"], str(tmp_path), None)
    with pytest.raises(KeyError, match=r"model.objectives.clip: unknown key\(s\) model.objectives.clip.temperature"):
        from mm_ptft.tasks.pretrain_common import build_objectives

        build_objectives({"clip": {"name": "clip", "temperature": 0.07}}, {})


def test_text_objectives_combine_and_their_totals_stay_out_of_the_loss(encoders) -> None:
    """mlm + clm + sop on one encoder: eval sums the non-loss parts over sub-batches into out['totals']
    (token counts add up), while loss is the weighted sum of the *_loss parts only."""
    text = {"text": encoders["text"]}
    objectives = {k: OBJECTIVES.build({"name": k}, f"model.objectives.{k}", encoders=text) for k in ("mlm", "clm", "sop")}
    task = PretrainTask(text, objectives, {"mlm": 1.0, "clm": 0.5, "sop": 2.0}, ["a", "b"]).eval()
    a, b = _batch(encoders, {"text"}, 4), _batch(encoders, {"text"}, 2)
    with torch.no_grad():
        out = task({"a": a, "b": b})
    assert {"mlm_loss", "clm_loss", "sop_loss", "loss", "totals"} == set(out)
    assert out["loss"].item() == pytest.approx(
        out["mlm_loss"].item() + 0.5 * out["clm_loss"].item() + 2.0 * out["sop_loss"].item(), rel=1e-6)
    tokens = sum(int(x["text_mask"][:, 1:].sum()) for x in (a, b))  # every real token after the first is predicted
    assert out["totals"]["clm_tokens"].item() == tokens and out["totals"]["sop_rows_skipped"].item() == 0
    encoders["text"].train()
