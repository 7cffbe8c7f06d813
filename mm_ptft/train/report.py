"""``report.md`` for a run directory: final metrics, loss/metric curves and the confusion matrix as PNG."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from mm_ptft.train.rundir import final_record, final_results


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []


def write_report(run_dir: str | Path) -> Path:
    """(Re)write ``RUN_DIR/report.md`` with curves of every logged loss and eval metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    series: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for rec in read_metrics(run_dir):
        for k, v in rec.items():
            if k not in ("step", "time", "kind", "epoch") and isinstance(v, (int, float)) and not isinstance(v, bool):
                series[(rec["kind"], k)].append((rec["step"], v))
    lines = [f"# Run report: {run_dir.name}", ""]
    record, final = final_record(run_dir), final_results(run_dir)
    if record is not None and final is not None:
        at = f" (step {record['step']}, {record.get('checkpoint') or 'its checkpoint not kept'})" \
            if "step" in record else ""
        lines += [f"## Final metrics{at}", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in final.items()]
        lines.append("")
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
        fig.tight_layout()
        png = run_dir / f"{kind}_curves.png"
        fig.savefig(png, dpi=100)
        plt.close(fig)
        lines += [f"## {kind}", "", f"![{kind} curves]({png.name})", ""]
    cm_path = run_dir / "confusion_matrix.json"
    if cm_path.exists():
        lines += _confusion_png(plt, run_dir, json.loads(cm_path.read_text()))
    out = run_dir / "report.md"
    out.write_text("\n".join(lines))
    return out


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
