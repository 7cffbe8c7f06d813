"""The text regression recipe (added as new files only): its metrics match a numpy hand computation, and
its tiny.yaml trains through train.py to R² >= 0.5 on the held-out split — its MSE at most half the
mean predictor's (R² = 0) — with eval, predict and ONNX export working through the shared paths."""
from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch

from mm_ptft.metrics.regression import RegressionMetrics
from mm_ptft.run import load_run, predict
from mm_ptft.run.export import sidecar

from mm_paths import ROOT

RECIPE = Path(ROOT) / "recipes" / "text_regression"


def test_metrics_match_numpy():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(50, generator=g) * 3 + 1  # (N,)
    pred = y + torch.randn(50, generator=g)  # (N,)
    m = RegressionMetrics()
    for i in range(0, 50, 16):  # several batches, as in evaluation
        m.update({"predictions": pred[i:i + 16]}, {"labels": y[i:i + 16]})
    got = m.compute()
    yn, pn = y.double().numpy(), pred.double().numpy()
    mse = np.mean((pn - yn) ** 2)
    assert got["mse"] == pytest.approx(mse, rel=1e-5)
    assert got["mae"] == pytest.approx(np.mean(np.abs(pn - yn)), rel=1e-5)
    assert got["r2"] == pytest.approx(1 - mse / np.var(yn), rel=1e-5)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("text_regression")
    main = runpy.run_path(str(RECIPE / "train.py"))["main"]
    results = main([str(RECIPE / "tiny.yaml"), f"output_dir={out}", "train.report=false",
                    "data.generate.n_train=400", "train.epochs=5"])
    return out, results


def test_tiny_recipe_beats_the_mean_predictor(run):
    out, results = run
    assert results["r2"] >= 0.5, results
    cfg, prepared, _ = load_run(out)
    batch = prepared.collate([prepared.eval_data[i] for i in range(len(prepared.eval_data))])
    with torch.no_grad():
        pred = prepared.task(batch)["predictions"].double().numpy()  # (N,)
    y = batch["labels"].double().numpy()  # (N,)
    mse, baseline = np.mean((pred - y) ** 2), np.mean((cfg.data.target_mean - y) ** 2)  # train mean as predictor
    assert results["mse"] == pytest.approx(mse, rel=1e-4)  # the reported metric, recomputed by hand
    assert mse <= 0.5 * baseline


def test_predict_and_export_need_no_edit_elsewhere(run, tmp_path):
    out, _ = run
    rows = predict(out, ["A freezing icy day.", "A hot sweltering day."])
    assert rows[0]["prediction"] < rows[1]["prediction"]
    from mm_ptft.run.export import export_run

    path = export_run(out, "onnx", tmp_path / "reg.onnx")
    meta = json.loads(sidecar(path).read_text())
    assert meta["outputs"] == ["predictions"] and meta["task"] == "text_regression"
    assert meta["check"]["max_abs_diff"] < 1e-4
