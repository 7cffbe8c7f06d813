"""recipes/seq2seq: tiny.yaml learns its generated task (slow), and the GPU-scale config.yaml (and causal_lm_sft's)
validates through the config schema."""
from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

from mm_paths import ROOT

RECIPES = Path(ROOT) / "recipes"


@pytest.mark.parametrize("name", ["seq2seq", "causal_lm_sft"])
def test_gpu_config_is_valid(name: str) -> None:
    from mm_ptft.run import load_config

    cfg = load_config(RECIPES / name / "config.yaml")
    assert cfg.task == name and cfg.model.lm.get("name_or_path") and not cfg.data.generate
    assert cfg.data.train_file or name == "causal_lm_sft"  # its file is the user's own (data.train_file=...)
    assert cfg.train.precision == "bf16"


@pytest.mark.slow  # about 2-4 minutes on a shared 2-core CPU
def test_tiny_recipe_beats_copying_the_source(tmp_path):
    """A random-init tiny BART learns to reverse letters: exact match at least 0.5 above the better trivial baseline
    on the same eval file, copying the source or copying its operands (right only on palindromes)."""
    main = runpy.run_path(str(RECIPES / "seq2seq" / "train.py"))["main"]
    results = main([str(RECIPES / "seq2seq" / "tiny.yaml"), f"output_dir={tmp_path}", "train.report=false"])
    from mm_ptft.tasks import load_config

    cfg = load_config(tmp_path / "config.yaml")
    rows = [json.loads(x) for x in Path(cfg.data.eval_file).read_text().splitlines()]
    copy = sum(r["source"] == r["target"] for r in rows) / len(rows)
    operands = sum(r["source"].split(":", 1)[1].strip() == r["target"] for r in rows) / len(rows)
    assert results["exact_match"] >= max(copy, operands) + 0.5, (results, copy, operands)
    assert results["bleu"] > 50
