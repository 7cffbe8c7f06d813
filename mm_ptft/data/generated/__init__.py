"""Generated datasets for tiny recipes and the embedded default: no download, deterministic by seed.

A generator writes ordinary files (CSV/JSONL plus media) into a folder and returns their paths, so
generated data flows through exactly the same loading code as a user's own files."""
from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any, Callable, Sequence

from mm_ptft.registry import Registry

GENERATORS: Registry[dict[str, str]] = Registry("data_generator")

TOPICS = {
    "sports": "match goal team coach season league player score referee stadium win tournament",
    "cooking": "recipe oven flour garlic simmer sauce bake pepper kitchen chef taste onion",
    "space": "orbit rocket planet telescope galaxy astronaut launch moon star comet satellite nasa",
    "finance": "market stock bank interest loan investor profit budget inflation bond shares trade",
}
FILLER = ("the a of and to in is was it for on with as at by this that from or be are an new old "
          "good day week people time year today very some many more most also").split()


def topic_sentence(rng: random.Random, topic: str, noise: float) -> str:
    """A sentence about ``topic``: 4-32 words from its vocabulary and filler, a ``noise`` share from others."""
    words = TOPICS[topic].split()
    n = rng.choice([4, 6, 8, 12, 20, 32])  # varied lengths: padding matters, grouping helps
    out = []
    for _ in range(n):
        r = rng.random()
        if r < noise:  # a word from a different topic: the task is not a lookup
            out.append(rng.choice(TOPICS[rng.choice([t for t in TOPICS if t != topic])].split()))
        elif r < 0.45:
            out.append(rng.choice(words))
        else:
            out.append(rng.choice(FILLER))
    if not any(w in words for w in out):
        out[rng.randrange(n)] = rng.choice(words)
    return " ".join(out).capitalize() + "."


def write_csv_splits(out_dir: str, header: Sequence[str], sizes: dict[str, int],
                     make_row: Callable[[], Sequence[Any]]) -> dict[str, str]:
    """``<split>.csv`` with ``header`` and ``sizes[split]`` rows from ``make_row()`` each; their paths as
    ``{"<split>_file": path}``."""
    os.makedirs(out_dir, exist_ok=True)
    return {f"{split}_file": write_csv(out_dir, split, header, [make_row() for _ in range(n)])
            for split, n in sizes.items()}


def write_csv(out_dir: str, split: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """``out_dir/<split>.csv`` with ``header`` and ``rows``; its path."""
    path = os.path.join(out_dir, f"{split}.csv")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@GENERATORS.register()
def text_topics(out_dir: str, n_train: int = 800, n_eval: int = 200, noise: float = 0.15,
                seed: int = 0) -> dict[str, str]:
    """Four-topic sentence classification (CSV with text,label)."""
    rng = random.Random(seed)

    def row() -> list[str]:
        topic = list(TOPICS)[rng.randrange(len(TOPICS))]
        return [topic_sentence(rng, topic, noise), topic]

    return write_csv_splits(out_dir, ["text", "label"], {"train": n_train, "eval": n_eval}, row)


def generate(spec: dict[str, Any], root: str | Path, where: str = "data.generate") -> dict[str, str]:
    """Run the generator named in ``spec`` into ``root/<name>-<hash of spec>`` (reused when present)."""
    from mm_ptft.registry import import_submodules

    import_submodules(__name__)  # generators live in the modules of this package
    spec = dict(spec)
    key = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    out_dir = Path(root) / f"{spec.get('name', 'data')}-{key}"
    out_dir.mkdir(parents=True, exist_ok=True)
    done = out_dir / ".done"
    with open(out_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # torchrun ranks / parallel runs: one writes, the others wait and reuse
        if done.exists():
            return dict(line.split("=", 1) for line in done.read_text().splitlines() if "=" in line)
        paths = GENERATORS.build({**spec, "out_dir": str(out_dir)}, where)
        done.write_text("\n".join(f"{k}={v}" for k, v in paths.items()))
    return paths
