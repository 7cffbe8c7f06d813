"""Smoke test of recipes/causal_lm_sft/tiny.yaml through its train.py: a random-init tiny GPT-2 learns the generated
add/copy pairs, its exact match at least 0.25 above the trivial baseline (answering with the prompt's operands,
measured on the same eval file: about 0.5, right on the copy rows only)."""
from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

from mm_ptft.data.generated_sft import copy_baseline

from mm_paths import ROOT

RECIPE = Path(ROOT) / "recipes" / "causal_lm_sft"


@pytest.mark.slow  # about 1-3 minutes on a shared 2-core CPU
def test_tiny_recipe_beats_the_copy_baseline(tmp_path):
    main = runpy.run_path(str(RECIPE / "train.py"))["main"]
    results = main([str(RECIPE / "tiny.yaml"), f"output_dir={tmp_path}", "train.report=false"])
    from mm_ptft.tasks import load_config

    cfg = load_config(tmp_path / "config.yaml")
    rows = [json.loads(x) for x in Path(cfg.data.eval_file).read_text().splitlines()]
    baseline = sum(copy_baseline(r["prompt"]) == r["response"] for r in rows) / len(rows)
    assert 0.3 <= baseline <= 0.7
    assert results["exact_match"] >= baseline + 0.25, (results, baseline)
