"""``mm-ptft quickstart``: the main job on an embedded default, with no data to download."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def run_quickstart(output_dir: str = "runs/quickstart", steps: Optional[int] = None, device: str = "auto") -> dict:
    """Train the tiny text-classification recipe and print its final metrics."""
    from mm_ptft.config import load_config
    from mm_ptft.run import train

    overrides = [f"output_dir={output_dir}", f"train.device={device}"]
    if steps:
        overrides.append(f"train.max_steps={steps}")
    results = train(load_config(RECIPES / "text_classification" / "tiny.yaml", overrides))
    print(json.dumps(results, indent=2))
    return results
