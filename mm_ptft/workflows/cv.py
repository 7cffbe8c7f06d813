"""``mm-ptft cv CONFIG --folds K``: stratified K-fold cross-validation of a classification recipe.

The training file is split into K seeded, stratified folds; fold i trains a normal run in ``OUT/fold_i`` on the
other K-1 folds and evaluates on fold i (its ``data.eval_file``); ``OUT/cv_summary.json`` holds every final metric
per fold with its mean and sample standard deviation."""
from __future__ import annotations

import json
import random
import statistics
from pathlib import Path
from typing import Any, Optional, Sequence

from mm_ptft.config import ConfigError
from mm_ptft.data.folders import read_table
from mm_ptft.data.tables import ROW, LabelMap, rows_by_label
from mm_ptft.run import load_config, train
from mm_ptft.tasks.common import folder_spec


def stratified_folds(labels: Sequence[Any], k: int, seed: int) -> list[list[int]]:
    """Row indices of ``k`` folds: each label's rows shuffled (seeded) and dealt round-robin, continuing where
    the previous label stopped, so fold sizes and per-class counts differ by at most one."""
    by_label = rows_by_label(labels)
    rng, folds, turn = random.Random(seed), [[] for _ in range(k)], 0
    for key in sorted(by_label):
        rows = by_label[key]
        rng.shuffle(rows)
        for r in rows:
            folds[turn % k].append(r)
            turn += 1
    return [sorted(f) for f in folds]


def run_cv(config: str, folds: int, overrides: Sequence[str] = (), out: Optional[str] = None) -> dict[str, Any]:
    """Train ``folds`` runs (one per held-out fold) and write/return the summary."""
    cfg = load_config(config, list(overrides))
    data = getattr(cfg, "data", None)
    if folds < 2:
        raise ConfigError(f"--folds={folds}: cross-validation needs at least 2 folds")
    if data is None or not hasattr(data, "label_column") or not hasattr(data, "labels"):
        raise ConfigError(f"task {cfg.task!r}: cv needs a classification recipe (data.label_column, data.labels)")
    if not data.train_file:
        raise ConfigError("cv splits data.train_file: set it (generated data: generate the files first)")
    table = read_table(data.train_file, "data.train_file", folder_spec(data))  # a folder: as the recipe reads it
    frame = table.remove_columns([ROW]).to_pandas()
    if data.label_column not in frame.columns:
        raise ConfigError(f"data.label_column={data.label_column!r} is not a column of {data.train_file}")
    labels = list(data.labels) or [str(x) for x in LabelMap.from_values(frame[data.label_column], data.train_file).names]
    counts = frame[data.label_column].map(LabelMap._key).value_counts()
    if int(counts.min()) < folds:
        raise ConfigError(f"--folds={folds}: class {counts.idxmin()!r} has only {int(counts.min())} rows")
    root = Path(out or f"{cfg.output_dir}_cv")
    splits = root / "splits"
    splits.mkdir(parents=True, exist_ok=True)
    parts = stratified_folds(list(frame[data.label_column]), folds, cfg.seed)
    results: list[dict[str, float]] = []
    for i, held in enumerate(parts):
        held_set = set(held)
        tr, ev = splits / f"fold_{i}_train.jsonl", splits / f"fold_{i}_eval.jsonl"
        frame.iloc[[r for r in range(len(frame)) if r not in held_set]].to_json(tr, orient="records", lines=True,
                                                                                 force_ascii=False)
        frame.iloc[held].to_json(ev, orient="records", lines=True, force_ascii=False)
        fold = [*overrides, f"output_dir={root / f'fold_{i}'}", f"data.train_file={tr}", f"data.eval_file={ev}",
                f"data.labels={json.dumps(labels)}"]
        if hasattr(data, "generate"):
            fold.append("data.generate=null")
        results.append(train(load_config(config, fold)))
    names = sorted(set.intersection(*(set(r) for r in results)))
    summary = {"directory": str(root), "config": str(config), "overrides": list(overrides), "folds": folds, "seed": cfg.seed,
               "fold_sizes": [len(p) for p in parts],
               "metrics": {n: {"mean": statistics.fmean(r[n] for r in results),
                               "sd": statistics.stdev(r[n] for r in results),
                               "values": [r[n] for r in results]} for n in names}}
    (root / "cv_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
