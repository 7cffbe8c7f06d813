"""report.md's child process (``ReportProcess``) and the one ``prestart`` starts ahead of a run (issue 31): the run
that follows takes it, a dead one is replaced, one never taken ends with its parent, and every step reaches it as a
line (a forked process holding its stdin does not keep it waiting)."""
import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mm_ptft.train import report
from mm_ptft.train.rundir import write_final

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def no_spare(monkeypatch):
    """Each test starts without a prestarted child (another test's run may have left one) and leaves none."""
    monkeypatch.setattr(report, "_spare", None)
    yield
    if report._spare is not None:
        report._spare.proc.kill()
        report._spare.proc.wait()
        report._spare.stderr.close()


def a_run_dir(path: Path) -> Path:
    """What a finished run leaves for its report: metrics.jsonl (train and eval rows) and final_metrics.json."""
    path.mkdir()
    rows = [{"step": s, "time": 0.0, "kind": "train", "loss": 2.0 / s} for s in (1, 2, 3)]
    rows.append({"step": 3, "time": 0.0, "kind": "eval", "accuracy": 0.75, "loss": 0.5})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "checkpoints" / "step_00000003").mkdir(parents=True)
    write_final(path, {"accuracy": 0.75, "loss": 0.5}, 3, path / "checkpoints" / "step_00000003")
    return path


def test_a_prestarted_child_is_the_one_that_writes_the_next_report(tmp_path):
    report.prestart()
    spare = report._spare
    report.prestart()  # one at a time: the waiting one is kept
    assert report._spare is spare and spare.proc.poll() is None
    run = a_run_dir(tmp_path / "run")
    rp = report.ReportProcess(run)
    assert rp.proc.pid == spare.proc.pid and report._spare is None
    rp.join()
    text = (run / "report.md").read_text()
    assert "| accuracy | 0.7500 |" in text and "(step 3, checkpoints/step_00000003)" in text
    for png in ("train_curves.png", "eval_curves.png"):
        assert (run / png).read_bytes()[:8] == PNG, png


def test_a_prestarted_child_that_died_is_replaced(tmp_path):
    report.prestart()
    dead = report._spare.proc
    dead.kill()
    dead.wait()
    run = a_run_dir(tmp_path / "run")
    rp = report.ReportProcess(run)
    assert rp.proc.pid != dead.pid
    rp.join()
    assert (run / "report.md").is_file()


def test_a_relative_run_dir_reaches_the_prestarted_child(tmp_path, monkeypatch):
    """The child was started elsewhere: it is given the run directory as an absolute path."""
    report.prestart()
    a_run_dir(tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    rp = report.ReportProcess(Path("run"))
    rp.join()
    assert (tmp_path / "run" / "report.md").is_file()


def test_cancel_ends_the_child_while_a_forked_process_holds_its_stdin(tmp_path):
    """A loader worker forked after the child started holds a copy of the child's stdin: the end of the pipe
    never comes, so ``cancel`` must say so in a line. The child ends without report.md."""
    report.prestart()
    run = a_run_dir(tmp_path / "run")
    rp = report.ReportProcess(run)
    holder = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
    holder.start()
    try:
        done = threading.Thread(target=rp.cancel, daemon=True)
        done.start()
        done.join(30)
        assert not done.is_alive(), "cancel waited for the end of a pipe a forked process still holds"
        assert rp.proc.returncode == 0 and not (run / "report.md").exists()
    finally:
        holder.kill()
        holder.join()


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not ended (a zombie, left for init to reap, has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_spare_no_run_takes_ends_with_its_parent():
    code = ("import sys; from mm_ptft.train import report; report.prestart(); "
            "print(report._spare.proc.pid, flush=True)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    pid = int(out.stdout.split()[0])
    deadline = time.time() + 30
    while _running(pid) and time.time() < deadline:
        time.sleep(0.1)
    alive = _running(pid)
    if alive:
        os.kill(pid, 9)
    assert not alive, "the prestarted child outlived the process that started it"


def test_a_train_run_draws_its_report_in_the_child_its_start_prestarted(topics_data, tmp_path, monkeypatch):
    from mm_ptft.run import load_config, train

    from mm_paths import TEXT_TINY

    spawned = []
    real = report._spawn
    monkeypatch.setattr(report, "_spawn", lambda *args: spawned.append(args) or real(*args))
    run = tmp_path / "run"
    train(load_config(TEXT_TINY, [f"output_dir={run}", f"data.train_file={topics_data['train_file']}",
                                  f"data.eval_file={topics_data['eval_file']}", "train.max_steps=2"]))
    assert spawned == [("--wait",)] and report._spare is None
    assert "## Final metrics" in (run / "report.md").read_text()
