"""The software and hardware a process runs on: package versions, checks that the compiled pieces we use
load, a guard that keeps a torchaudio which cannot load from taking text and image work down with it, and
what ``train.precision: auto`` means on this machine. Ground layer: imports nothing of ours.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import importlib.util
import os
import platform
import sys
import time
import warnings
from typing import Callable, NamedTuple, Optional

# The set CI installs (requirements/tested.txt pins the same versions; a test keeps the two equal).
TESTED = {"torch": "2.14.1", "torchvision": "0.29.1", "torchaudio": "2.11.1"}
TESTED_PIP = "pip install " + " ".join(f"'{k}=={v}'" for k, v in TESTED.items())

# Packages whose versions matter when a user reports a problem (distribution names).
REPORTED = ("torch", "torchvision", "torchaudio", "transformers", "tokenizers", "timm", "open_clip_torch",
            "datasets", "peft", "torchmetrics", "torchdata", "flashlight-text", "soundfile", "av", "onnxruntime")


class EnvironmentProblem(RuntimeError):
    """An installed package cannot do what a run needs; the message names versions and the fix."""


def version(dist: str) -> Optional[str]:
    """Installed version of distribution ``dist``, or None when it is not installed."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _root_cause(err: BaseException) -> str:
    """The most specific line of a loader error (``undefined symbol: …``, ``libX.so: cannot open …``)."""
    seen = err
    while seen.__cause__ is not None or seen.__context__ is not None:
        seen = seen.__cause__ or seen.__context__
    text = str(seen).strip().splitlines()[-1] if str(seen).strip() else type(seen).__name__
    return text.split(": ", 1)[-1] if "undefined symbol" in text else text


def _is_cpu_torch() -> bool:
    import torch

    return torch.version.cuda is None and getattr(torch.version, "hip", None) is None


def pairing_problem(dist: str, err: BaseException) -> str:
    """One line: ``dist`` X cannot load with torch Y (why). Fix: the pip command."""
    mine, torch_v = version(dist) or "?", version("torch") or "?"
    fix = TESTED_PIP + "   (mm_ptft's tested set)"
    if "+cu" in mine and "cuda" in _root_cause(err).lower() and _is_cpu_torch():
        fix = (f"install the CPU build of {dist} that matches your CPU build of torch {torch_v}, from the same "
               f"wheel index torch came from (pip install --force-reinstall --no-deps '{dist}==<version>' "
               f"--index-url <that index>), or {TESTED_PIP}")
    return f"{dist} {mine} cannot load with torch {torch_v} ({_root_cause(err)}). Fix: {fix}"


# ---- torchaudio: loaded once, hidden when broken ----------------------------------------------

_torchaudio_problem: Optional[str] = None


def guard_torchaudio() -> Optional[str]:
    """Import torchaudio once. If it is installed but cannot load (a binary built for another torch),
    hide it — ``sys.modules["torchaudio"] = None`` makes ``importlib.util.find_spec`` answer None, so
    transformers treats it as absent instead of crashing text and image work — and remember why.
    Returns the problem line, or None when torchaudio loaded (or is simply not installed)."""
    global _torchaudio_problem
    if "torchaudio" in sys.modules or importlib.util.find_spec("torchaudio") is None:
        return _torchaudio_problem
    try:
        importlib.import_module("torchaudio")
    except Exception as err:  # OSError (undefined symbol), ImportError, RuntimeError from its loader
        for name in [m for m in sys.modules if m == "torchaudio" or m.startswith("torchaudio.")]:
            del sys.modules[name]
        sys.modules["torchaudio"] = None  # type: ignore[assignment]
        _torchaudio_problem = pairing_problem("torchaudio", err)
    return _torchaudio_problem


# Packages that import torchaudio when it is installed (transformers, and peft through it): the guard runs just
# before the first of them is imported, so ``import mm_ptft`` itself loads neither torch nor torchaudio.
GUARDED_BEFORE = ("transformers",)


class _GuardBeforeImport:
    """A ``sys.meta_path`` finder that runs :func:`guard_torchaudio` the first time one of ``GUARDED_BEFORE`` is
    looked up, then steps aside (it finds nothing itself: the import carries on through the usual finders)."""

    done = False

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if not self.done and fullname in GUARDED_BEFORE:
            self.done = True  # first: the guard's own imports come through here too
            guard_torchaudio()
        return None


def guard_torchaudio_lazily() -> None:
    """Arrange for :func:`guard_torchaudio` to run before anything imports transformers (at once if it already has)."""
    if any(name in sys.modules for name in GUARDED_BEFORE):
        guard_torchaudio()
    elif not any(isinstance(f, _GuardBeforeImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _GuardBeforeImport())  # type: ignore[arg-type]


def require_torchaudio(feature: str):
    """The torchaudio module for ``feature`` (e.g. "audio resampling"), or an EnvironmentProblem that
    names the versions, the fix and ``mm-ptft doctor`` — never a raw loader trace."""
    problem = guard_torchaudio()
    if problem:
        raise EnvironmentProblem(f"{feature} needs torchaudio, which cannot load here: {problem}. "
                                 "`mm-ptft doctor` checks the whole set.")
    try:
        return importlib.import_module("torchaudio")
    except ImportError:
        raise EnvironmentProblem(f"{feature} needs torchaudio, which is not installed. Fix: {TESTED_PIP}") from None


# ---- hardware and precision -------------------------------------------------------------------

def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cgroup_cpus() -> Optional[float]:
    """The cgroup CPU quota in CPUs (``cpu.max``, v1 ``cpu.cfs_quota_us``), None when unlimited or unknown."""
    for path, split in (("/sys/fs/cgroup/cpu.max", lambda t: t.split()),
                        ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", None)):
        try:
            text = open(path, encoding="utf-8").read().strip()
            if split is None:
                quota, period = text, open("/sys/fs/cgroup/cpu/cpu.cfs_period_us", encoding="utf-8").read().strip()
            else:
                quota, period = split(text)[:2]
        except (OSError, ValueError):
            continue
        if quota in ("max", "-1"):
            return None
        return int(quota) / int(period)
    return None


def usable_cpus() -> int:
    """The CPUs this process may use: the affinity mask, capped by the cgroup quota (rounded down, at least 1)."""
    quota = cgroup_cpus()
    return max(1, min(cpu_count(), int(quota)) if quota else cpu_count())


class ThreadPlan(NamedTuple):
    """The intra-op threads a run computes with, why, and whether they were sized here (``auto``: not set by
    ``train.threads`` or ``OMP_NUM_THREADS``), which a run records in its checkpoints and its resumes keep."""

    threads: int
    why: str
    auto: bool


def thread_plan(override: int = 0, local_world: int = 1, recorded: Optional[int] = None) -> ThreadPlan:
    """Intra-op threads a run uses: ``train.threads`` when set; else ``OMP_NUM_THREADS`` when the user set it (it wins
    over the sizing); else the count a checkpoint ``recorded`` (a resume computes with its first start's count, so
    bit-identical to a straight run); else the usable CPUs less those other processes keep busy now (``busy_cpus``,
    measured once per process), divided by the processes on this node."""
    if override > 0:
        return ThreadPlan(override, f"train.threads={override}", False)
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return ThreadPlan(int(env), f"OMP_NUM_THREADS={env} (set in the environment: it wins over the sizing)", False)
    if recorded:
        return ThreadPlan(recorded, "as the run's first start chose: its checkpoint records the count, and a resume "
                                    "computes with it", True)
    cpus, busy = usable_cpus(), busy_at_start()
    n = max(1, (cpus - busy) // max(1, local_world))
    return ThreadPlan(n, f"{cpus} usable CPUs{f' - {busy} busy ({busy_signal()})' if busy else ''} / {local_world} "
                         f"local process(es)", True)


@functools.lru_cache(maxsize=1)
def busy_at_start() -> int:
    """``busy_cpus`` the first time a run in this process asks: the runs one process starts (a notebook, a test
    session) size their threads alike, so a rerun there computes with the same count."""
    return busy_cpus()


class CpuSnapshot(NamedTuple):
    """CPU time counters at one moment (Linux ``/proc``), in clock ticks."""

    time: float  # time.monotonic()
    machine: int  # busy ticks of every CPU: /proc/stat's user + nice + system + irq + softirq + steal
    own: int  # this process's ticks, all its threads: /proc/self/stat's utime + stime
    pid: int  # whose ``own`` it is (a forked child's counters start again from 0)


def cpu_snapshot() -> Optional[CpuSnapshot]:
    """The counters now, or None where ``/proc`` does not have them (not Linux)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            cpu = f.readline().split()
        with open("/proc/self/stat", encoding="ascii", errors="replace") as f:
            mine = f.read().rsplit(")", 1)[1].split()  # after "pid (comm)": field 3 is mine[0]; utime, stime 14, 15
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in cpu[1:9])
        return CpuSnapshot(time.monotonic(), user + nice + system + irq + softirq + steal,
                           int(mine[11]) + int(mine[12]), os.getpid())
    except (OSError, IndexError, ValueError):
        return None


# The start of the window over which other processes' CPU use is measured: taken when mm_ptft is imported (``import
# mm_ptft`` imports this module first), so a run's own imports and set-up (seconds) are the window.
PROCESS_START = cpu_snapshot()
MIN_WINDOW_S, MAX_WINDOW_S = 0.3, 30.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def other_cpu_use(start: Optional[CpuSnapshot] = None) -> Optional[float]:
    """The CPUs other processes used on average since ``start`` (default: when mm_ptft was imported): the machine's
    busy time less this process's own (all its threads), over the time between. A window shorter than
    ``MIN_WINDOW_S`` (a library user asking at once), longer than ``MAX_WINDOW_S`` (a notebook imported an hour ago)
    or begun in the parent of a forked process is replaced by a fresh one of ``MIN_WINDOW_S`` (this sleeps that
    long, once). None where /proc has no counters."""
    start = start or PROCESS_START
    now = cpu_snapshot()
    if start is None or now is None:
        return None
    if start.pid != now.pid or not MIN_WINDOW_S <= now.time - start.time <= MAX_WINDOW_S:
        start = now
        time.sleep(MIN_WINDOW_S)
        now = cpu_snapshot() or start
    others = (now.machine - start.machine) - (now.own - start.own)
    global _measured
    _measured = (max(0.0, others / CLOCK_TICKS / max(now.time - start.time, 1e-9)), now.time - start.time)
    return _measured[0]


_measured: Optional[tuple[float, float]] = None  # the last ``other_cpu_use``: (CPUs, window seconds)


def busy_signal() -> str:
    """What ``busy_cpus`` read on this machine (named in the run's threads line)."""
    if PROCESS_START is None:
        return "load average"
    return "CPU use of other processes" + (f", {_measured[0]:.2f} CPUs over {_measured[1]:.1f} s" if _measured else "")


def busy_cpus() -> int:
    """The CPUs other processes keep busy, where a machine-wide figure speaks for this process's CPUs: only when the
    affinity mask is every CPU and no cgroup quota applies (a shared machine, not a container's slice of a host); 0
    elsewhere. The figure is the CPU time other processes used over the window since mm_ptft was imported (the run's
    start-up: ``other_cpu_use``), rounded to whole CPUs (half a CPU in use counts as busy: a parallel region runs at
    the pace of its slowest thread), at most all but one. Where /proc has no counters (not Linux), the 1-minute load
    average instead: it lags by a minute, so a run started just after another finished (a sweep, the benchmark) read
    the finished run's load and took half the CPUs of this quiet 2-core machine. Two threads per process on a 2-core
    machine other jobs keep busy ran the tiny speech recipe 20x slower than one (benchmarks/threads_loaded.py)."""
    if cgroup_cpus() is not None or cpu_count() != (os.cpu_count() or 1):
        return 0
    others = other_cpu_use()
    if others is None:
        try:
            others = float(int(os.getloadavg()[0]))
        except OSError:
            return 0
    return min(cpu_count() - 1, int(others + 0.5))


def apply_threads(override: int = 0, local_world: int = 1, recorded: Optional[int] = None) -> ThreadPlan:
    """Size this process's thread pools per ``thread_plan``: torch's intra-op threads, its inter-op pool to the same
    count (only possible before any parallel work: later it stays), the BLAS libraries loaded (``threadpoolctl``, when
    installed) to the same count, and, at 1 thread, tokenizers' parallelism off (``TOKENIZERS_PARALLELISM``, unless
    set). Loader workers: ``limit_worker_threads``."""
    import torch

    plan = thread_plan(override, local_world, recorded)
    torch.set_num_threads(plan.threads)
    with contextlib.suppress(RuntimeError):  # "cannot set number of interop threads after parallel work has started"
        torch.set_num_interop_threads(plan.threads)
    with contextlib.suppress(ImportError):  # numpy's OpenBLAS sizes itself to every CPU (OMP_NUM_THREADS=1 caps it)
        from threadpoolctl import threadpool_limits

        threadpool_limits(plan.threads, user_api="blas")
    if plan.threads == 1:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return plan


def thread_message(plan: ThreadPlan) -> str:
    """The line a run logs for ``plan``."""
    return f"threads: {plan.threads} intra-op ({plan.why}); loader workers 1 each"


WORKER_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def limit_worker_threads() -> None:
    """A loader worker's pools at 1 thread: torch's (the worker loop does it too), the BLAS/OpenMP libraries already
    loaded (numpy's OpenBLAS, through ``threadpoolctl`` when installed; a forked worker inherits the parent's
    pools), the same libraries in what it loads or starts later (their ``*_NUM_THREADS``), and tokenizers'
    parallelism."""
    import torch

    torch.set_num_threads(1)
    os.environ.update({name: "1" for name in WORKER_THREAD_ENV}, TOKENIZERS_PARALLELISM="false")
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_native_bf16() -> bool:
    """True when the CPU computes bf16 in hardware (AVX512-BF16 / AMX on x86, the BF16 extension on Arm);
    elsewhere torch emulates it, much slower than fp32."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"})


def native_low_precision(device_type: str) -> bool:
    """Whether bf16 runs natively on ``device_type``."""
    import torch

    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device_type == "cpu" and cpu_native_bf16()


# Measured: benchmarks/cpu_precision.py --emulate (MiniLM-sized BERT, 2 cores limited to AVX2) 3.1x the fp32
# step time; MiniLM fine-tuning with the text recipe on a 2-core AVX2 CPU over 14x (issue 12).
EMULATED_COST = "measured 3x to over 14x slower than fp32 per step on AVX2 CPUs"


def resolve_precision(requested: str, device_type: str) -> str:
    """``auto`` → bf16 where the hardware has it (CUDA with bf16, CPUs with AVX512-BF16/AMX), else fp32.
    An explicit bf16/fp16 on a CPU that only emulates it is honoured, with one warning saying the cost."""
    if requested == "auto":
        return "bf16" if native_low_precision(device_type) else "fp32"
    if requested in ("bf16", "fp16") and device_type == "cpu" and not cpu_native_bf16():
        warnings.warn(f"train.precision={requested} on a CPU without native bf16/fp16 "
                      f"({cpu_capability()}): torch emulates it, {EMULATED_COST}. "
                      "Use train.precision=auto or fp32.", stacklevel=2)
    return requested


def cpu_capability() -> str:
    import torch

    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # older builds
        return platform.machine()


# ---- mm-ptft doctor -------------------------------------------------------------------------

class Check(NamedTuple):
    name: str
    ok: bool
    detail: str
    required: bool = True


def _run_check(name: str, fn: Callable[[], str], required: bool = True, dist: str = "") -> Check:
    try:
        return Check(name, True, fn(), required)
    except EnvironmentProblem as err:
        return Check(name, False, str(err), required)
    except Exception as err:  # ImportError/OSError from a loader, or a wrong result
        if dist and version(dist) is None:
            return Check(name, False, f"not installed (pip install '{dist}')", required)
        detail = pairing_problem(dist, err) if dist else f"{type(err).__name__}: {err}"
        return Check(name, False, detail, required)


def _torchvision_ops() -> str:
    import torch
    import torchvision

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    keep = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
    if keep.tolist() != [0, 2]:
        raise RuntimeError(f"torchvision.ops.nms returned {keep.tolist()}, expected [0, 2]")
    return "nms runs"


def torchvision_pairing() -> Optional[str]:
    """A line naming torch and torchvision when their minors are not a released pair (0.N ↔ 2.(N-15))."""
    tv, t = version("torchvision"), version("torch")
    if not tv or not t:
        return None
    tv_minor, t_minor = int(tv.split(".")[1]), int(t.split(".")[1])
    if tv.startswith("0.") and t.startswith("2.") and tv_minor < t_minor + 15:
        return (f"torchvision {tv} was built for torch 2.{tv_minor - 15}, not torch {t}. "
                f"Fix: pip install 'torchvision==0.{t_minor + 15}.*'")
    return None


def _torchaudio_runs() -> str:
    import torch

    problem = guard_torchaudio()
    if problem:
        raise EnvironmentProblem(problem)
    ta = require_torchaudio("audio (resampling, log-mel, Conformer, wav2vec2)")
    wav = torch.sin(torch.arange(1600) * 0.1)
    out = ta.functional.resample(wav, 16000, 8000)
    return f"extension loads; resample 16k->8k gives {out.numel()} samples"


def _ctc_decoder() -> str:
    import torch

    if guard_torchaudio():
        raise EnvironmentProblem("not checked: needs torchaudio, which cannot load (see above)")
    require_torchaudio("beam-search CTC decoding")
    from torchaudio.models.decoder import ctc_decoder

    dec = ctc_decoder(lexicon=None, tokens=["-", "|", "a"], blank_token="-", sil_token="|", beam_size=2)
    emissions = torch.tensor([[[0.0, -9.0, -9.0], [-9.0, -9.0, 0.0], [0.0, -9.0, -9.0]]])  # (B=1, T=3, V=3)
    return f"beam decoder runs (tokens {dec(emissions)[0][0].tokens.tolist()})"


def _onnxruntime() -> str:
    import onnxruntime

    return "providers " + ", ".join(onnxruntime.get_available_providers())


def _soundfile() -> str:
    import soundfile

    return f"libsndfile {soundfile.__libsndfile_version__}"


def _pyav() -> str:
    import io

    import av
    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as out:
        stream = out.add_stream("ffv1", rate=10)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv444p"
        frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), 200, np.uint8), format="rgb24")
        out.mux(stream.encode(frame))
        out.mux(stream.encode())
    buf.seek(0)
    with av.open(buf) as inp:
        pixel = next(inp.decode(video=0)).to_ndarray(format="rgb24")[0, 0].tolist()
    return f"FFmpeg {av.ffmpeg_version_info}; encodes and decodes a frame (pixel {pixel})"


def _pycocotools() -> str:
    import numpy as np
    from pycocotools import mask

    area = mask.area(mask.encode(np.ones((4, 4, 1), dtype=np.uint8, order="F")))
    return f"mask API runs (area {int(area[0])})"


def compiled_checks() -> list[Check]:
    """Each compiled piece we use, loaded and run on a tiny input."""
    vision = _run_check("torchvision ops", _torchvision_ops, dist="torchvision")
    pairing = None if vision.ok else torchvision_pairing()
    if pairing:  # the release arithmetic names the fix; only a failed load says there is something to fix
        vision = vision._replace(detail=f"{vision.detail}; {pairing}")
    checks = [vision,
              _run_check("torchaudio", _torchaudio_runs, dist="torchaudio"),
              _run_check("flashlight-text CTC decoder", _ctc_decoder, dist="flashlight-text"),
              _run_check("soundfile", _soundfile, dist="soundfile"),
              _run_check("pycocotools", _pycocotools, dist="pycocotools"),
              _run_check("PyAV (video extra)", _pyav, required=False, dist="av"),
              _run_check("onnxruntime (export extra)", _onnxruntime, required=False, dist="onnxruntime")]
    return checks


def device_lines() -> list[str]:
    import torch

    lines = [f"cpu: {platform.machine()}, {cpu_count()} usable cores, capability {cpu_capability()}, "
             f"native bf16 {'yes' if cpu_native_bf16() else 'no (bf16/fp16 are emulated: auto picks fp32)'}"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append(f"cuda:{i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}, "
                         f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}")
    else:
        lines.append("cuda: not available (train.device=auto runs on the CPU)")
    lines.append(thread_line())
    return lines


def thread_line() -> str:
    """Other processes' CPU use, the load average and the threads a run started here would use (``mm-ptft doctor``)."""
    quota = cgroup_cpus()
    try:
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "unknown"
    others = other_cpu_use()
    use = f"other processes use {others:.2f} CPUs now, " if others is not None else ""
    n, why, _ = thread_plan(0, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return (f"threads: {use}load average {load} (1/5/15 min) on {cpu_count()} CPUs in the affinity mask"
            f"{f', cgroup quota {quota:g} CPUs' if quota else ''}; a run started now would use {n} intra-op threads "
            f"({why}; a resume keeps its first start's count), loader workers 1 each; train.threads=N overrides")


def version_lines() -> list[str]:
    import torch

    lines = [f"python {platform.python_version()} ({sys.executable})"]
    for dist in REPORTED:
        v = version(dist) or "not installed"
        extra = f" (CUDA {torch.version.cuda or 'none: CPU build'})" if dist == "torch" else ""
        tested = f"  [tested: {TESTED[dist]}]" if dist in TESTED and v.split("+")[0] != TESTED[dist] else ""
        lines.append(f"{dist} {v}{extra}{tested}")
    return lines
