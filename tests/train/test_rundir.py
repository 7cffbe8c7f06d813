"""Run directories as a contract (issue 14): another run in output_dir is refused or replaced on purpose;
a finished run resumed changes nothing; a resume with a changed config is refused or applies it; a copied
run predicts by itself; encoders come from the best checkpoint; stale temp files go; a full disk is named."""
import json
import shutil
import time

import pytest
import torch
from safetensors.torch import load_file

from mm_ptft.cli import main
from mm_ptft.config import ConfigError
from mm_ptft.run import evaluate, load_config, predict, train
from mm_ptft.train import checkpoint as ckpt
from mm_ptft.train.rundir import final_record, final_results, write_final

from mm_paths import TEXT_TINY

TEXTS = ["the striker scored twice in the final", "shares fell after the earnings call", "a new chip doubles speed"]


def cfg_for(data, out, *extra):
    return load_config(TEXT_TINY, [f"output_dir={out}", f"data.train_file={data['train_file']}",
                                   f"data.eval_file={data['eval_file']}", "train.batch_size=32", "train.max_steps=6",
                                   "train.eval_every=2", "train.log_every=1", "train.report=false", *extra])


@pytest.fixture(scope="module")
def finished(topics_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    results = train(cfg_for(topics_data, run))
    return run, results


def _snapshot(run):
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_a_second_run_into_a_finished_run_is_refused(finished, topics_data, capsys):
    run, _ = finished
    before = _snapshot(run)
    with pytest.raises(ConfigError, match=r"already holds a run .*train.resume=true.*train.overwrite_output_dir=true"):
        train(cfg_for(topics_data, run, "optim.lr=0.01"))
    assert main(["train", TEXT_TINY, f"output_dir={run}", "train.max_steps=2"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert _snapshot(run) == before  # nothing written: no tokenizer, config or checkpoint replaced


def test_overwrite_replaces_the_previous_run_entirely(topics_data, tmp_path):
    run = tmp_path / "run"
    train(cfg_for(topics_data, run, "train.max_steps=6"))
    assert (run / "checkpoints" / "step_00000006").is_dir()
    train(cfg_for(topics_data, run, "train.max_steps=2", "train.overwrite_output_dir=true"))
    steps = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
    assert steps == ["step_00000002"]  # the old run's step_6 cannot be resumed by mistake
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 2


def test_resuming_a_finished_run_changes_nothing(finished, topics_data):
    run, results = finished
    before = _snapshot(run)
    for extra in (["train.max_steps=6"], ["train.max_steps=3"]):  # at, and below, the checkpoint's step
        again = train(cfg_for(topics_data, run, "train.resume=true", *extra))
        assert again == pytest.approx(results) and isinstance(again, dict)
    assert _snapshot(run) == before
    assert final_results(run) == pytest.approx(results)


def test_resume_with_a_changed_config_is_refused_or_applied(topics_data, tmp_path):
    run = tmp_path / "run"
    train(cfg_for(topics_data, run, "train.max_steps=4", "sched.name=constant", "sched.warmup_steps=0"))
    resume = ["train.resume=true", "train.max_steps=6", "sched.name=constant", "sched.warmup_steps=0"]
    with pytest.raises(ConfigError, match=r"optim.lr: 0.001 -> 0.5"):
        train(cfg_for(topics_data, run, *resume, "optim.lr=0.5"))
    train(cfg_for(topics_data, run, *resume, "optim.lr=0.5", "train.on_config_change=new"))
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["lr"] for r in rows if r["kind"] == "train"}
    assert lrs[4] == pytest.approx(0.001) and lrs[5] == pytest.approx(0.5) and lrs[6] == pytest.approx(0.5)
    assert any(r["kind"] == "config_change" and r["optim.lr"] == 0.5 for r in rows)
    assert "lr: 0.5" in (run / "config.yaml").read_text()


def test_a_copied_run_predicts_by_itself(finished, tmp_path):
    run, _ = finished
    original = tmp_path / "original"
    shutil.copytree(run, original)  # a run we may delete
    expected = predict(original, TEXTS)
    text = (original / "config.yaml").read_text()
    assert "${output_dir}/tokenizer" in text and str(run) + "/tokenizer" not in text
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(original, copy)
    shutil.rmtree(original)
    assert predict(copy, TEXTS) == expected


def test_encoders_come_from_the_best_checkpoint(topics_data, tmp_path):
    run = tmp_path / "run"
    # "best" = the highest eval loss: an early step, not the last weights
    train(cfg_for(topics_data, run, "train.metric_for_best=loss", "train.greater_is_better=true"))
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    assert best["step"] < 6
    source = json.loads((run / "encoders" / "text" / "source.json").read_text())
    assert source["checkpoint"] == f"checkpoints/{best['path']}"
    saved = load_file(str(run / "encoders" / "text" / "model.safetensors"))
    weights = load_file(str(run / "checkpoints" / best["path"] / "model.safetensors"))
    last = load_file(str(run / "checkpoints" / "step_00000006" / "model.safetensors"))
    key = "embeddings.word_embeddings.weight"
    assert torch.equal(saved[key], weights["encoder.model." + key])
    assert not torch.equal(saved[key], last["encoder.model." + key])


def test_stale_temp_checkpoints_are_removed_on_the_next_start(finished, topics_data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished[0], run)
    stale = run / "checkpoints" / ".tmp_step_00000008_4242"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    (run / "checkpoints" / "best.json.tmp").write_text("{")
    train(cfg_for(topics_data, run, "train.resume=true", "train.max_steps=8"))
    assert not stale.exists() and not (run / "checkpoints" / "best.json.tmp").exists()


def test_a_full_disk_names_the_directory_and_what_was_kept(topics_data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    real_save, calls = torch.save, []

    def full_disk(obj, f, *a, **kw):
        calls.append(f)
        if len(calls) > 1:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    with pytest.raises(ckpt.CheckpointError, match=r"could not write checkpoint step_00000004 in .*checkpoints "
                                                     r"\(RuntimeError: .*unexpected pos.*Kept: step_00000002"):
        train(cfg_for(topics_data, run))
    assert not list((run / "checkpoints").glob(".tmp_*"))
    assert ckpt.verify(run / "checkpoints" / "step_00000002") is None


def test_final_metrics_name_the_step_and_checkpoint_they_describe(finished, tmp_path):
    """final_metrics.json = the last evaluation + its step + the checkpoint holding those weights (re-evaluating that
    checkpoint gives the metrics back); ``final_results`` strips the bookkeeping (what ``train`` returned)."""
    from mm_ptft.train.report import write_report

    run, results = finished
    record = final_record(run)
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"]
    assert record["step"] == evals[-1]["step"] == 6 and record["checkpoint"] == "checkpoints/step_00000006"
    assert json.loads((run / record["checkpoint"] / "meta.json").read_text())["step"] == 6
    assert final_results(run) == results and not {"step", "checkpoint"} & set(results)
    again = evaluate(run, checkpoint=str(run / record["checkpoint"]))
    assert again == pytest.approx(results, rel=1e-5)
    report = write_report(tmp_path / "copy" if shutil.copytree(run, tmp_path / "copy") else run).read_text()
    assert "## Final metrics (step 6, checkpoints/step_00000006)" in report and "| step |" not in report
    write_final(tmp_path, {"accuracy": 0.5}, 3, tmp_path / "checkpoints" / "step_00000003")  # not kept (keep_last)
    assert final_record(tmp_path) == {"step": 3, "checkpoint": None, "accuracy": 0.5}


def test_timing_event_splits_the_wall_time_into_phases(finished):
    """One ``timing`` event at the end of metrics.jsonl (also in final_metrics.json, not in the results): start-up,
    train, eval, finish, non-negative, summing to the wall time since the process started (psutil's create time:
    an independent clock, 1 s resolution), with the phase boundaries where the logged rows put them."""
    import psutil

    run, results = finished
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    timing = rows[-1]
    assert timing["kind"] == "timing" and [r["kind"] for r in rows].count("timing") == 1
    split = {k: timing[k] for k in ("startup_s", "train_s", "eval_s", "finish_s")}
    assert all(v >= 0 for v in split.values()) and split["train_s"] > 0 and split["eval_s"] > 0, split
    assert sum(split.values()) == pytest.approx(timing["wall_s"], abs=0.005)
    assert timing["wall_s"] <= time.time() - psutil.Process().create_time() + 1.0
    origin = timing["time"] - timing["wall_s"]
    first_train = next(r for r in rows if r["kind"] == "train")
    assert origin + split["startup_s"] <= first_train["time"] + 0.01  # training began before its first log
    evals_logged = sum(r["eval_time_s"] for r in rows if r["kind"] == "train")  # the evaluations at steps 2 and 4
    assert split["eval_s"] > evals_logged  # … and the final one at step 6
    assert final_record(run)["timing"] == {**split, "wall_s": timing["wall_s"]}
    assert "timing" not in results and final_results(run) == results


def test_process_start_matches_psutil():
    import psutil

    from mm_ptft.train.phases import process_start

    assert abs(process_start() - psutil.Process().create_time()) < 1.5  # psutil's boot time is whole seconds
