"""``sft_toy``: instruction/response pairs for a tiny causal LM — add two digits, copy, reverse or sort a short
sequence of letters (the instruction says which; ``ops`` picks the mix) — as JSONL with ``prompt``/``response``
columns or, with ``chat=True``, a ``messages`` column; deterministic by seed. Trivial baseline: answering with the
prompt's operands as they are (``copy_baseline``), right on every copy row and on the reverse/sort rows whose
answer is the input unchanged, never on add rows."""
from __future__ import annotations

import json
import os
import random
from typing import Callable, Sequence

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
    def row(p: str, r: str) -> dict:
        return {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]} if chat \
            else {"prompt": p, "response": r}
    return write_pairs(out_dir, n_train, n_eval, seed, ops, row)


@GENERATORS.register()
def seq2seq_toy(out_dir: str, n_train: int = 1200, n_eval: int = 120, seed: int = 0, ops: Sequence[str] = ("reverse",),
                min_len: int = 3, max_len: int = 5) -> dict[str, str]:
    """``train.jsonl``/``eval.jsonl`` of the same toy pairs as ``source``/``target`` columns (the seq2seq recipe):
    by default ``"reverse: a c b"`` → ``"b c a"``, 3-5 letters of 8."""
    return write_pairs(out_dir, n_train, n_eval, seed, ops, lambda p, r: {"source": p, "target": r}, min_len, max_len)


def write_pairs(out_dir: str, n_train: int, n_eval: int, seed: int, ops: Sequence[str],
                row: Callable[[str, str], dict], min_len: int = 3, max_len: int = 5) -> dict[str, str]:
    """Write ``row(prompt, response)`` of seeded ``toy_pair`` draws as JSONL, one file per split."""
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
                f.write(json.dumps(row(*toy_pair(rng, ops, min_len, max_len))) + "\n")
        paths[f"{split}_file"] = path
    return paths


def copy_baseline(prompt: str) -> str:
    """The trivial answer: the prompt's letters as they are."""
    return prompt.split(":", 1)[1].strip()


__all__ = ["copy_baseline", "seq2seq_toy", "sft_toy", "toy_pair", "write_pairs"]
