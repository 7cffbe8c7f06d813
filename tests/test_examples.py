"""The runnable examples in ``examples/`` run as a user would run them (a subprocess) and do what they say."""
import os
import re
import subprocess
import sys

import mm_ptft

from mm_paths import ROOT


def test_two_tower_trains_on_cpu_and_its_towers_reload(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "two_tower.py"), "--steps", "30",
                          "--save", str(tmp_path / "towers")], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode == 0, out.stderr[-3000:]
    first, last = map(float, re.search(r"clip loss ([\d.]+) -> ([\d.]+) over 30 steps", out.stdout).groups())
    assert last < 0.5 * first, out.stdout  # 8 colours: chance is ln 8 ~ 2.08; it learns the pairing
    assert mm_ptft.load_encoder(tmp_path / "towers" / "text").modality == "text"
    assert mm_ptft.load_encoder(tmp_path / "towers" / "image").modality == "image"
