"""The documentation site: ``mkdocs build --strict`` (warnings are errors), an API reference entry with signature
for every name ``mm_ptft`` exports, and every how-to snippet marked ``<!-- runnable -->`` run as written."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mm_paths import ROOT

DOCS = Path(ROOT, "docs")
RUNNABLE = re.compile(r"<!-- runnable -->\s*```(bash|python)\n(.*?)```", re.S)


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "TMP": str(tmp_path), "NO_MKDOCS_2_WARNING": "1"}


def test_site_builds_strict_with_every_exported_name(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]')")
    pytest.importorskip("mkdocstrings", reason="mkdocstrings is not installed (pip install -e '.[docs]')")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, env=_env(tmp_path), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    import mm_ptft.api

    page = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    missing = [n for n in mm_ptft.api.__all__ if f'id="mm_ptft.api.{n}"' not in page]
    assert not missing, f"no API reference entry for {missing}"
    text = re.sub(r"<[^>]+>", "", page)
    assert "load_config(config: str" in text and "A validated run config" in text  # signature and docstring


def snippets() -> list[tuple[str, str, str]]:
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        for lang, code in RUNNABLE.findall(page.read_text()):
            found.append((str(page.relative_to(DOCS)), lang, code))
    return found


def test_the_how_tos_have_runnable_snippets():
    pages = {p for p, _, _ in snippets()}
    fine_tuning = {f"howto/{n}.md" for n in ("text_classification", "text_regression", "image_classification",
                                             "speech_recognition", "multimodal_classification", "detection",
                                             "pretrain_contrastive", "pretrain_masked", "pretrain_joint", "distillation",
                                             "multitask", "sweep", "whisper_asr", "export")}
    assert fine_tuning <= pages, f"no runnable snippet in {sorted(fine_tuning - pages)}"


@pytest.mark.slow
@pytest.mark.parametrize("page, lang, code", snippets(), ids=lambda v: v if isinstance(v, str) and v.endswith(".md") else "")
def test_runnable_snippet_runs(page, lang, code, tmp_path):
    """Each marked snippet as a user would paste it (``$TMP`` a fresh directory; ``mm-ptft`` this checkout)."""
    if lang == "bash":
        cmd = code.replace("mm-ptft ", f"{sys.executable} -m mm_ptft.cli ")  # this checkout, not an installed one
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", cmd], cwd=ROOT, capture_output=True, text=True,
                              env=_env(tmp_path), timeout=600)
    else:
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                              env=_env(tmp_path), timeout=600)
    assert done.returncode == 0, f"{page}:\n{code}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
