"""mm_ptft.env: the tested set, pairing messages, the torchaudio guard (a real subprocess with a torchaudio
that cannot load), precision ``auto``, and ``mm-ptft doctor``."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

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


def test_a_loaded_shared_machine_gets_the_cpus_its_load_leaves_and_a_resume_the_recorded_count(monkeypatch):
    """By hand: 16 CPUs, all in the mask, load 9.7 → 9 busy → (16 - 9) // 2 ranks = 3; load 40 → 1 (never 0); a mask
    or a cgroup quota narrower than the machine: the machine's load says nothing about them (no cut). A checkpoint's
    recorded count wins over the load; the load is read once per process."""
    from mm_ptft import env as E

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(E, "cgroup_cpus", lambda: None)
    monkeypatch.setattr(E, "cpu_count", lambda: 16)
    monkeypatch.setattr(E.os, "cpu_count", lambda: 16)
    monkeypatch.setattr(E.os, "getloadavg", lambda: (9.7, 5.0, 1.0))
    E.busy_at_start.cache_clear()
    n, why, auto = E.thread_plan(0, 2)  # the default: load-aware
    assert (n, auto) == (3, True) and "9 busy (load average)" in why
    kept = E.thread_plan(0, 2, recorded=8)
    assert kept.threads == 8 and kept.auto and "checkpoint records" in kept.why
    monkeypatch.setattr(E.os, "getloadavg", lambda: (40.0, 5.0, 1.0))
    assert E.thread_plan(0, 2).threads == 3  # read once per process: this process's runs size alike
    E.busy_at_start.cache_clear()
    assert E.thread_plan(0, 1).threads == 1
    monkeypatch.setattr(E.os, "cpu_count", lambda: 64)  # a 16-CPU affinity mask on a 64-CPU host
    assert E.busy_cpus() == 0
    E.busy_at_start.cache_clear()  # the next test's runs measure the real load again


def test_train_threads_is_range_checked(tmp_path):
    from mm_ptft.config import ConfigError
    from mm_ptft.run import load_config

    from mm_paths import TEXT_TINY

    with pytest.raises(ConfigError, match="train.threads"):
        load_config(TEXT_TINY, ["train.threads=-1", f"output_dir={tmp_path}"])
