"""recipes/question_answering: a short run trains, predicts answer text with character offsets, and exports a
directory transformers' AutoModelForQuestionAnswering loads with the run's start/end logits; the full tiny.yaml
(slow) beats the question-blind baseline measured on its own eval file by 0.3 exact match."""
from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
import torch

from mm_ptft.data.generated.qa import blind_answer
from mm_ptft.data.tables import DataError
from mm_ptft.run import load_run, predict, train
from mm_ptft.tasks import load_config

from mm_paths import ROOT

RECIPE = Path(ROOT) / "recipes" / "question_answering"
SHORT = ["train.epochs=1", "data.generate.n_train=300", "data.generate.n_eval=30", "train.report=false"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("qa") / "run"
    train(load_config(RECIPE / "tiny.yaml", [f"output_dir={out}", *SHORT]))
    return out


def test_predict_gives_text_and_offsets(run):
    ctx = "It rained today. In the garden, three children watched a blue owl."
    rows = predict(run, [json.dumps({"question": "Where did it happen?", "context": ctx}),
                         {"question": "What colour is mentioned?", "context": ctx}])
    for r in rows:
        assert r["answer"] == ctx[r["start"]: r["end"]] and r["answer"]  # offsets into the original context
    with pytest.raises(DataError, match="input 0: give a JSON object"):
        predict(run, ["just a string"])


def test_export_hf_loads_in_transformers_with_the_runs_logits(run, tmp_path):
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from mm_ptft.run.export import export_run

    out = export_run(run, "hf", tmp_path / "hf")
    model = AutoModelForQuestionAnswering.from_pretrained(str(out)).eval()
    tok = AutoTokenizer.from_pretrained(str(out))
    _, prepared, _ = load_run(run, with_data=False)
    enc = tok(["Which animal is it about?"], ["A fox painted red slept in the forest for two days."],
              return_tensors="pt")
    with torch.no_grad():
        theirs = model(**enc)
        ours = prepared.task({"text": enc["input_ids"], "text_mask": enc["attention_mask"]})
    assert torch.allclose(theirs.start_logits, ours["start_logits"], atol=1e-4)
    assert torch.allclose(theirs.end_logits, ours["end_logits"], atol=1e-4)
    assert "question-answering" in (out / "README.md").read_text()


def test_missing_column_is_named(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"context": "c", "query": "q", "answer_start": 0, "answer_text": "c"}) + "\n")
    cfg = load_config(RECIPE / "tiny.yaml", [f"output_dir={tmp_path / 'r'}", f"data.train_file={bad}",
                                            f"data.eval_file={bad}"])
    from mm_ptft.tasks import get_recipe

    with pytest.raises(DataError, match=r"missing column\(s\) \['question'\]"):
        get_recipe("question_answering").prepare(cfg)


@pytest.mark.slow  # about 1-2 minutes on a shared 2-core CPU
def test_tiny_recipe_beats_the_blind_baseline(tmp_path):
    main = runpy.run_path(str(RECIPE / "train.py"))["main"]
    results = main([str(RECIPE / "tiny.yaml"), f"output_dir={tmp_path}", "train.report=false"])
    cfg = load_config(tmp_path / "config.yaml")
    rows = [json.loads(x) for x in Path(cfg.data.eval_file).read_text().splitlines()]
    baseline = sum(blind_answer(r["context"]) == r["answer_text"] for r in rows) / len(rows)  # about 0.25
    assert results["exact_match"] >= baseline + 0.3, (results, baseline)


def plain_transformers_span(model, tok, question: str, context: str, max_answer: int) -> tuple[str, int, int]:
    """run_qa.py's answer with transformers alone, for a context that fits one window: the context span
    (s <= e < s + max_answer tokens) of the highest start + end logit, as characters of the context."""
    enc = tok(question, context, truncation="only_second", return_offsets_mapping=True, return_tensors="pt")
    offsets, seq = enc.pop("offset_mapping")[0].tolist(), enc.sequence_ids(0)
    assert None in seq[1:] and seq[-1] is None  # the whole context is in the window (no overflow)
    with torch.no_grad():
        out = model(**enc)
    start, end = out.start_logits[0].tolist(), out.end_logits[0].tolist()
    ctx = [t for t, s in enumerate(seq) if s == 1]
    s, e = max(((s, e) for s in ctx for e in ctx if s <= e < s + max_answer), key=lambda p: start[p[0]] + end[p[1]])
    return context[offsets[s][0]: offsets[e][1]], offsets[s][0], offsets[e][1]


def test_predict_equals_plain_transformers_on_the_export(run, tmp_path):
    """mm-ptft predict against plain transformers on the exported directory alone (``AutoModelForQuestionAnswering``
    + ``AutoTokenizer``, run_qa.py's best span; transformers 5 has no question-answering pipeline), on contexts
    that fit one window: answer text and character offsets alike."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from mm_ptft.run.export import export_run

    out = export_run(run, "hf", tmp_path / "hf")
    cfg, _, _ = load_run(run, with_data=False)
    model, tok = AutoModelForQuestionAnswering.from_pretrained(str(out)).eval(), AutoTokenizer.from_pretrained(str(out))
    inputs = [{"question": q, "context": c} for q, c in [
        ("Where did it happen?", "In the garden, three children watched a blue owl."),
        ("What colour is mentioned?", "A red fox slept in the forest."),
        ("How many are there?", "Two cats sat by the river."),
        ("Which animal is it about?", "In the harbour, five children watched a grey seal.")]]
    ours = predict(run, inputs)
    theirs = [plain_transformers_span(model, tok, x["question"], x["context"], cfg.data.max_answer_length)
              for x in inputs]
    assert len({r["answer"] for r in ours}) > 1  # the questions matter
    assert [(r["answer"], r["start"], r["end"]) for r in ours] == theirs


def test_gpu_config_is_valid():
    """The GPU-scale config.yaml (SQuAD with MiniLM, run_qa.py's window) validates through the config schema."""
    cfg = load_config(RECIPE / "config.yaml")
    assert cfg.task == "question_answering" and cfg.model.text["name_or_path"] and not cfg.data.generate
    assert cfg.data.train_file == "hf:squad" and (cfg.data.max_length, cfg.data.doc_stride) == (384, 128)
    assert cfg.train.precision == "auto"
