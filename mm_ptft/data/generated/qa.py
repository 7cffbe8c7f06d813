"""``qa_toy``: extractive questions a tiny encoder learns on a CPU — a context lists animals and their colours
("The fox is red. It rained today. The owl is blue."), the question asks one animal's colour ("What colour is the
owl?"), the answer is that colour word, found at its character offset. Contexts vary in length (``facts``, plus
filler sentences), so a short ``data.max_length`` splits some into several windows. With ``unanswerable`` > 0
that share of questions asks about an animal the context does not name (SQuAD 2.0's kind, empty answer).
Written as JSONL (``id``, ``context``, ``question``, ``answer_start``, ``answer_text``) or, with
``format: squad``, as SQuAD v1.1/v2.0 JSON. Trivial baselines: the context's first colour (``first_colour``; right
on about 1/5 of the default questions) and the training file's most frequent answer (about 1/10)."""
from __future__ import annotations

import json
import os
import random
from typing import Sequence

from mm_ptft.data.generated import GENERATORS

ANIMALS = "fox cat dog owl bear frog duck wolf goat hen mouse horse seal crow deer lion".split()
COLOURS = "red blue green yellow black white brown pink grey orange".split()
FILLER = ["It rained today.", "The farm is quiet.", "Nobody came in the morning.", "A bell rang twice.",
          "The gate is open.", "Lunch was late."]


def toy_question(rng: random.Random, facts: tuple[int, int], fillers: int, unanswerable: float) -> dict:
    """One row: a context of ``facts`` animal/colour sentences with up to ``fillers`` filler sentences among them,
    a question about one of its animals (or, with probability ``unanswerable``, about another), and its answer."""
    animals = rng.sample(ANIMALS, rng.randint(*facts) + 1)
    asked, others = (animals[0], animals[1:]) if rng.random() < unanswerable else (None, animals[:-1])
    target = asked or rng.choice(others)
    sentences = [f"The {a} is {rng.choice(COLOURS)}." for a in others]
    for _ in range(rng.randint(0, fillers)):
        sentences.insert(rng.randint(0, len(sentences)), rng.choice(FILLER))
    context = " ".join(sentences)
    row = {"context": context, "question": f"What colour is the {target}?", "answer_start": -1, "answer_text": ""}
    if asked is None:
        at = context.index(f"The {target} is ") + len(f"The {target} is ")
        row.update(answer_start=at, answer_text=context[at: context.index(".", at)])
    return row


def first_colour(context: str) -> str:
    """The trivial answer: the first colour word of the context."""
    return next(w.strip(".") for w in context.split() if w.strip(".") in COLOURS)


@GENERATORS.register()
def qa_toy(out_dir: str, n_train: int = 2000, n_eval: int = 200, seed: int = 0, facts: Sequence[int] = (3, 8),
           fillers: int = 3, unanswerable: float = 0.0, format: str = "jsonl") -> dict[str, str]:
    """``train``/``eval`` files of toy questions (``format``: jsonl, or squad for SQuAD JSON)."""
    if format not in ("jsonl", "squad"):
        raise ValueError(f"data.generate.format={format!r}: choose jsonl or squad")
    if not (len(facts) == 2 and 1 <= facts[0] <= facts[1] < len(ANIMALS)):
        raise ValueError(f"data.generate.facts={list(facts)}: [min, max] animals per context, 1 to {len(ANIMALS) - 1}")
    rng = random.Random(seed)
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for split, n in (("train", n_train), ("eval", n_eval)):
        rows = [{"id": f"{split}-{i}", **toy_question(rng, (facts[0], facts[1]), fillers, unanswerable)}
                for i in range(n)]
        path = os.path.join(out_dir, f"{split}.{'json' if format == 'squad' else 'jsonl'}")
        with open(path, "w") as f:
            if format == "squad":
                json.dump(squad_document(rows), f)
            else:
                f.writelines(json.dumps(r) + "\n" for r in rows)
        paths[f"{split}_file"] = path
    return paths


def squad_document(rows: Sequence[dict]) -> dict:
    """Rows as a SQuAD JSON document (one paragraph per row; v2.0 ``is_impossible`` for unanswerable ones)."""
    def qa(r: dict) -> dict:
        answers = [{"text": r["answer_text"], "answer_start": r["answer_start"]}] if r["answer_text"] else []
        return {"id": r["id"], "question": r["question"], "answers": answers, "is_impossible": not answers}

    return {"version": "2.0" if any(not r["answer_text"] for r in rows) else "1.1",
            "data": [{"title": "qa_toy", "paragraphs": [{"context": r["context"], "qas": [qa(r)]} for r in rows]}]}


__all__ = ["COLOURS", "first_colour", "qa_toy", "squad_document", "toy_question"]
