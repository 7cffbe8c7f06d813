"""Trackers (``train.report_to``): one tiny text run reports to metrics.jsonl, TensorBoard, W&B (offline) and
MLflow (a local file store), and what each stored is read back with that tool's own reader, not ours. Nothing
here reaches a server."""
import json
import struct
from pathlib import Path

import pytest

from mm_ptft.config import ConfigError, RunConfig, TrainConfig
from mm_ptft.run import load_config, train
from mm_ptft.train.logging import RunLogger
from mm_ptft.train.trackers import Tracker
from mm_ptft.train.trainer import Trainer
from mm_ptft.train.rundir import final_results

from mm_paths import TEXT_TINY
from test_callbacks import Linear, collate, data


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """W&B offline and silent, MLflow on a file store in tmp: no network, no login prompt."""
    for key in ("WANDB_PROJECT", "WANDB_NAME", "WANDB_DIR", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this switch
    return uri


def wandb_records(run_file: Path):
    """Every record of an offline run's ``.wandb`` file: a LevelDB-style log (32 KiB blocks, 7-byte chunk
    headers: crc32c, length, type FULL=1/FIRST=2/MIDDLE=3/LAST=4) of ``wandb_internal_pb2.Record`` messages."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw, block = run_file.read_bytes(), 32768
    assert raw[:4] == b":W&B"
    pos, chunk, records = 7, b"", []
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if kind == 0 and n == 0:
            break
        chunk, pos = chunk + raw[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def test_one_run_reports_the_same_rows_to_every_tracker(topics_data, offline, tmp_path):
    pytest.importorskip("wandb")  # the dev extra installs both (mm_ptft[trackers])
    pytest.importorskip("mlflow")
    out = tmp_path / "run"
    cfg = load_config(TEXT_TINY, [f"output_dir={out}", f"data.train_file={topics_data['train_file']}",
                                  f"data.eval_file={topics_data['eval_file']}", "train.batch_size=16",
                                  "train.max_steps=6", "sched.warmup_steps=0", "train.log_every=2", "train.eval_every=3", "train.report=false",
                                  "train.report_to=[jsonl,tensorboard,wandb,mlflow]"])
    final = train(cfg)
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}
    assert sorted(losses) == [2, 4, 6]
    assert final == final_results(out) and "accuracy" in final

    # TensorBoard, through tensorboard's own reader
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tb = {e.step: e.value for e in events.Scalars("train/loss")}
    assert tb.keys() == losses.keys() and all(tb[s] == pytest.approx(losses[s], rel=1e-6) for s in losses)

    # W&B: the offline run's .wandb file (in <run dir>/wandb by default), parsed with wandb's protobufs
    (run_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_records(run_file)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.display_name == "run" and run.project == "mm_ptft"
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert config["optim"]["lr"] == cfg.optim.lr and config["task"] == "text_classification"
    history = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
            history[r.history.step.num] = items
    wb = {step: items["train/loss"] for step, items in history.items() if "train/loss" in items}
    assert wb == pytest.approx(losses)
    assert history[6]["eval/accuracy"] == pytest.approx(final["accuracy"])
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update({"/".join(u.nested_key) or u.key: json.loads(u.value_json) for u in r.summary.update})
    assert summary["final/accuracy"] == pytest.approx(final["accuracy"])
    assert any(r.WhichOneof("record_type") == "exit" and r.exit.exit_code == 0 for r in records)

    # MLflow, through its own client on the file store
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=offline)
    (ml_run,) = client.search_runs([client.get_experiment_by_name("mm_ptft").experiment_id])
    assert ml_run.info.run_name == "run" and ml_run.info.status == "FINISHED"
    history = {m.step: m.value for m in client.get_metric_history(ml_run.info.run_id, "train/loss")}
    assert history == losses  # step by step, the same floats
    params = ml_run.data.params
    assert float(params["optim.lr"]) == cfg.optim.lr and params["train.max_steps"] == "6"
    assert ml_run.data.metrics["final/accuracy"] == pytest.approx(final["accuracy"])


def toy_cfg(out, **train):
    return RunConfig(task="toy", output_dir=str(out), train=TrainConfig(batch_size=8, max_steps=4, eval_every=2,
                                                                         log_every=1, report=False, device="cpu",
                                                                         **train))


def test_report_to_nothing_still_writes_metrics_jsonl(tmp_path):
    """metrics.jsonl is part of the run directory: ``report_to: []`` turns off TensorBoard, not it."""
    Trainer(Linear(), toy_cfg(tmp_path, report_to=[]), data(), data(8), collate).fit()
    assert [json.loads(ln)["step"] for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()
            if json.loads(ln)["kind"] == "train"] == [1, 2, 3, 4]
    assert not (tmp_path / "tensorboard").exists()


def test_a_failed_run_ends_its_tracker_runs_as_failed(tmp_path, offline):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from mm_ptft.train.trainer import NonFiniteError

    cfg = toy_cfg(tmp_path / "run", report_to=["mlflow"], max_bad_steps=1)
    with pytest.raises(NonFiniteError):
        Trainer(Linear(nan_calls={2}), cfg, data(), data(8), collate).fit()
    client = MlflowClient(tracking_uri=offline)
    (ml_run,) = client.search_runs([client.get_experiment_by_name("mm_ptft").experiment_id])
    assert ml_run.info.status == "FAILED"
    assert [m.step for m in client.get_metric_history(ml_run.info.run_id, "train/loss")] == [1]


def test_unknown_tracker_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.report_to\[1\]='neptune'.*mlflow.*wandb"):
        Trainer(Linear(), toy_cfg(tmp_path, report_to=["jsonl", "neptune"]), data(), None, collate).fit()
    assert not (tmp_path / "metrics.jsonl").exists()  # refused before anything ran


def test_missing_tracker_library_names_the_key_and_the_extra(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"train\.report_to\[0\]='wandb'.*mm_ptft\[trackers\]"):
        Trainer(Linear(), toy_cfg(tmp_path, report_to=["wandb"]), data(), None, collate).fit()


def test_evaluating_a_run_needs_no_tracker_library(tmp_path, monkeypatch):
    """A run trained with report_to: [wandb] is evaluated where wandb is not installed."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    trainer = Trainer(Linear(), toy_cfg(tmp_path, report_to=["wandb"]), None, data(8), collate)
    assert "loss" in trainer.evaluate()


def test_only_the_main_process_reports(tmp_path):
    class Spy(Tracker):
        calls = []

        def start(self, run_dir, config, start_step):
            self.calls.append("start")

        def log(self, record):
            self.calls.append(record["kind"])

        def finish(self, results):
            self.calls.append("finish")

    other_rank = RunLogger(tmp_path, False, 10, trackers=[Spy()], config={})
    other_rank.log(1, "train", {"loss": 1.0})
    other_rank.close({"accuracy": 1.0})
    assert Spy.calls == []
    main = RunLogger(tmp_path, True, 10, trackers=[Spy()], config={})
    main.log(1, "train", {"loss": 1.0})
    main.close({"accuracy": 1.0})
    main.close({"accuracy": 1.0})  # closing twice finishes once
    assert Spy.calls == ["start", "train", "finish"]


def test_mm_ptft_list_shows_callbacks_and_trackers():
    from mm_ptft.run.components import load_components
    from mm_ptft.registry import all_registries

    load_components()
    regs = all_registries()
    assert "early_stopping" in regs["callback"]
    assert set(regs["tracker"].names()) >= {"jsonl", "mlflow", "tensorboard", "wandb"}


def _tiny(topics_data, out, *extra):
    return load_config(TEXT_TINY, [f"output_dir={out}", f"data.train_file={topics_data['train_file']}",
                                   f"data.eval_file={topics_data['eval_file']}", "train.max_steps=2",
                                   "train.report=false", "train.device=cpu", *extra])


@pytest.mark.parametrize("existing", [False, True])
def test_a_tracker_that_will_not_start_is_one_line_and_leaves_output_dir_as_it_was(topics_data, tmp_path, monkeypatch,
                                                                                   existing):
    """MLflow 3 refuses a ``file:///`` store (unless MLFLOW_ALLOW_FILE_STORE): one line naming the tracker and the
    setting, and nothing of the failed run left behind, so the rerun trains."""
    pytest.importorskip("mlflow")
    from mm_ptft.train.trackers import TrackerError

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    out = tmp_path / "run"
    if existing:  # a directory the user made, with a file of theirs: kept as it was
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    with pytest.raises(TrackerError) as err:
        train(_tiny(topics_data, out, "train.report_to=[mlflow]"))
    line = str(err.value)
    assert "\n" not in line and "train.report_to[0]='mlflow'" in line and "MLFLOW_TRACKING_URI='file://" in line
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] if existing else not out.exists()
    results = train(_tiny(topics_data, out, "train.report_to=[]"))  # the rerun: not "already holds a run"
    assert "accuracy" in results and (out / "final_metrics.json").is_file()


SLOW_TENSORBOARD = '''
import json, sys, threading, time
sys.path[:0] = {paths!r}
seen = {{}}

class SlowTensorBoard:  # a finder that makes the tensorboard import take 3 s, and notes which thread asked
    def find_spec(self, name, path=None, target=None):
        if name == "torch.utils.tensorboard" and "thread" not in seen:
            seen["thread"] = threading.current_thread().name
            time.sleep(3)
        return None

sys.meta_path.insert(0, SlowTensorBoard())
from mm_ptft.train.callbacks import Callback
from mm_ptft.train.trainer import Trainer
from test_callbacks import Linear, collate, data
from test_trackers import toy_cfg

class FirstStep(Callback):
    def on_step_end(self, trainer):
        seen.setdefault("imported_at_step_1", "torch.utils.tensorboard" in sys.modules)

Trainer(Linear(), toy_cfg({out!r}, report_to=["tensorboard"]), data(), data(8), collate, callbacks=[FirstStep()]).fit()
print(json.dumps(seen))
'''


def test_tensorboard_starts_off_the_critical_path_and_keeps_every_event(tmp_path):
    """With the tensorboard import made 3 s slow, the fit's first step runs before it is imported (a background
    thread imports it, not the main one), and every record still reaches the events file (tensorboard's own reader):
    the ones logged meanwhile wait for the writer."""
    import subprocess
    import sys

    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    here = Path(__file__).resolve().parent
    code = SLOW_TENSORBOARD.format(paths=[str(here), str(here.parent)], out=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"thread": "mm_ptft-tensorboard", "imported_at_step_1": False}
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    rows = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for kind, name in (("train", "loss"), ("eval", "loss")):
        logged = {r["step"]: r[name] for r in rows if r["kind"] == kind}
        tb = {e.step: e.value for e in events.Scalars(f"{kind}/{name}")}
        assert sorted(logged) == ([1, 2, 3, 4] if kind == "train" else [2, 4])
        assert tb.keys() == logged.keys() and all(tb[s] == pytest.approx(logged[s], rel=1e-6) for s in logged)


@pytest.mark.parametrize("fails", [1, 2])
def test_a_tensorboard_start_that_fails_in_the_background_is_retried_then_named(tmp_path, monkeypatch, fails):
    """The background open failing once (e.g. the thread's import machinery): retried at the first log, the events
    all there. Failing again: the run stops with the one TrackerError line naming train.report_to."""
    from mm_ptft.train import trackers as T

    real, calls = T.TensorBoardTracker._open, []

    def flaky(self):
        calls.append(1)
        if len(calls) <= fails:
            raise OSError("No space left on device")
        return real(self)

    monkeypatch.setattr(T.TensorBoardTracker, "_open", flaky)
    cfg = toy_cfg(tmp_path, report_to=["tensorboard"])
    if fails == 2:
        with pytest.raises(T.TrackerError, match=r"train\.report_to\[0\]='tensorboard': the tracker did not start"
                                                 r".*OSError: No space left on device"):
            Trainer(Linear(), cfg, data(), data(8), collate).fit()
        return
    Trainer(Linear(), cfg, data(), data(8), collate).fit()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4] and len(calls) == 2
