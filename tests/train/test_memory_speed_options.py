"""Memory/speed options on the tiny text recipe (a few steps each): gradient checkpointing and
torch.compile must not change the maths; CPU bf16 autocast runs in bf16 and stays close to fp32."""
import json

import pytest
import torch
from safetensors.torch import load_file

from mm_ptft.run import build_trainer, load_config, train
from mm_ptft.tasks import get_recipe

from mm_paths import TEXT_TINY

STEPS = 2
NO_DROPOUT = ["model.dropout=0.0", "model.text.config.hidden_dropout_prob=0.0",
              "model.text.config.attention_probs_dropout_prob=0.0"]


def cfg_for(data, out, *extra):
    return load_config(TEXT_TINY, [f"output_dir={out}", f"data.train_file={data['train_file']}",
                                   f"data.eval_file={data['eval_file']}", "train.batch_size=16",
                                   f"train.max_steps={STEPS}", "train.log_every=1", "train.report=false",
                                   "train.device=cpu", *NO_DROPOUT, *extra])


def run(data, out, *extra, check=None):
    """Train; ``check(trainer)`` runs on the built trainer first. Returns (train losses, final weights)."""
    cfg = cfg_for(data, out, *extra)
    if check is None:
        train(cfg)
    else:
        prepared = get_recipe(cfg.task).prepare(cfg)
        trainer = build_trainer(prepared, cfg)  # the run path: fine-tuning and checkpointing applied once
        check(trainer)
        trainer.fit()
    recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    last = sorted((out / "checkpoints").glob("step_*"))[-1]
    return [r["loss"] for r in recs if r["kind"] == "train"], load_file(str(last / "model.safetensors"))


@pytest.fixture(scope="module")
def baseline(topics_data, tmp_path_factory):
    return run(topics_data, tmp_path_factory.mktemp("fp32"))


def test_grad_checkpointing_is_on_and_changes_nothing(topics_data, baseline, tmp_path):
    def check(trainer):
        assert trainer.task.encoder.model.is_gradient_checkpointing  # the HF model recomputes its layers

    losses, weights = run(topics_data, tmp_path / "ckpt", "train.grad_checkpointing=true", check=check)
    assert losses == pytest.approx(baseline[0], rel=1e-5)
    for k, v in baseline[1].items():
        torch.testing.assert_close(weights[k], v, atol=1e-6, rtol=1e-5, msg=k)


def test_bf16_autocast_on_cpu_runs_in_bf16_and_tracks_fp32(topics_data, baseline, tmp_path):
    def check(trainer):
        with trainer._autocast():
            assert (torch.ones(4, 4) @ torch.ones(4, 4)).dtype == torch.bfloat16  # matmuls really run in bf16

    losses, weights = run(topics_data, tmp_path / "bf16", "train.precision=bf16", check=check)
    assert losses != baseline[0]  # bf16 rounding shows...
    assert losses == pytest.approx(baseline[0], rel=2e-2)  # ...but the first steps stay close (bf16: ~3 digits)
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_compile_is_applied_and_changes_nothing(topics_data, baseline, tmp_path, monkeypatch):
    """Dynamo captures the model (backend ``eager`` keeps this fast; the inductor run is the slow test)."""
    real_compile, compiled = torch.compile, []

    def eager_compile(model, **kw):
        compiled.append(model)
        return real_compile(model, backend="eager", **kw)

    monkeypatch.setattr(torch, "compile", eager_compile)
    # every batch padded to 64 tokens: one graph, no shape-driven recompiles (padding is masked: same maths)
    losses, weights = run(topics_data, tmp_path / "compiled", "train.compile=true", "data.pad_to_multiple_of=64")
    assert len(compiled) == 1
    assert losses == pytest.approx(baseline[0], rel=1e-5)
    assert weights.keys() == baseline[1].keys()  # checkpoints hold the plain module's names, no "_orig_mod."
    for k, v in baseline[1].items():
        torch.testing.assert_close(weights[k], v, atol=1e-6, rtol=1e-5, msg=k)


@pytest.mark.slow
def test_compile_with_inductor_trains_like_eager(topics_data, baseline, tmp_path):
    losses, weights = run(topics_data, tmp_path / "inductor", "train.compile=true")
    assert losses == pytest.approx(baseline[0], rel=1e-4)
    for k, v in baseline[1].items():
        torch.testing.assert_close(weights[k], v, atol=1e-4, rtol=1e-3, msg=k)
