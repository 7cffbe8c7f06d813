"""``sft_toy``: instruction/response pairs a tiny causal LM learns in under a minute on a CPU — copy, reverse or
sort a short sequence of letters (the instruction says which) — as JSONL with ``prompt``/``response`` columns or,
with ``chat=True``, a ``messages`` column; deterministic by seed. Baseline: copying the input letters, which is
right only for the copy third of the rows and for the reverse/sort rows whose answer is the input as it is."""
from __future__ import annotations

import json
import os
import random

from mm_ptft.data.generated import GENERATORS

LETTERS = "abcdefgh"
OPS = {"copy": lambda xs: xs, "reverse": lambda xs: xs[::-1], "sort": sorted}


def toy_pair(rng: random.Random, min_len: int = 3, max_len: int = 5) -> tuple[str, str]:
    """(prompt, response): ``"<op>: a c b"`` → the letters copied, reversed or sorted."""
    op = rng.choice(list(OPS))
    xs = [rng.choice(LETTERS) for _ in range(rng.randint(min_len, max_len))]
    return f"{op}: {' '.join(xs)}", " ".join(OPS[op](list(xs)))


@GENERATORS.register()
def sft_toy(out_dir: str, n_train: int = 1200, n_eval: int = 120, chat: bool = False, seed: int = 0) -> dict[str, str]:
    """``train.jsonl``/``eval.jsonl`` of toy instruction pairs (``chat``: as user/assistant messages)."""
    rng = random.Random(seed)
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for split, n in (("train", n_train), ("eval", n_eval)):
        path = os.path.join(out_dir, f"{split}.jsonl")
        with open(path, "w") as f:
            for _ in range(n):
                p, r = toy_pair(rng)
                row = {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]} if chat \
                    else {"prompt": p, "response": r}
                f.write(json.dumps(row) + "\n")
        paths[f"{split}_file"] = path
    return paths


def copy_baseline(prompt: str) -> str:
    """The trivial answer: the prompt's letters as they are."""
    return prompt.split(":", 1)[1].strip()


__all__ = ["copy_baseline", "sft_toy", "toy_pair"]
