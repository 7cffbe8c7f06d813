"""Continual fine-tuning end to end on tiny text runs: task A (sports/cooking) then task B (space/finance).
EWC reads A's weights and a Fisher from A's run directory and logs ``ewc_loss``; L2-SP logs ``l2sp_loss``;
rehearsal mixes a seeded, counted sample of A's training rows (never its eval split) into B, labels the union."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mm_ptft.run.continual import previous_run
from mm_ptft.data.tables import DataError
from mm_ptft.run import load_config, pick_checkpoint, train
from mm_ptft.tasks import get_recipe

from mm_paths import TEXT_TINY

TOPICS_A, TOPICS_B = ("sports", "cooking"), ("space", "finance")
QUICK = ["sched.warmup_steps=0", "optim.lr=0.01", "train.report=false", "train.report_to=[]", "train.log_every=1", "data.generate=null"]


def write_split(path: Path, rows: list[list[str]], topics: tuple[str, ...]) -> str:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(r for r in rows if r[1] in topics)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    from mm_ptft.data.generated import text_topics

    root = tmp_path_factory.mktemp("continual")
    paths = text_topics(str(root / "all"), n_train=160, n_eval=8, seed=3)
    with open(paths["train_file"]) as f:
        rows = list(csv.reader(f))[1:]
    return {"a": write_split(root / "a.csv", rows, TOPICS_A), "b": write_split(root / "b.csv", rows, TOPICS_B),
            "root": str(root)}


@pytest.fixture(scope="module")
def run_a(files) -> Path:
    out = Path(files["root"]) / "run_a"
    train(load_config(TEXT_TINY, [f"output_dir={out}", f"data.train_file={files['a']}", "train.max_steps=3", *QUICK]))
    return out


def task_b(files, run_a: Path, out: Path, *more: str):
    return load_config(TEXT_TINY, [f"output_dir={out}", f"data.train_file={files['b']}", "train.max_steps=2", *QUICK,
                                   f"model.text={{name_or_path: {run_a / 'encoders' / 'text'}}}", *more])


def train_rows(metrics: Path) -> list[dict]:
    return [r for r in map(json.loads, metrics.read_text().splitlines()) if r.get("kind") == "train"]


def test_previous_run_gives_its_best_encoder_weights_and_a_nonnegative_fisher(run_a):
    weights, fisher = previous_run(str(run_a), samples=4)
    saved = load_file(str(pick_checkpoint(run_a) / "model.safetensors"))
    key = "text/model.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(weights[key], saved["encoder." + key.split("/", 1)[1]].float())
    assert set(fisher) == set(weights)
    assert all(bool((f >= 0).all()) for f in fisher.values())
    assert sum(float(f.sum()) for f in fisher.values()) > 0


@pytest.mark.parametrize("spec, part", [
    pytest.param("{name: ewc, weight: 1000.0, fisher_from: RUN, fisher_samples: 8}", "ewc_loss",
                 marks=pytest.mark.slow),  # ~19 s on the shared 2-core machine (run A rebuilt with its data)
    ("{name: l2_sp, weight: 10.0}", "l2sp_loss")])
def test_the_penalty_is_a_logged_loss_part_added_to_the_loss(files, run_a, tmp_path, spec, part):
    out = tmp_path / "b"
    train(task_b(files, run_a, out, f"finetune.regularize={spec.replace('RUN', str(run_a))}"))
    rows = train_rows(out / "metrics.jsonl")
    assert len(rows) == 2 and all(part in r for r in rows)
    assert rows[0][part] == pytest.approx(0.0, abs=1e-9)  # the first forward is at the starting weights
    assert rows[1][part] > 0  # after one step the encoder has moved
    assert rows[1]["loss"] == pytest.approx(rows[1]["ce_loss"] + rows[1][part], rel=1e-4)


def a_rows(files) -> dict[str, str]:
    with open(files["a"]) as f:
        return {r["text"]: r["label"] for r in csv.DictReader(f)}


def test_rehearsal_mixes_a_counted_seeded_sample_of_the_earlier_training_rows(files, run_a, tmp_path):
    cfg = task_b(files, run_a, tmp_path / "b", "data.rehearsal={source: " + str(run_a) + ", fraction: 0.5}")
    prepared = get_recipe(cfg.task).prepare(cfg)
    n_a_train = round(len(a_rows(files)) * (1 - cfg.data.eval_fraction))  # run A's eval split is held out
    assert prepared.counters["rehearsal_samples"] == round(0.5 * n_a_train)
    assert cfg.data.labels == sorted(TOPICS_A + TOPICS_B)  # class-incremental: the union
    n_b = sum(1 for _ in open(files["b"])) - 1
    n_b_train = n_b - round(n_b * cfg.data.eval_fraction)
    assert len(prepared.train_data) == n_b_train + prepared.counters["rehearsal_samples"]
    labels = [cfg.data.labels[int(r["labels"])] for r in prepared.train_data]
    assert sum(lb in TOPICS_A for lb in labels) == prepared.counters["rehearsal_samples"]
    # the rows come from A's training split, never from the rows run A evaluated on
    a_cfg = load_config(run_a / "config.yaml", [f"output_dir={run_a}"])
    a_eval = get_recipe(a_cfg.task).prepare(a_cfg, train=False).eval_data
    tok = prepared.task.encoder.tokenizer
    rehearsed = {tuple(r["text"]) for r in prepared.train_data if cfg.data.labels[int(r["labels"])] in TOPICS_A}
    held_out = {tuple(tok(tok.decode(r["text"], skip_special_tokens=True))["input_ids"]) for r in a_eval}
    assert rehearsed and not rehearsed & held_out
    capped = task_b(files, run_a, tmp_path / "c", "data.rehearsal={source: " + str(run_a) + ", max_samples: 3}")
    assert get_recipe(capped.task).prepare(capped).counters["rehearsal_samples"] == 3


def test_rehearsal_refuses_labels_outside_data_labels_and_clashing_label_types(files, run_a, tmp_path):
    cfg = task_b(files, run_a, tmp_path / "b", "data.rehearsal={source: " + str(run_a) + "}",
                 "data.labels=[space, finance]")
    with pytest.raises(DataError, match="data.labels"):
        get_recipe(cfg.task).prepare(cfg)
    ints = tmp_path / "ints.csv"
    ints.write_text("text,label\nthe match was won,0\nthe oven is hot,1\n")
    cfg = task_b(files, run_a, tmp_path / "c", f"data.rehearsal={{source: {ints}, fraction: 1.0}}")
    with pytest.raises(DataError, match="clash"):
        get_recipe(cfg.task).prepare(cfg)


def test_image_rehearsal_from_an_earlier_run_directory(tmp_path):
    """Image classification: the earlier run's generated training images (circle/square) join this run's
    (triangle/cross); only the earlier run's config.yaml and data are read."""
    from mm_ptft.train.rundir import config_yaml

    tiny = Path(TEXT_TINY).parents[1] / "image_classification" / "tiny.yaml"
    gen = "data.generate={name: image_shapes, n_train: 40, n_eval: 8, size: 16, classes: [%s]}"
    a = load_config(tiny, [f"output_dir={tmp_path / 'a'}", gen % "circle, square"])
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.yaml").write_text(config_yaml(a))
    b = load_config(tiny, [f"output_dir={tmp_path / 'b'}", gen % "triangle, cross",
                           f"data.rehearsal={{source: {tmp_path / 'a'}, fraction: 0.25}}"])
    prepared = get_recipe(b.task).prepare(b)
    assert prepared.counters["rehearsal_samples"] == 10  # a quarter of the earlier run's 40 training images
    assert b.data.labels == ["circle", "cross", "square", "triangle"]
    names = [b.data.labels[int(y)] for y in prepared.train_data.labels]
    assert len(names) == 50 and sum(n in ("circle", "square") for n in names) == 10


def test_rehearsal_config_errors_name_the_key():
    from mm_ptft.config import ConfigError

    with pytest.raises(ConfigError, match="data.rehearsal.source"):
        load_config(TEXT_TINY, ["data.rehearsal={fraction: 0.5}"])
    with pytest.raises(ConfigError, match="data.rehearsal.fraction"):
        load_config(TEXT_TINY, ["data.rehearsal={source: x.csv, fraction: 0.0}"])
