"""Text classification end to end: data handling, errors that name the problem, predict/eval."""
import csv
import json

import pytest

from mm_ptft.run import load_config
from mm_ptft.data.tables import DataError
from mm_ptft.run import evaluate, predict, train
from mm_ptft.tasks.text_classification import TextClassification
from mm_ptft.train.rundir import final_results

from mm_fixtures import crash_at_step
from mm_paths import TEXT_TINY


def write_csv(path, rows, header=("text", "label")):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def cfg(tmp_path, *extra):
    return load_config(TEXT_TINY, [f"output_dir={tmp_path / 'run'}", "train.report=false", *extra])


def test_tiny_recipe_beats_chance_and_predicts(tmp_path):
    """Four balanced topics: chance is 0.25; the tiny recipe must reach at least 0.6."""
    results = train(cfg(tmp_path, "train.epochs=3"))
    assert results["accuracy"] >= 0.6, results
    run = tmp_path / "run"
    rows = predict(run, ["the chef baked bread in the oven with garlic", "the rocket reached orbit around the moon"])
    assert [r["label"] for r in rows] == ["cooking", "space"]
    assert abs(sum(rows[0]["scores"].values()) - 1) < 1e-5
    # eval reloads weights: the last checkpoint reproduces final_metrics.json, the default is the best one
    last = sorted((run / "checkpoints").glob("step_*"))[-1]
    final = final_results(run)
    assert evaluate(run, checkpoint=str(last))["accuracy"] == pytest.approx(final["accuracy"])
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    assert evaluate(run)["accuracy"] == pytest.approx(best["accuracy"])


def test_eval_of_a_run_trained_on_a_seeded_split_uses_the_same_held_out_rows(tmp_path, topics_data):
    """No data.eval_file: training holds out a seeded eval_fraction of train_file; mm-ptft eval must
    rebuild that split (not return no metrics because the labels are already known)."""
    results = train(cfg(tmp_path, "data.generate=null", f"data.train_file={topics_data['train_file']}",
                        "data.eval_fraction=0.2", "train.max_steps=8", "train.eval_every=8"))
    again = evaluate(tmp_path / "run")
    assert again and again["accuracy"] == pytest.approx(results["accuracy"])
    assert again["loss"] == pytest.approx(results["loss"], rel=1e-5)
    with pytest.raises(ValueError, match="no evaluation data.*data.eval_file=PATH"):
        evaluate(tmp_path / "run", ["data.train_file=''"])  # nothing to evaluate on: said, not an empty result


def test_missing_column_is_named(tmp_path):
    f = write_csv(tmp_path / "t.csv", [("hello world", "a")] * 10, header=("sentence", "label"))
    with pytest.raises(DataError, match=r"missing column\(s\) \['text'\]"):
        TextClassification.prepare(cfg(tmp_path, f"data.train_file={f}"))


def test_label_outside_label_set_names_row(tmp_path):
    tr = write_csv(tmp_path / "tr.csv", [("good film", "pos"), ("bad film", "neg")] * 5)
    ev = write_csv(tmp_path / "ev.csv", [("fine film", "pos"), ("odd film", "neutral")])
    with pytest.raises(DataError, match=r"row 1: label 'neutral' is not in the label set"):
        TextClassification.prepare(cfg(tmp_path, f"data.train_file={tr}", f"data.eval_file={ev}"))


def test_empty_text_error_or_counted_skip(tmp_path):
    tr = write_csv(tmp_path / "tr.csv", [("good film", "pos"), ("", "neg"), ("bad film", "neg")] * 4)
    with pytest.raises(DataError, match=r"tr.csv: row (1|4|7|10): empty text"):
        TextClassification.prepare(cfg(tmp_path, f"data.train_file={tr}", "data.eval_fraction=0.25"))
    p = TextClassification.prepare(cfg(tmp_path, f"data.train_file={tr}", "data.eval_fraction=0.25",
                                       "data.skip_bad_samples=true"))
    assert p.counters["skipped_empty_text"] == 4
    assert len(p.train_data) + len(p.eval_data) == 8


def test_long_text_truncated_and_counted(tmp_path):
    tr = write_csv(tmp_path / "tr.csv", [("word " * 200, "a"), ("short one", "b")] * 5)
    p = TextClassification.prepare(cfg(tmp_path, f"data.train_file={tr}", "data.max_length=16"))
    assert max(len(r["text"]) for r in p.train_data.items) == 16
    assert p.counters["truncated_texts"] >= 4


def test_int_labels_keep_numeric_order_and_seeded_split(tmp_path):
    rows = [(f"sample number {i}", [10, 2, 1][i % 3]) for i in range(30)]
    tr = write_csv(tmp_path / "tr.csv", rows)
    a = TextClassification.prepare(cfg(tmp_path, f"data.train_file={tr}", "data.eval_fraction=0.2"))
    c = cfg(tmp_path, f"data.train_file={tr}", "data.eval_fraction=0.2")
    b = TextClassification.prepare(c)
    assert c.data.labels == ["1", "2", "10"]
    assert len(a.eval_data) == 6 and [r["text"] for r in a.eval_data.items] == [r["text"] for r in b.eval_data.items]


@pytest.mark.parametrize("ext", ["jsonl", "parquet", "tsv"])
def test_other_file_formats(tmp_path, ext):
    import pandas as pd

    df = pd.DataFrame({"text": ["good film", "bad film"] * 5, "label": ["pos", "neg"] * 5})
    path = tmp_path / f"d.{ext}"
    if ext == "jsonl":
        df.to_json(path, orient="records", lines=True)
    elif ext == "parquet":
        df.to_parquet(path)
    else:
        df.to_csv(path, sep="\t", index=False)
    p = TextClassification.prepare(cfg(tmp_path, f"data.train_file={path}", "data.eval_fraction=0.2"))
    assert len(p.train_data) == 8


def test_missing_file_named(tmp_path):
    with pytest.raises(DataError, match=r"data.train_file=.*nope.csv: file not found"):
        TextClassification.prepare(cfg(tmp_path, "data.train_file=/nope.csv"))


def test_labels_per_class_keeps_k_rows_per_class_and_leaves_eval_alone(tmp_path, topics_data):
    """K=5 of each of the four topics from the training split (checked against the CSV's own labels); the eval split
    (a seeded split of the same file) is the same rows as without few-shot; the data log counts both."""
    import collections

    base = [f"data.train_file={topics_data['train_file']}", 'data.eval_file=""', "data.generate=null"]
    full = TextClassification.prepare(cfg(tmp_path, *base))
    base.append(f"model.text.tokenizer={tmp_path / 'run' / 'tokenizer'}")  # the same token ids in every run
    few = TextClassification.prepare(cfg(tmp_path, *base, "data.labels_per_class=5"))
    assert collections.Counter(r["labels"] for r in few.train_data.items) == {0: 5, 1: 5, 2: 5, 3: 5}
    train_ids = [r["text"] for r in full.train_data.items]
    assert all(r["text"] in train_ids for r in few.train_data.items)  # drawn from the training split only
    assert [r["text"] for r in few.eval_data.items] == [r["text"] for r in full.eval_data.items]
    assert few.counters["few_shot_rows"] == 20 and few.counters["few_shot_unused_rows"] == len(train_ids) - 20
    again = TextClassification.prepare(cfg(tmp_path, *base, "data.labels_per_class=5"))
    assert [r["text"] for r in again.train_data.items] == [r["text"] for r in few.train_data.items]  # seeded
    other = TextClassification.prepare(cfg(tmp_path, *base, "data.labels_per_class=5", "seed=1"))
    assert [r["text"] for r in other.train_data.items] != [r["text"] for r in few.train_data.items]


def test_labels_per_class_beyond_a_class_size_names_the_class(tmp_path):
    rows = [(f"cooking text {i}", "cooking") for i in range(6)] + [(f"space text {i}", "space") for i in range(2)]
    f = write_csv(tmp_path / "t.csv", rows)
    with pytest.raises(DataError, match=r"data.labels_per_class=3.*class 'space' has 2"):
        TextClassification.prepare(cfg(tmp_path, f"data.train_file={f}", f"data.eval_file={f}", "data.generate=null",
                                       "data.labels_per_class=3"))


AUGMENT = "data.augment={token_mask: 0.15, token_dropout: 0.05, random_swap: 1, random_deletion: 0.1}"


def test_augmentation_touches_training_samples_only_and_is_logged(tmp_path, topics_data):
    base = [f"data.train_file={topics_data['train_file']}", f"data.eval_file={topics_data['eval_file']}",
            "data.generate=null"]
    plain = TextClassification.prepare(cfg(tmp_path, *base))
    base.append(f"model.text.tokenizer={tmp_path / 'run' / 'tokenizer'}")  # the same token ids in both
    aug = TextClassification.prepare(cfg(tmp_path, *base, AUGMENT))
    assert aug.eval_data.items == plain.eval_data.items  # eval: the plain records
    assert [aug.train_data.base[i] for i in range(len(plain.train_data))] == plain.train_data.items
    changed = sum(aug.train_data[i]["text"] != plain.train_data[i]["text"] for i in range(len(plain.train_data)))
    assert changed > 0.9 * len(plain.train_data)
    assert aug.counters["augmented_samples_per_epoch"] == len(plain.train_data)
    assert "augmented_samples_per_epoch" not in plain.counters


def test_augmented_run_resumes_exactly_across_an_epoch(tmp_path, topics_data, monkeypatch):
    """10 steps straight == crash at step 9 (epoch 1 of 7-batch epochs, after the step-8 checkpoint) and resume: the
    noise is drawn from (seed, epoch, index), so bitwise-identical weights; and it differs from the run without noise."""
    import torch
    from safetensors.torch import load_file

    def run(out, *extra):
        return train(cfg(tmp_path, f"output_dir={tmp_path / out}", f"data.train_file={topics_data['train_file']}",
                         f"data.eval_file={topics_data['eval_file']}", "data.generate=null", "train.batch_size=64",
                         "train.max_steps=10", "train.eval_every=10", "train.save_every=4", *extra))

    def weights(out):
        return load_file(str(sorted((tmp_path / out / "checkpoints").glob("step_*"))[-1] / "model.safetensors"))

    run("straight", AUGMENT)
    run("plain")
    crash_at_step(monkeypatch, 9, lambda: run("resumed", AUGMENT))
    run("resumed", AUGMENT, "train.resume=true")
    a, b, p = weights("straight"), weights("resumed"), weights("plain")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], p[k]) for k in a)
    log = [json.loads(ln) for ln in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["augmented_samples_per_epoch"] for r in log if r["kind"] == "data"] == [400]
