"""``sft_toy``: instruction/response pairs for a tiny causal LM — add two digits, copy, reverse or sort a short
sequence of letters (the instruction says which; ``ops`` picks the mix) — as JSONL with ``prompt``/``response``
columns or, with ``chat=True``, a ``messages`` column; deterministic by seed. Trivial baseline: answering with the
prompt's operands as they are (``copy_baseline``), right on every copy row and on the reverse/sort rows whose
answer is the input unchanged, never on add rows."""
from __future__ import annotations

import json
import os
import random
from typing import Sequence

from mm_ptft.data.generated import GENERATORS

LETTERS = "abcdefgh"
OPS = {"copy": lambda xs: xs, "reverse": lambda xs: xs[::-1], "sort": sorted,
       "add": lambda xs: [str(int(xs[0]) + int(xs[1]))]}


def toy_pair(rng: random.Random, ops: Sequence[str] = ("copy", "reverse", "sort"), min_len: int = 3,
             max_len: int = 5) -> tuple[str, str]:
    """(prompt, response): ``"<op>: a c b"`` → the letters copied, reversed or sorted; ``"add: 3 4"`` → ``"7"``."""
    op = rng.choice(list(ops))
    xs = [str(rng.randrange(10)) for _ in range(2)] if op == "add" else \
        [rng.choice(LETTERS) for _ in range(rng.randint(min_len, max_len))]
    return f"{op}: {' '.join(xs)}", " ".join(OPS[op](list(xs)))


@GENERATORS.register()
def sft_toy(out_dir: str, n_train: int = 1200, n_eval: int = 120, chat: bool = False, seed: int = 0,
            ops: Sequence[str] = ("copy", "reverse", "sort")) -> dict[str, str]:
    """``train.jsonl``/``eval.jsonl`` of toy instruction pairs (``chat``: as user/assistant messages)."""
    unknown = sorted(set(ops) - set(OPS))
    if unknown or not ops:
        raise ValueError(f"data.generate.ops={list(ops)}: choose from {sorted(OPS)}")
    rng = random.Random(seed)
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for split, n in (("train", n_train), ("eval", n_eval)):
        path = os.path.join(out_dir, f"{split}.jsonl")
        with open(path, "w") as f:
            for _ in range(n):
                p, r = toy_pair(rng, ops)
                row = {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]} if chat \
                    else {"prompt": p, "response": r}
                f.write(json.dumps(row) + "\n")
        paths[f"{split}_file"] = path
    return paths


def copy_baseline(prompt: str) -> str:
    """The trivial answer: the prompt's letters as they are."""
    return prompt.split(":", 1)[1].strip()


__all__ = ["copy_baseline", "sft_toy", "toy_pair"]
