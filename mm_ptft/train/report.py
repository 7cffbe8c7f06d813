"""``report.md`` for a run directory: final metrics, loss/metric curves and the confusion matrix as PNG."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import IO, Callable, NamedTuple, Optional, Sequence

from mm_ptft.train.rundir import final_record, final_results


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []


INPUTS = ("metrics.jsonl", "confusion_matrix.json")  # what the plots are drawn from


def write_report(run_dir: str | Path, go: Optional[Callable[[], bool]] = None) -> Optional[Path]:
    """(Re)write ``RUN_DIR/report.md`` with curves of every logged loss and eval metric. ``go``: called once the
    plots are drawn, before ``final_metrics.json`` is read (a run draws while its final checkpoint is written);
    False: stop without writing report.md (None returned). Plots whose inputs changed meanwhile are drawn again."""
    plt = _pyplot()
    run_dir = Path(run_dir)
    drawn = _inputs_state(run_dir)
    sections = _plots(plt, run_dir)
    if go is not None:
        if not go():
            return None
        if _inputs_state(run_dir) != drawn:
            sections = _plots(plt, run_dir)
    lines = [f"# Run report: {run_dir.name}", ""]
    record, final = final_record(run_dir), final_results(run_dir)
    if record is not None and final is not None:
        at = f" (step {record['step']}, {record.get('checkpoint') or 'its checkpoint not kept'})" \
            if "step" in record else ""
        lines += [f"## Final metrics{at}", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in final.items()]
        lines.append("")
    out = run_dir / "report.md"
    out.write_text("\n".join(lines + sections))
    return out


def _pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _inputs_state(run_dir: Path) -> list[Optional[tuple[int, int]]]:
    """Size and modification time of each of ``INPUTS`` (None: absent)."""
    stats = [(run_dir / name).stat() if (run_dir / name).is_file() else None for name in INPUTS]
    return [None if st is None else (st.st_size, st.st_mtime_ns) for st in stats]


def _plots(plt, run_dir: Path) -> list[str]:
    """The curve PNGs (one per kind of row, fixed margins: no layout pass) and the confusion matrix PNG; their
    report.md sections."""
    series: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for rec in read_metrics(run_dir):
        for k, v in rec.items():
            if k not in ("step", "time", "kind", "epoch") and isinstance(v, (int, float)) and not isinstance(v, bool):
                series[(rec["kind"], k)].append((rec["step"], v))
    lines: list[str] = []
    for kind in sorted({k for k, _ in series}):
        names = sorted(n for k, n in series if k == kind and ("loss" in n or kind == "eval") and n != "lr")
        if not names:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for n in names:
            xs, ys = zip(*series[(kind, n)])
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, label=n)
        ax.set_xlabel("step")
        ax.set_title(f"{kind} curves")
        ax.legend(fontsize=7)
        fig.subplots_adjust(left=0.12, right=0.97, bottom=0.14, top=0.91)
        png = run_dir / f"{kind}_curves.png"
        fig.savefig(png, dpi=100)
        plt.close(fig)
        lines += [f"## {kind}", "", f"![{kind} curves]({png.name})", ""]
    cm_path = run_dir / "confusion_matrix.json"
    if cm_path.exists():
        lines += _confusion_png(plt, run_dir, json.loads(cm_path.read_text()))
    return lines


def _confusion_png(plt, run_dir: Path, cm: dict) -> list[str]:
    """``confusion_matrix.png`` (counts, rows = true class) and its report.md section."""
    matrix, labels = cm["matrix"], [str(n) for n in cm["labels"]]
    n = len(matrix)
    fig, ax = plt.subplots(figsize=(2 + 0.5 * n, 1.5 + 0.5 * n))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(n), labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i, row in enumerate(matrix):
            for j, c in enumerate(row):
                ax.text(j, i, str(c), ha="center", va="center", fontsize=7)
    ax.set_title("confusion matrix (final eval)")
    fig.tight_layout()
    fig.savefig(run_dir / "confusion_matrix.png", dpi=100)
    plt.close(fig)
    return ["## confusion matrix", "", "![confusion matrix](confusion_matrix.png)", ""]


class _Child(NamedTuple):
    proc: subprocess.Popen
    stderr: IO[bytes]


def _spawn(*args: str) -> _Child:
    """``python -m mm_ptft.train.report ARGS`` with this very package first on its path (whatever sys.path holds),
    stdin a pipe, stderr kept for ``join``."""
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    stderr = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "mm_ptft.train.report", *args], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=stderr, env=env)
    return _Child(proc, stderr)


_spare: Optional[_Child] = None  # started by prestart(), waiting for a run directory


def prestart() -> None:
    """Start the next ``ReportProcess``'s child now, so that its interpreter and matplotlib (about 0.55 CPU-seconds)
    load on the core a run's start-up leaves idle (imports, ``from_pretrained`` and tokenizing are mostly one
    thread) rather than beside the final checkpoint write. It waits for a run directory; one at a time per process;
    it ends when this process does (its stdin closes) if no run takes it."""
    global _spare
    if _spare is None or _spare.proc.poll() is not None:
        _spare = _spawn("--wait")


def _take_spare(run_dir: Path) -> Optional[_Child]:
    """The prestarted child, given ``run_dir``; None if there is none or it has ended."""
    global _spare
    child, _spare = _spare, None
    if child is None:
        return None
    try:
        if child.proc.poll() is None:
            child.proc.stdin.write((json.dumps(str(run_dir.resolve())) + "\n").encode())
            child.proc.stdin.flush()
            return child
    except BrokenPipeError:
        pass
    child.proc.wait()
    child.stderr.close()
    return None


class ReportProcess:
    """``write_report(run_dir)`` in a child interpreter, started at a run's final evaluation (the one ``prestart``
    started, if any): it draws the plots while the run writes its final checkpoint (on another core: no GIL shared,
    no matplotlib in the run's process), and writes report.md once ``release()`` says final_metrics.json is on
    disk. ``join`` waits and raises what it failed with; ``cancel`` (a failed run) ends it without report.md. Each
    step is a line on the child's stdin, never only its end: forked loader workers may hold a copy of the pipe."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.released = Path(run_dir), False
        self.proc, self.stderr = _take_spare(self.run_dir) or _spawn(str(self.run_dir))

    def release(self) -> None:
        """final_metrics.json is written: the child may read it and write report.md."""
        if not self.released:
            self.released = True
            self._tell(b"go\n")

    def cancel(self) -> None:
        """End the child without report.md."""
        self.released = True
        self._tell(b"stop\n")
        self.proc.wait()
        self.stderr.close()

    def join(self) -> None:
        self.release()
        code = self.proc.wait()
        self.stderr.seek(0)
        err = self.stderr.read().decode(errors="replace").strip().splitlines()
        self.stderr.close()
        if code != 0:
            raise RuntimeError(f"report.md for {self.run_dir} failed (exit {code}): " + " | ".join(err[-5:]))

    def _tell(self, line: bytes) -> None:
        if self.proc.stdin.closed:
            return
        try:
            self.proc.stdin.write(line)
            self.proc.stdin.close()
        except BrokenPipeError:  # the child ended already: join reports how
            pass


def main(argv: Sequence[str]) -> int:
    """The child of ``ReportProcess``: ``RUN_DIR``, or ``--wait`` (``prestart``: matplotlib first, then the run
    directory as a JSON line on stdin; ``stop`` or EOF: nothing); report.md once stdin says ``go``."""
    if argv[:1] == ["--wait"]:
        _pyplot()
        line = sys.stdin.readline().strip()
        if line in ("", "stop"):
            return 0
        argv = [json.loads(line)]
    write_report(argv[0], go=lambda: sys.stdin.readline().strip() == "go")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
