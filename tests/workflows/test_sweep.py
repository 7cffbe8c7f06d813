"""``mm-ptft sweep``: trials are normal run directories, the summary agrees with them, pruning stops a run
cleanly, ``--jobs`` runs trials in processes, and space-file errors name the key."""
import csv
import json

import pytest
import yaml

import mm_ptft
from mm_ptft.cli import main
from mm_ptft.config import ConfigError
from mm_ptft.workflows.sweep import load_space, run_sweep
from mm_ptft.train.rundir import final_results

from mm_paths import TEXT_TINY

pytest.importorskip("optuna")  # the ``search`` extra (also in ``dev``)

FAST = ["train.max_steps=6", "train.eval_every=3", "train.report=false", "sched.warmup_steps=0",
        "data.generate.n_train=96", "data.generate.n_eval=32", "train.batch_size=16"]


def space(tmp_path, text="optim.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}\n"):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)


def final(run_dir):
    return final_results(run_dir)


def test_three_trials_write_runs_table_plot_and_a_best_config_that_trains(tmp_path):
    out = tmp_path / "sweep"
    assert main(["sweep", TEXT_TINY, "--space", space(tmp_path), "--trials", "3", "--out", str(out), *FAST]) == 0
    trials = sorted(out.glob("trial_*"))
    assert [t.name for t in trials] == ["trial_000", "trial_001", "trial_002"]
    finals = {t.name: final(t)["accuracy"] for t in trials}  # read from each run, not from the study
    with open(out / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["state"] for r in rows] == ["complete"] * 3
    assert {r["run"]: float(r["value"]) for r in rows} == pytest.approx(finals)
    lrs = [float(r["optim.lr"]) for r in rows]
    assert all(1e-4 <= lr <= 3e-3 for lr in lrs) and len(set(lrs)) == 3
    for t, lr in zip(trials, lrs):  # each trial ran with its own sampled value
        assert yaml.safe_load((t / "config.yaml").read_text())["optim"]["lr"] == pytest.approx(lr)
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["metric"] == "accuracy" and summary["greater_is_better"] is True
    assert summary["best"]["value"] == max(finals.values())
    assert finals[summary["best"]["run"]] == max(finals.values())
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG" and "| trial |" in (out / "sweep.md").read_text()
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["optim"]["lr"] == pytest.approx(summary["best"]["params"]["optim.lr"])
    again = mm_ptft.train(str(out / "best.yaml"), output_dir=str(tmp_path / "final"))
    assert again == final(tmp_path / "final") and "accuracy" in again


def test_a_pruned_trial_stops_after_that_evaluation_with_a_complete_run_directory(tmp_path):
    import optuna

    out = tmp_path / "sweep"
    always = optuna.pruners.ThresholdPruner(lower=2.0)  # every accuracy (signed, < 2) is pruned at its first report
    summary = run_sweep(TEXT_TINY, space(tmp_path), 2, out=str(out), pruner=always,
                        overrides=[*FAST, "train.eval_every=2"])
    assert [r["state"] for r in summary["trials"]] == ["pruned", "pruned"] and summary["best"] is None
    assert not (out / "best.yaml").exists() and (out / "sweep.png").is_file()
    for t in sorted(out.glob("trial_*")):
        events = [json.loads(line) for line in (t / "metrics.jsonl").read_text().splitlines()]
        assert [e["step"] for e in events if e["kind"] == "eval"] == [2]  # stopped at its first eval, of 6 steps
        assert any(e["kind"] == "stop_requested" for e in events)
        assert final(t)["accuracy"] == summary["trials"][int(t.name[-3:])]["value"]
        assert (t / "checkpoints" / "best.json").is_file() and (t / "encoders" / "text").is_dir()


def test_jobs_run_trials_in_processes_sharing_one_study(tmp_path):
    out = tmp_path / "sweep"
    summary = run_sweep(TEXT_TINY, space(tmp_path), 2, jobs=2, out=str(out), overrides=FAST)
    assert sorted(r["run"] for r in summary["trials"]) == ["trial_000", "trial_001"]
    assert all(r["state"] == "complete" for r in summary["trials"])
    assert summary["best"]["value"] == max(final(t)["accuracy"] for t in out.glob("trial_*"))


@pytest.mark.parametrize("text, message", [
    ("optim.lr: {type: uniform, low: 0.1, high: 1}\n", r"optim.lr: needs type: float, int or categorical"),
    ("optim.lr: {type: float, low: 1.0, high: 0.1}\n", r"optim.lr: needs numbers low < high"),
    ("optim.lr: {type: float, low: 0.0, high: 0.1, log: true}\n", r"optim.lr: log: true needs low > 0"),
    ("train.batch_size: {type: int, low: 8, high: 32, choices: [8]}\n", r"train.batch_size: unknown field\(s\) \['choices'\]"),
    ("model.text.pooling: {type: categorical, choices: []}\n", r"model.text.pooling: categorical needs a non-empty"),
    ("[1, 2]\n", r"expected a YAML mapping"),
])
def test_space_format_errors_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_space(space(tmp_path, text))


@pytest.mark.parametrize("text, message", [
    ("optim.lrr: {type: float, low: 0.1, high: 1.0}\n", r"space.yaml: optim.lrr: unknown config key 'optim.lrr'"),
    ("train.batch_size: {type: categorical, choices: [big]}\n", r"space.yaml: train.batch_size: bad value"),
])
def test_a_space_key_the_config_cannot_take_is_named_before_any_trial(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        run_sweep(TEXT_TINY, space(tmp_path, text), 1, out=str(tmp_path / "sweep"), overrides=FAST)
    assert not list((tmp_path / "sweep").glob("trial_*"))


def test_a_space_over_a_component_option_is_accepted(tmp_path):
    got = load_space(space(tmp_path, "model.text.pooling: {type: categorical, choices: [cls, mean]}\n"
                                     "train.batch_size: {type: int, low: 8, high: 32, step: 8}\n"))
    assert got["model.text.pooling"]["choices"] == ["cls", "mean"] and got["train.batch_size"]["step"] == 8


def test_a_diverging_trial_fails_alone_and_the_sweep_goes_on(tmp_path):
    out = tmp_path / "sweep"
    summary = run_sweep(TEXT_TINY, space(tmp_path, "optim.lr: {type: categorical, choices: [1.0e+30]}\n"), 2,
                        out=str(out), overrides=[*FAST, "train.max_bad_steps=1", "train.grad_clip=0"])
    assert [r["state"] for r in summary["trials"]] == ["fail", "fail"] and summary["best"] is None
    assert (out / "sweep.csv").is_file() and not (out / "best.yaml").exists()


def test_sweep_refuses_a_used_out_directory(tmp_path):
    (tmp_path / "sweep" / "trial_000").mkdir(parents=True)
    assert main(["sweep", TEXT_TINY, "--space", space(tmp_path), "--trials", "1", "--out",
                 str(tmp_path / "sweep")]) == 2


class _Trial:
    """What ReportToTrial uses of an Optuna trial; prunes at the ``prune_at``-th report."""

    def __init__(self, prune_at):
        self.reports, self.attrs, self.prune_at = [], {}, prune_at

    def set_user_attr(self, key, value):
        self.attrs[key] = value

    def report(self, value, step):
        self.reports.append((value, step))

    def should_prune(self):
        return len(self.reports) >= self.prune_at


def test_report_to_trial_signs_by_direction_and_stops_the_trainer_after_that_evaluation(tmp_path):
    import torch
    import torch.nn.functional as F
    from torch import nn

    from mm_ptft.config import RunConfig, TrainConfig
    from mm_ptft.contracts import Task
    from mm_ptft.data.text import Records
    from mm_ptft.workflows.sweep import ReportToTrial
    from mm_ptft.train.trainer import Trainer

    class Toy(Task):
        main_metric, greater_is_better = "loss", False

        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 2)

        def forward(self, batch):
            return {"loss": F.cross_entropy(self.linear(batch["x"]), batch["labels"])}

        def build_metrics(self):
            return type("M", (), {"update": lambda s, o, b: None, "compute": lambda s: {}, "to": lambda s, d: s})()

    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))  # (N, 4)
    rows = Records([{"x": x[i], "labels": int(x[i, 0] > 0)} for i in range(32)])
    collate = lambda items: {"x": torch.stack([i["x"] for i in items]),  # noqa: E731
                             "labels": torch.tensor([i["labels"] for i in items])}
    cfg = RunConfig(task="toy", output_dir=str(tmp_path), train=TrainConfig(batch_size=8, max_steps=8, eval_every=2,
                                                                            report=False, device="cpu"))
    trial = _Trial(prune_at=2)
    cb = ReportToTrial(trial)
    trainer = Trainer(Toy(), cfg, rows, rows, collate, callbacks=[cb])
    results = trainer.fit()
    assert trial.attrs == {"metric": "loss", "greater_is_better": False}
    assert [s for _, s in trial.reports] == [2, 4] and trainer.step == 4 and cb.pruned  # of 8 steps
    assert trial.reports[-1][0] == -results["loss"]  # lower is better: reported negated, so the study maximises
    assert final_results(tmp_path) == results
