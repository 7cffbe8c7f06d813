"""``text_scores``: sentences whose target is a number (how warm the weather words in them are), for the
text regression recipe; deterministic by seed."""
from __future__ import annotations

import random

from mm_ptft.data.generated import FILLER, GENERATORS, write_csv_splits

#: level → words that say it; a sentence's target is its level plus Gaussian noise
LEVELS = {-2.0: ["freezing", "icy", "frosty"], -1.0: ["cold", "chilly", "brisk"], 0.0: ["mild", "cool", "fair"],
          1.0: ["warm", "sunny", "pleasant"], 2.0: ["hot", "scorching", "sweltering"]}


def _row(rng: random.Random, noise: float) -> tuple[str, float]:
    level = rng.choice(list(LEVELS))
    words = [rng.choice(FILLER) for _ in range(rng.choice([4, 6, 10, 16]))]
    for _ in range(rng.randint(1, 3)):  # one to three words of the same level, anywhere in the sentence
        words.insert(rng.randrange(len(words) + 1), rng.choice(LEVELS[level]))
    return " ".join(words).capitalize() + ".", round(level + rng.gauss(0.0, noise), 4)


@GENERATORS.register()
def text_scores(out_dir: str, n_train: int = 600, n_eval: int = 150, noise: float = 0.2,
                seed: int = 0) -> dict[str, str]:
    """Text-to-scalar regression (CSV with text,score)."""
    rng = random.Random(seed)
    return write_csv_splits(out_dir, ["text", "score"], {"train": n_train, "eval": n_eval}, lambda: _row(rng, noise))
