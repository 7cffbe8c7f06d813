"""Image classification recipe: few-shot selection of the training split."""
import collections
import csv
import os

import pytest

from mm_ptft.data.tables import DataError
from mm_ptft.run import load_config
from mm_ptft.tasks.image_classification import ImageClassification

TINY = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "image_classification", "tiny.yaml")


def cfg(tmp_path, *extra):
    return load_config(TINY, [f"output_dir={tmp_path / 'run'}", "data.generate.n_train=64", "data.generate.n_eval=16",
                              "train.report=false", *extra])


def test_labels_per_class_picks_k_training_images_per_class(tmp_path, monkeypatch):
    """K=3 images of each shape, all from the training file (labels read back from its CSV), eval untouched."""
    monkeypatch.setenv("MM_PTFT_DATA", str(tmp_path / "data"))
    full = ImageClassification.prepare(cfg(tmp_path))
    c = cfg(tmp_path, "data.labels_per_class=3")
    few = ImageClassification.prepare(c)
    root = os.path.dirname(c.data.train_file)
    truth = {os.path.join(root, r["path"]): r["label"] for r in csv.DictReader(open(c.data.train_file))}
    assert collections.Counter(truth[p] for p in few.train_data.paths) == {n: 3 for n in c.data.labels}
    assert set(few.train_data.paths) <= set(full.train_data.paths)
    assert few.eval_data.paths == full.eval_data.paths
    assert few.counters["few_shot_rows"] == 3 * len(c.data.labels)
    with pytest.raises(DataError, match=r"data.labels_per_class=50: .* class '\w+' has \d+"):
        ImageClassification.prepare(cfg(tmp_path, "data.labels_per_class=50"))
