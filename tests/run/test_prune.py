"""``mm-ptft prune``: a tiny text run pruned at 0.5 has half its Linear weights zero (counted here), the smallest
ones, in a new run directory that eval, predict and export accept; the source run is untouched. Fine-tuned after
pruning (``--finetune-steps``), the pruned weights stay zero at every step while the others train."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from mm_ptft.cli import main as cli_main
from mm_ptft.contracts import Callback
from mm_ptft.run.prune import prune_run
from mm_ptft.run import evaluate, load_config, load_run, pick_checkpoint, predict, train
from mm_ptft.train.rundir import final_results

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
    final = final_results(out)
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


class PrunedStayZero(Callback):
    """After every optimizer step: each pruned weight (mask 0) is still exactly zero."""

    def __init__(self) -> None:
        self.steps, self.violations = 0, 0

    def on_step_end(self, trainer) -> None:
        self.steps += 1
        for m in trainer.task.modules():
            if hasattr(m, "weight_mask"):
                self.violations += int((m.weight[m.weight_mask == 0] != 0).sum())


def test_finetune_after_pruning_keeps_pruned_weights_zero_and_moves_the_rest(text_run, tmp_path, capsys):
    before = linear_weights(text_run)
    watch = PrunedStayZero()
    summary = prune_run(text_run, 0.5, out=tmp_path / "tuned", finetune_steps=3, callbacks=[watch])
    assert watch.steps == 3 and watch.violations == 0
    after = linear_weights(tmp_path / "tuned")
    flat_b = torch.cat([before[n].flatten() for n in before])
    flat_a = torch.cat([after[n].flatten() for n in before])
    pruned = flat_b.abs() <= flat_b.abs().kthvalue(flat_b.numel() // 2).values  # the smallest half (global L1)
    assert bool((flat_a[pruned] == 0).all()) and summary["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert not torch.allclose(flat_a[~pruned], flat_b[~pruned])  # the kept weights were trained
    # the saved checkpoint is plain (masks folded in) and the fine-tuning log is kept beside it
    weights = load_file(str(pick_checkpoint(tmp_path / "tuned") / "model.safetensors"))
    assert not any(k.endswith(("_orig", "_mask")) for k in weights)
    assert not (tmp_path / "tuned" / "finetune" / "checkpoints").exists()
    rows = [json.loads(r) for r in (tmp_path / "tuned" / "finetune" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r.get("kind") == "train" for r in rows) >= 1
    final = final_results(tmp_path / "tuned")
    assert final == summary["metrics_after_finetune"] and summary["finetune_steps"] == 3
    assert evaluate(tmp_path / "tuned")["accuracy"] == pytest.approx(final["accuracy"])
    assert cli_main(["prune", str(text_run), "--amount", "0.3", "--structured", "--finetune-steps", "1",
                     "--out", str(tmp_path / "rows")]) == 0
    assert json.loads(capsys.readouterr().out)["metrics_after_finetune"] is not None
