"""``mm-ptft cv``: stratified seeded folds that partition the training file, K normal runs, mean ± sd."""
from __future__ import annotations

import json
import statistics
from collections import Counter

import pytest

from mm_ptft.cli import main as cli_main
from mm_ptft.workflows.cv import stratified_folds
from mm_ptft.train.rundir import final_results

from mm_paths import TEXT_TINY


def test_folds_partition_and_stratify():
    labels = ["a"] * 10 + ["b"] * 7 + ["c"] * 4
    folds = stratified_folds(labels, 3, seed=0)
    assert sorted(r for f in folds for r in f) == list(range(21))
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    for y in "abc":
        per = [sum(labels[r] == y for r in f) for f in folds]
        assert max(per) - min(per) <= 1, (y, per)
    assert folds == stratified_folds(labels, 3, seed=0) and folds != stratified_folds(labels, 3, seed=1)


def test_cv_runs_k_folds_and_summarises(tmp_path, capsys):
    from mm_ptft.data.generated import generate

    files = generate({"name": "text_topics", "n_train": 45, "n_eval": 8, "seed": 2}, tmp_path / "data")
    out = tmp_path / "cv"
    assert cli_main(["cv", TEXT_TINY, "--folds", "3", "--out", str(out), f"data.train_file={files['train_file']}",
                     "train.max_steps=2", "train.report=false", "train.report_to=[]", "train.batch_size=8"]) == 0
    assert "accuracy:" in capsys.readouterr().out
    summary = json.loads((out / "cv_summary.json").read_text())
    finals = [final_results(out / f"fold_{i}") for i in range(3)]
    evals = [[json.loads(ln) for ln in (out / "splits" / f"fold_{i}_eval.jsonl").read_text().splitlines()]
             for i in range(3)]
    assert sum(map(len, evals)) == 45 and summary["fold_sizes"] == [15, 15, 15]
    import pandas as pd

    source = pd.read_csv(files["train_file"])
    assert Counter(r["text"] for e in evals for r in e) == Counter(source["text"])  # a partition of the file
    for y in set(source["label"]):  # stratified: each class's rows spread within one across folds
        per = [sum(r["label"] == y for r in e) for e in evals]
        assert max(per) - min(per) <= 1, (y, per)
    for name in ("accuracy", "macro_f1", "loss"):
        values = [f[name] for f in finals]
        assert summary["metrics"][name]["mean"] == pytest.approx(statistics.fmean(values))
        assert summary["metrics"][name]["sd"] == pytest.approx(statistics.stdev(values))
