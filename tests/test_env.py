"""mm_ptft.env: the tested set, pairing messages, the torchaudio guard (a real subprocess with a torchaudio
that cannot load), precision ``auto``, and ``mm-ptft doctor``."""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Optional

import pytest
from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from mm_ptft import env
from mm_ptft.cli import main

from mm_paths import ROOT, TEXT_TINY

LOCK = Path(ROOT) / "requirements" / "tested.txt"
SYMBOL = "torch_exception_get_what_without_backtrace"


def _lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;#]+)", line)
        if m:
            pins[_norm(m.group(1))] = m.group(2)
    return pins


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_tested_set_is_the_lock_and_satisfies_pyproject() -> None:
    pins = _lock_pins()
    for dist, v in env.TESTED.items():
        assert pins[dist].split("+")[0] == v, f"env.TESTED[{dist!r}]={v} but {LOCK.name} pins {pins[dist]}"
    project = tomllib.loads((Path(ROOT) / "pyproject.toml").read_text())["project"]
    for req in map(Requirement, [*project["dependencies"], *project["optional-dependencies"]["dev"]]):
        if req.marker is not None and not req.marker.evaluate():
            continue  # e.g. tomli, for Python < 3.11 only
        name = _norm(req.name)
        assert name in pins, f"{name} (pyproject.toml) is not pinned in {LOCK}"
        assert req.specifier.contains(pins[name].split("+")[0]), f"{LOCK.name} pins {name}=={pins[name]}, outside {req}"


def _loader_error() -> OSError:
    """The shape of torch's load_library failure: an OSError raised from the dlopen OSError."""
    try:
        try:
            raise OSError(f"/venv/torchaudio/lib/libtorchaudio.so: undefined symbol: {SYMBOL}")
        except OSError as inner:
            raise OSError("Could not load this library: /venv/torchaudio/lib/libtorchaudio.so") from inner
    except OSError as err:
        return err


def test_pairing_problem_names_both_versions_the_cause_and_the_fix(monkeypatch) -> None:
    versions = {"torchaudio": "2.11.1", "torch": "2.11.0"}
    monkeypatch.setattr(env, "version", lambda dist: versions.get(dist))
    line = env.pairing_problem("torchaudio", _loader_error())
    assert "torchaudio 2.11.1 cannot load with torch 2.11.0" in line
    assert f"undefined symbol: {SYMBOL}" in line and "\n" not in line
    assert "pip install 'torch==2.14.1' 'torchvision==0.29.1' 'torchaudio==2.11.1'" in line


def test_torchvision_pairing_names_the_matching_release(monkeypatch) -> None:
    versions = {"torch": "2.14.1", "torchvision": "0.28.0"}
    monkeypatch.setattr(env, "version", lambda dist: versions.get(dist))
    assert "pip install 'torchvision==0.29.*'" in env.torchvision_pairing()
    versions["torchvision"] = "0.29.1"
    assert env.torchvision_pairing() is None


def test_precision_auto_follows_the_hardware(monkeypatch) -> None:
    monkeypatch.setattr(env, "cpu_native_bf16", lambda: False)
    assert env.resolve_precision("auto", "cpu") == "fp32"
    with pytest.warns(UserWarning, match="emulates it"):
        assert env.resolve_precision("bf16", "cpu") == "bf16"  # honoured, with the cost said once
    monkeypatch.setattr(env, "cpu_native_bf16", lambda: True)
    assert env.resolve_precision("auto", "cpu") == "bf16"
    assert env.resolve_precision("fp32", "cpu") == "fp32"


def test_doctor_on_this_machine(capsys) -> None:
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert f"torch {env.version('torch')}" in out and "torchaudio" in out and "cpu:" in out
    assert "ok   torchvision ops" in out and "ok   flashlight-text CTC decoder" in out
    assert "all required pieces load and run" in out


# ---- a torchaudio that cannot load: a package of that name earlier on the path whose import fails
# the way a binary built for another torch does ----------------------------------------------------

BROKEN = f'''raise OSError("Could not load this library: libtorchaudio.so") from OSError(
    "libtorchaudio.so: undefined symbol: {SYMBOL}")
'''


@pytest.fixture()
def broken_env(tmp_path) -> dict[str, str]:
    (tmp_path / "shadow" / "torchaudio").mkdir(parents=True)
    (tmp_path / "shadow" / "torchaudio" / "__init__.py").write_text(BROKEN)
    path = os.pathsep.join([str(tmp_path / "shadow"), ROOT, os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


def test_broken_torchaudio_leaves_text_working_and_audio_says_why(broken_env) -> None:
    script = textwrap.dedent('''
        import mm_ptft
        from transformers import BertConfig, BertModel
        import torch
        m = BertModel(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=16))
        print("text ok", tuple(m(torch.tensor([[1, 2, 3]])).last_hidden_state.shape))
        from mm_ptft.env import EnvironmentProblem, require_torchaudio
        try:
            require_torchaudio("audio resampling")
        except EnvironmentProblem as err:
            print("audio:", err)
    ''')
    out = subprocess.run([sys.executable, "-c", script], env=broken_env, capture_output=True, text=True, check=True)
    assert "text ok (1, 3, 8)" in out.stdout
    assert "audio: audio resampling needs torchaudio, which cannot load here: torchaudio" in out.stdout
    assert f"undefined symbol: {SYMBOL}" in out.stdout and "mm-ptft doctor" in out.stdout


def test_doctor_and_train_with_a_broken_torchaudio(broken_env, tmp_path) -> None:
    doctor = subprocess.run([sys.executable, "-m", "mm_ptft.cli", "doctor"], env=broken_env, capture_output=True,
                            text=True)
    assert doctor.returncode == 1, doctor.stdout + doctor.stderr
    assert re.search(r"FAIL torchaudio: .*torchaudio \S+ cannot load with torch \S+ \(undefined symbol: "
                     + SYMBOL + r"\)\. Fix: pip install 'torch==", doctor.stdout), doctor.stdout
    assert "Traceback" not in doctor.stdout + doctor.stderr
    train = subprocess.run([sys.executable, "-m", "mm_ptft.cli", "train", TEXT_TINY, f"output_dir={tmp_path / 'r'}",
                            "train.max_steps=2", "train.report=false"], env=broken_env, capture_output=True, text=True,
                           cwd=ROOT)
    assert train.returncode == 0, train.stderr[-2000:]
    assert (tmp_path / "r" / "final_metrics.json").exists()


def test_doctor_names_the_matching_torchvision_only_when_its_ops_fail(monkeypatch) -> None:
    versions = {"torch": "2.15.0", "torchvision": "0.29.2"}
    monkeypatch.setattr(env, "version", lambda dist: versions.get(dist, "1.0"))
    vision = next(c for c in env.compiled_checks() if c.name == "torchvision ops")
    assert vision.ok and "pip install" not in vision.detail  # older minor, measured working: no complaint

    def broken() -> str:
        raise RuntimeError("operator torchvision::nms does not exist")

    monkeypatch.setattr(env, "_torchvision_ops", broken)
    vision = next(c for c in env.compiled_checks() if c.name == "torchvision ops")
    assert not vision.ok and "torchvision::nms does not exist" in vision.detail
    assert "pip install 'torchvision==0.30.*'" in vision.detail


def test_thread_plan_divides_usable_cpus_by_local_ranks_and_lets_omp_and_train_threads_win(monkeypatch):
    from mm_ptft import env as E

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(E, "cpu_count", lambda: 16)
    monkeypatch.setattr(E, "cgroup_cpus", lambda: None)
    monkeypatch.setattr(E, "busy_at_start", lambda: 0)
    assert E.thread_plan(0, 4).threads == 4 and E.thread_plan(0, 32).threads == 1 and E.thread_plan(0, 4).auto
    monkeypatch.setattr(E, "cgroup_cpus", lambda: 6.5)  # a container allowed 6.5 CPUs of the 16
    assert E.usable_cpus() == 6 and E.thread_plan(0, 2).threads == 3
    assert E.thread_plan(5, 2) == (5, "train.threads=5", False)
    assert E.thread_plan(5, 2, recorded=3).threads == 5  # explicit wins over a checkpoint's record
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    n, why, auto = E.thread_plan(0, 1, recorded=3)
    assert n == 2 and "OMP_NUM_THREADS=2" in why and "wins" in why and not auto
    assert "intra-op threads" in E.thread_line() and "load average" in E.thread_line()


def test_a_loaded_shared_machine_gets_the_cpus_others_leave_and_a_resume_the_recorded_count(monkeypatch):
    """By hand, 16 CPUs all in the mask, 100 ticks/s, a 2 s window since mm_ptft was imported in which this process
    used 1.5 CPUs (its own threads: not counted) and the machine 10.9: others 9.4 → 9 busy → (16 - 9) // 2 ranks = 3,
    whatever the (lagging) load average says; others 9.7 → 10 busy (half a CPU counts) → 6 for 1 rank; 40 → 15 busy →
    1 (never 0); a mask or a cgroup quota narrower than the machine: the machine's figure says nothing about them (no
    cut). A checkpoint's recorded count wins; the figure is read once per process; without /proc, the load average."""
    from mm_ptft import env as E

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(E, "cgroup_cpus", lambda: None)
    monkeypatch.setattr(E, "cpu_count", lambda: 16)
    monkeypatch.setattr(E.os, "cpu_count", lambda: 16)
    monkeypatch.setattr(E, "CLOCK_TICKS", 100)
    monkeypatch.setattr(E.os, "getloadavg", lambda: (0.0, 5.0, 1.0))  # ignored where /proc speaks
    pid = os.getpid()
    monkeypatch.setattr(E, "PROCESS_START", E.CpuSnapshot(10.0, 50_000, 300, pid))

    def others_use(cpus: float) -> None:  # the window's end: this process 1.5 CPUs, the others ``cpus``, 2 s
        monkeypatch.setattr(E, "cpu_snapshot", lambda: E.CpuSnapshot(12.0, 50_000 + round(200 * (cpus + 1.5)),
                                                                     300 + 300, pid))

    others_use(9.4)
    E.busy_at_start.cache_clear()
    n, why, auto = E.thread_plan(0, 2)  # the default: sized to what others use now
    assert (n, auto) == (3, True) and "9 busy (CPU use of other processes, 9.40 CPUs over 2.0 s)" in why
    kept = E.thread_plan(0, 2, recorded=8)
    assert kept.threads == 8 and kept.auto and "checkpoint records" in kept.why
    others_use(40.0)
    assert E.thread_plan(0, 2).threads == 3  # read once per process: this process's runs size alike
    E.busy_at_start.cache_clear()
    assert E.thread_plan(0, 1).threads == 1
    others_use(9.7)
    assert E.busy_cpus() == 10 and E.other_cpu_use() == pytest.approx(9.7)
    monkeypatch.setattr(E.os, "cpu_count", lambda: 64)  # a 16-CPU affinity mask on a 64-CPU host
    assert E.busy_cpus() == 0
    monkeypatch.setattr(E.os, "cpu_count", lambda: 16)

    monkeypatch.setattr(E, "PROCESS_START", None)  # no /proc (not Linux): the 1-minute load average, whole CPUs
    monkeypatch.setattr(E.os, "getloadavg", lambda: (9.7, 5.0, 1.0))
    E.busy_at_start.cache_clear()
    n, why, _ = E.thread_plan(0, 2)
    assert n == 3 and "9 busy (load average)" in why
    E.busy_at_start.cache_clear()  # the next test's runs measure the real figure again


def test_a_window_too_short_or_too_long_is_measured_afresh(monkeypatch):
    """Asked 0.1 s after the import (a library user) or 5 minutes after it (a notebook): a fresh window of
    MIN_WINDOW_S, slept once; by hand 0.3 s in which others used 0.3 s of CPU → 1.0 CPUs."""
    from mm_ptft import env as E

    monkeypatch.setattr(E, "CLOCK_TICKS", 100)
    pid, slept = os.getpid(), []
    for start in (99.9, -200.0):
        monkeypatch.setattr(E, "PROCESS_START", E.CpuSnapshot(start, 0, 0, pid))
        ends = iter([E.CpuSnapshot(100.0, 5_000, 40, pid), E.CpuSnapshot(100.3, 5_040, 50, pid)])
        monkeypatch.setattr(E, "cpu_snapshot", ends.__next__)
        monkeypatch.setattr(E.time, "sleep", slept.append)
        assert E.other_cpu_use() == pytest.approx(1.0)
    assert slept == [E.MIN_WINDOW_S] * 2


def _spin(seconds: float) -> subprocess.Popen:
    """A python busy loop in another process for ``seconds`` (0: until killed); it prints once it spins."""
    code = ("import time, sys\nt = time.monotonic()\nprint('go', flush=True)\n"
            f"while {seconds} == 0 or time.monotonic() - t < {seconds}: pass")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "go"
    return proc


def _process_cpu(pids: Optional[set[int]] = None) -> dict[int, float]:
    """CPU seconds (user + system) of each process now, through psutil (the reference: per process, not /proc/stat)."""
    psutil = pytest.importorskip("psutil")
    out = {}
    for proc in psutil.process_iter():
        if pids is None or proc.pid in pids:
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                out[proc.pid] = t.user + t.system
    return out


def test_a_process_busy_now_is_counted_busy(monkeypatch):
    """A busy loop running through the window: what it used over the window (psutil's figure for it) is in the
    measured use of others (others can only add), and on this machine it takes a CPU from the sizing."""
    from mm_ptft import env as E

    if E.cgroup_cpus() is not None or E.cpu_count() != os.cpu_count() or E.PROCESS_START is None:
        pytest.skip("the machine-wide figure speaks only for a full affinity mask without a quota, on Linux")
    spin = _spin(0)
    try:
        before, start = _process_cpu({spin.pid}), E.cpu_snapshot()
        time.sleep(0.6)
        after, others = _process_cpu({spin.pid}), E.other_cpu_use(start)
        window = E.cpu_snapshot().time - start.time
        monkeypatch.setattr(E, "PROCESS_START", start)
        busy = E.busy_cpus()
    finally:
        spin.kill()
        spin.wait()
    share = (after[spin.pid] - before[spin.pid]) / window
    assert others >= share - 0.15, (others, share)  # a loaded machine gives the loop less, and others use the rest
    assert busy >= min(1, E.cpu_count() - 1)


def test_a_run_just_finished_leaves_the_load_average_high_but_no_busy_cpus(monkeypatch):
    """Two busy loops that used 2 CPUs and exited just before the window (what a just-finished run or fold leaves:
    a 1-minute load average of about 2, which the old rule read as 2 busy CPUs) add nothing to the figure: it matches
    what the processes alive through the window used (psutil, per process), and on a quiet machine the sizing takes
    every usable CPU."""
    from mm_ptft import env as E

    if E.cgroup_cpus() is not None or E.cpu_count() != os.cpu_count() or E.PROCESS_START is None:
        pytest.skip("the machine-wide figure speaks only for a full affinity mask without a quota, on Linux")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(E.os, "getloadavg", lambda: (2.0, 1.0, 0.5))  # the lagging figure such a run leaves
    loops = [_spin(1.0), _spin(1.0)]
    for p in loops:
        p.wait()
    me, seen = os.getpid(), []
    for _ in range(3):  # processes that start and end inside a window are in /proc/stat but not in the reference:
        before, start = _process_cpu(), E.cpu_snapshot()  # where other jobs churn, one of three windows is clean
        time.sleep(0.6)
        after, now = _process_cpu(), E.cpu_snapshot()
        others = E.other_cpu_use(start)
        reference = sum(after[p] - before[p] for p in after.keys() & before.keys() if p != me) / (now.time - start.time)
        seen.append((others, reference))
        if reference - 0.15 <= others <= reference + 0.5:  # the loops' 2 CPUs are not in it
            break
    else:
        pytest.fail(f"others' CPU use vs the per-process reference, per window: {seen}")
    monkeypatch.setattr(E, "PROCESS_START", start)
    E.busy_at_start.cache_clear()
    plan = E.thread_plan(0, 1)
    E.busy_at_start.cache_clear()
    if reference < 0.2:  # the machine was otherwise quiet
        assert plan.threads == E.usable_cpus(), (plan, others, reference)


def test_train_threads_is_range_checked(tmp_path):
    from mm_ptft.config import ConfigError
    from mm_ptft.run import load_config

    from mm_paths import TEXT_TINY

    with pytest.raises(ConfigError, match="train.threads"):
        load_config(TEXT_TINY, ["train.threads=-1", f"output_dir={tmp_path}"])
