"""``mm_ptft.tasks.get_recipe``: a recipe is found by the module of its name, so a run imports only its own stack."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from mm_paths import ROOT

OTHERS = ["mm_ptft.tasks.image_classification", "mm_ptft.tasks.detection", "mm_ptft.tasks.speech_recognition",
          "mm_ptft.heads.detection", "mm_ptft.heads.image_classification", "mm_ptft.encoders.image",
          "mm_ptft.encoders.audio", "pycocotools", "timm", "open_clip"]


def _loaded_after(code: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    probe = f"import sys, json\n{code}\nprint(json.dumps({{m: m in sys.modules for m in {OTHERS!r}}}))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_text_recipe_loads_no_image_audio_or_detection_stack():
    loaded = _loaded_after("from mm_ptft.tasks import get_recipe; get_recipe('text_classification')")
    assert not any(loaded.values()), {m for m, v in loaded.items() if v}


def test_the_probe_sees_a_heavy_stack_when_it_is_loaded():
    loaded = _loaded_after("from mm_ptft.tasks import get_recipe; get_recipe('detection')")
    assert loaded["mm_ptft.heads.detection"] and loaded["mm_ptft.tasks.detection"]


def test_every_registered_recipe_is_still_found_by_name():
    from mm_ptft.tasks import TASKS, get_recipe, load_all

    load_all()
    for name in TASKS.names():
        assert get_recipe(name).config_cls.task == name
