"""Smoke test of recipes/causal_lm_sft/tiny.yaml through its train.py: a random-init tiny GPT-2 learns the generated
"add: 3 4" -> "7" pairs, its exact match at least 0.3 above the better trivial baseline measured on the same eval
file: the training file's most frequent answer for every prompt (about 0.1), or the prompt's operands as they are
(0 here)."""
from __future__ import annotations

import json
import runpy
from collections import Counter
from pathlib import Path

import pytest

from mm_ptft.data.generated.sft import copy_baseline

from mm_paths import ROOT

RECIPE = Path(ROOT) / "recipes" / "causal_lm_sft"


@pytest.mark.slow  # about 1-3 minutes on a shared 2-core CPU
def test_tiny_recipe_beats_the_copy_baseline(tmp_path):
    main = runpy.run_path(str(RECIPE / "train.py"))["main"]
    results = main([str(RECIPE / "tiny.yaml"), f"output_dir={tmp_path}", "train.report=false"])
    from mm_ptft.tasks import load_config

    cfg = load_config(tmp_path / "config.yaml")
    rows = [json.loads(x) for x in Path(cfg.data.eval_file).read_text().splitlines()]
    train_rows = [json.loads(x) for x in Path(cfg.data.train_file).read_text().splitlines()]
    majority = Counter(r["response"] for r in train_rows).most_common(1)[0][0]
    baseline = max(sum(r["response"] == majority for r in rows), sum(copy_baseline(r["prompt"]) == r["response"]
                                                                     for r in rows)) / len(rows)
    assert results["exact_match"] >= baseline + 0.3, (results, baseline)
