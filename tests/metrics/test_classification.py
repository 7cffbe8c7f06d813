"""Classification metrics against sklearn (an independent reference) and the confusion matrix in the run dir."""
import json

import pytest
import torch
from sklearn.metrics import confusion_matrix, precision_score, recall_score, roc_auc_score

from mm_ptft.metrics.classification import ClassificationMetrics
from mm_ptft.types import LABELS

G = torch.Generator().manual_seed(0)


def compute(logits, labels, names=(), batches=3):
    m = ClassificationMetrics(logits.shape[1], names)
    for lo, la in zip(logits.chunk(batches), labels.chunk(batches)):
        m.update({"logits": lo}, {LABELS: la})
    return m.compute(), m.artifacts()


def test_multiclass_precision_recall_auroc_confusion_match_sklearn():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 2, 1, 0, 0, 2, 1, 1, 2, 0])
    logits = torch.randn(len(labels), 3, generator=G) + 1.5 * torch.nn.functional.one_hot(labels, 3)
    r, art = compute(logits, labels, ["cat", "dog house", "eel"])
    y, pred, prob = labels.numpy(), logits.argmax(1).numpy(), logits.softmax(1).numpy()
    for i, name in enumerate(["cat", "dog_house", "eel"]):
        assert r[f"precision_{name}"] == pytest.approx(precision_score(y, pred, labels=[i], average=None)[0], abs=1e-6)
        assert r[f"recall_{name}"] == pytest.approx(recall_score(y, pred, labels=[i], average=None)[0], abs=1e-6)
    assert r["macro_precision"] == pytest.approx(precision_score(y, pred, average="macro"), abs=1e-6)
    assert r["macro_recall"] == pytest.approx(recall_score(y, pred, average="macro"), abs=1e-6)
    assert r["auroc"] == pytest.approx(roc_auc_score(y, prob, multi_class="ovr", average="macro"), abs=1e-5)
    assert art["confusion_matrix"]["matrix"] == confusion_matrix(y, pred).tolist()
    assert art["confusion_matrix"]["labels"] == ["cat", "dog house", "eel"]
    assert {"accuracy", "macro_f1"} <= set(r)


def test_binary_auroc_by_hand():
    # class-1 scores 0.1, 0.4, 0.35, 0.8 for labels 0, 0, 1, 1: of the 4 (pos, neg) pairs, 3 are ordered right
    p1 = torch.tensor([0.1, 0.4, 0.35, 0.8])
    logits = torch.stack([torch.log(1 - p1), torch.log(p1)], 1)
    r, _ = compute(logits, torch.tensor([0, 0, 1, 1]), batches=2)
    assert r["auroc"] == pytest.approx(0.75)
    # predictions: 0, 0, 0, 1 → precision_1 = 1/1, recall_1 = 1/2, precision_0 = 2/3, recall_0 = 2/2
    assert (r["precision_1"], r["recall_1"], r["recall_0"]) == pytest.approx((1.0, 0.5, 1.0))
    assert r["precision_0"] == pytest.approx(2 / 3)


def test_absent_class_is_left_out_of_macro_means():
    """A class in neither labels nor predictions does not count 0 in the macro means (sklearn's convention)."""
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    logits = torch.randn(6, 4, generator=G)
    logits[:, :2] += 5 * torch.nn.functional.one_hot(labels, 2)  # predictions only among classes 0 and 1
    r, _ = compute(logits, labels, batches=1)
    y, pred = labels.numpy(), logits.argmax(1).numpy()
    assert r["macro_recall"] == pytest.approx(recall_score(y, pred, average="macro"))
    assert r["auroc"] == pytest.approx(1.0)  # one-vs-rest over classes 0 and 1, both perfectly separated


def test_one_class_eval_set_has_no_auroc():
    r, _ = compute(torch.randn(4, 2, generator=G), torch.zeros(4, dtype=torch.long), batches=1)
    assert "auroc" not in r and "accuracy" in r


def test_run_writes_confusion_matrix_and_report_plot(topics_data, tmp_path):
    from mm_ptft.run import load_config, train
    from mm_paths import TEXT_TINY

    out = tmp_path / "run"
    results = train(load_config(TEXT_TINY, [f"output_dir={out}", f"data.train_file={topics_data['train_file']}",
                                            f"data.eval_file={topics_data['eval_file']}", "train.batch_size=16",
                                            "train.max_steps=4", "train.eval_every=4"]))
    cm = json.loads((out / "confusion_matrix.json").read_text())
    assert cm["labels"] == ["cooking", "finance", "space", "sports"]
    assert sum(map(sum, cm["matrix"])) == 120  # every eval row counted once
    diag = sum(cm["matrix"][i][i] for i in range(4))
    assert results["accuracy"] == pytest.approx(diag / 120)
    assert {f"precision_{n}" for n in cm["labels"]} | {"auroc", "macro_recall"} <= set(results)
    assert (out / "confusion_matrix.png").exists() and "confusion_matrix.png" in (out / "report.md").read_text()
