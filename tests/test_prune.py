"""``mm-ptft prune``: a tiny text run pruned at 0.5 has half its Linear weights zero (counted here), the smallest
ones, in a new run directory that eval, predict and export accept; the source run is untouched."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from mm_ptft.cli import main as cli_main
from mm_ptft.run import evaluate, load_config, load_run, pick_checkpoint, predict, train

from mm_paths import TEXT_TINY


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prune") / "run"
    train(load_config(TEXT_TINY, [f"output_dir={out}", "data.generate.n_train=96", "data.generate.n_eval=32",
                                  "train.max_steps=3", "train.report=false", "train.report_to=[]"]))
    return out


def linear_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    _, prepared, _ = load_run(run_dir, with_data=False)
    return {n: m.weight.detach().clone() for n, m in prepared.task.named_modules() if isinstance(m, nn.Linear)}


def test_prune_half_gives_half_zeros_of_the_smallest_weights(text_run, tmp_path, capsys):
    src_weights = load_file(str(pick_checkpoint(text_run) / "model.safetensors"))
    out = tmp_path / "pruned"
    assert cli_main(["prune", str(text_run), "--amount", "0.5", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    before, after = linear_weights(text_run), linear_weights(out)
    zeros = sum(int((w == 0).sum()) for w in after.values())
    total = sum(w.numel() for w in after.values())
    assert zeros / total == pytest.approx(0.5, abs=0.01)
    assert summary["sparsity"] == pytest.approx(zeros / total, abs=1e-6)
    # global L1: every weight set to zero was no larger than every weight kept
    flat_b = torch.cat([before[n].flatten() for n in before]).abs()
    flat_a = torch.cat([after[n].flatten() for n in before])
    assert flat_b[flat_a == 0].max() <= flat_b[flat_a != 0].min()
    assert torch.equal(flat_a[flat_a != 0], torch.cat([before[n].flatten() for n in before])[flat_a != 0])
    # the source run is untouched; the copy is a run eval/predict/export accept
    assert all(torch.equal(v, load_file(str(pick_checkpoint(text_run) / "model.safetensors"))[k])
               for k, v in src_weights.items())
    final = json.loads((out / "final_metrics.json").read_text())
    assert final == summary["metrics_after"] and "accuracy" in summary["metrics_before"]
    assert evaluate(out)["accuracy"] == pytest.approx(final["accuracy"])
    rows = predict(out, ["the rocket reached orbit", "a goal in the final minute"])
    assert len(rows) == 2 and all("label" in r for r in rows)
    assert cli_main(["export", str(out), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 0


def test_structured_prunes_whole_rows_and_refuses_an_existing_out(text_run, tmp_path, capsys):
    out = tmp_path / "rows"
    assert cli_main(["prune", str(text_run), "--amount", "0.25", "--structured", "--out", str(out)]) == 0
    for name, w in linear_weights(out).items():
        dead = (w == 0).all(dim=1)
        assert int(dead.sum()) == round(0.25 * w.shape[0]), name  # torch rounds amount * rows
    assert cli_main(["prune", str(text_run), "--amount", "0.5", "--out", str(out)]) == 2  # holds a run
    assert "already holds a run" in capsys.readouterr().err
