"""Few-shot evaluation of an encoder directory: prototypes and linear probes against independent computations."""
import json
import math
import re

import numpy as np
import pytest

from mm_ptft.config import ConfigError
from mm_ptft.workflows.fewshot import Embedded, episode_support, few_shot_accuracy, prototype_predict


def test_prototype_predict_by_hand():
    """Worked by hand: class 0's supports (2,0), (3,4) normalise to (1,0), (0.6,0.8), prototype (0.8,0.4); class 1's
    (0,-5) gives (0,-1). Query (1,1): cosines 0.949 vs -0.707 → class 0; query (1,-3): -0.141 vs 0.949 → class 1."""
    support = np.array([[2.0, 0.0], [3.0, 4.0], [0.0, -5.0]])
    pred = prototype_predict(support, np.array([0, 0, 1]), np.array([[1.0, 1.0], [1.0, -3.0]]), 2)
    assert pred.tolist() == [0, 1]
    # the scale of a support vector does not matter (cosine on normalised vectors), its direction does
    assert prototype_predict(support * [[100], [1], [1]], np.array([0, 0, 1]), np.array([[1.0, 1.0]]), 2).tolist() == [0]


def synthetic(n_per_class=12, classes=3, dim=5, noise=1.2, seed=0) -> Embedded:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 2
    y = np.repeat(np.arange(classes), n_per_class)
    return Embedded(centres[y] + rng.normal(scale=noise, size=(len(y), dim)), y, [f"c{i}" for i in range(classes)])


def numpy_prototype_accuracy(data: Embedded, support: list[int]) -> float:
    """An independent nearest-prototype classifier: loops, explicit cosines."""
    x = data.vectors
    protos = []
    for c in range(len(data.names)):
        rows = [x[i] / np.linalg.norm(x[i]) for i in support if data.labels[i] == c]
        protos.append(sum(rows) / len(rows))
    right = total = 0
    for i in range(len(x)):
        if i in support:
            continue
        cos = [float(x[i] @ p / (np.linalg.norm(x[i]) * np.linalg.norm(p))) for p in protos]
        right += int(np.argmax(cos) == data.labels[i])
        total += 1
    return right / total


def test_prototype_accuracy_and_ci_match_numpy():
    data = synthetic()
    res = few_shot_accuracy(data, shots=2, method="prototype", episodes=6, seed=3)
    expected = [numpy_prototype_accuracy(data, episode_support(data, 2, 3, e)) for e in range(6)]
    assert res["accuracies"] == pytest.approx(expected)
    assert res["accuracy"] == pytest.approx(sum(expected) / 6)
    sd = math.sqrt(sum((a - sum(expected) / 6) ** 2 for a in expected) / 5)
    assert res["accuracy_ci95"] == pytest.approx(1.96 * sd / math.sqrt(6))
    assert len(set(map(tuple, (episode_support(data, 2, 3, e) for e in range(6))))) == 6  # different episodes
    assert 1 / 3 + 0.2 < res["accuracy"] <= 1  # separable clusters: well above chance


def test_linear_probe_matches_sklearn_and_errors():
    from sklearn.linear_model import LogisticRegression
    data = synthetic(seed=1)
    res = few_shot_accuracy(data, shots=3, method="linear_probe", episodes=2, seed=0)
    for e, acc in enumerate(res["accuracies"]):
        s = episode_support(data, 3, 0, e)
        q = [i for i in range(len(data.labels)) if i not in s]
        unit = data.vectors / np.linalg.norm(data.vectors, axis=1, keepdims=True)
        clf = LogisticRegression(max_iter=2000).fit(unit[s], data.labels[s])
        assert acc == pytest.approx(float((clf.predict(unit[q]) == data.labels[q]).mean()))
    with pytest.raises(ConfigError, match="--method 'knn'"):
        few_shot_accuracy(data, 1, method="knn")
    from mm_ptft.data.tables import DataError
    with pytest.raises(DataError, match="--shots 13.*class 'c0' has 12"):
        few_shot_accuracy(data, 13)


def test_cli_on_an_encoder_directory_from_a_tiny_run(tmp_path, topics_data, capsys):
    from mm_paths import TEXT_TINY
    from mm_ptft.cli import main
    from mm_ptft.run import load_config, train

    train(load_config(TEXT_TINY, [f"output_dir={tmp_path / 'run'}", f"data.train_file={topics_data['train_file']}",
                                  f"data.eval_file={topics_data['eval_file']}", "data.generate=null",
                                  "train.max_steps=2", "train.report=false"]))
    rc = main(["fewshot", str(tmp_path / "run" / "encoders" / "text"), "--data", topics_data["eval_file"],
               "--shots", "3", "--episodes", "4", "--column", "text"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0 and out[0].startswith("prototype 3-shot accuracy: ")
    res = json.loads(out[1])
    assert res["modality"] == "text" and res["classes"] == 4 and res["rows"] == 120 and len(res["accuracies"]) == 4
    assert all(0 <= a <= 1 for a in res["accuracies"])
    rc = main(["fewshot", str(tmp_path / "run"), "--data", topics_data["eval_file"], "--shots", "2", "--episodes", "2",
               "--column", "text", "--method", "linear_probe"])  # a run directory with one encoder works too
    assert rc == 0 and json.loads(capsys.readouterr().out.splitlines()[1])["method"] == "linear_probe"


def test_image_encoder_directory_embeds_its_table(tmp_path):
    """Any modality: a saved tiny_cnn directory embeds a generated image table (paths relative to it)."""
    from mm_ptft.data.generated import generate
    from mm_ptft.encoders import build_encoder
    from mm_ptft.encoders.image import IMAGE_ENCODERS
    from mm_ptft.workflows.fewshot import run_fewshot

    data = generate({"name": "image_shapes", "n_train": 24, "n_eval": 4, "size": 32, "seed": 0}, tmp_path / "data")
    build_encoder(IMAGE_ENCODERS, {"name": "tiny_cnn", "widths": [8, 16], "img_size": 32}, "model.image") \
        .save_pretrained(tmp_path / "enc")
    res = run_fewshot(str(tmp_path / "enc"), data["train_file"], shots=2, episodes=3, column="path", device="cpu")
    assert res["modality"] == "image" and res["rows"] == 24 and len(res["accuracies"]) == 3


def test_reads_the_runs_own_columns_and_errors_name_the_flags(tmp_path, capsys):
    """A run trained on columns ``sentence``/``topic`` is evaluated on a table with those names, no flags needed;
    a table lacking them is an error naming ``--column`` / ``--label-column`` (not the config's data.*_column)."""
    import csv

    from mm_paths import TEXT_TINY
    from mm_ptft.cli import main
    from mm_ptft.data.tables import DataError
    from mm_ptft.run import load_config, train
    from mm_ptft.workflows.fewshot import run_fewshot

    words = {"sport": "ball goal team", "food": "bread soup rice"}
    rows = [{"sentence": f"{w} {i}", "topic": t} for t, ws in words.items() for i in range(8) for w in ws.split()[:1]]
    for name in ("train.csv", "eval.csv"):
        with open(tmp_path / name, "w", newline="") as f:
            writer = csv.DictWriter(f, ["sentence", "topic"])
            writer.writeheader()
            writer.writerows(rows)
    train(load_config(TEXT_TINY, [f"output_dir={tmp_path / 'run'}", f"data.train_file={tmp_path / 'train.csv'}",
                                  f"data.eval_file={tmp_path / 'eval.csv'}", "data.generate=null",
                                  "data.text_column=sentence", "data.label_column=topic",
                                  "train.max_steps=1", "train.report=false"]))
    for where in ("run", "run/encoders/text"):
        assert main(["fewshot", str(tmp_path / where), "--data", str(tmp_path / "eval.csv"),
                     "--shots", "2", "--episodes", "2"]) == 0
        assert json.loads(capsys.readouterr().out.splitlines()[1])["classes"] == 2
    assert main(["fewshot", str(tmp_path / "run"), "--data", str(tmp_path / "eval.csv"), "--shots", "2",
                 "--column", "text"]) != 0
    assert re.search(r"missing column\(s\) \['text'\].*--column NAME.*--label-column NAME", capsys.readouterr().err)
    with pytest.raises(DataError, match=r"\['label'\].*--column NAME"):  # the library call says the same
        run_fewshot(str(tmp_path / "run"), str(tmp_path / "eval.csv"), 2, label_column="label", device="cpu")
