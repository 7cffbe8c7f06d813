"""``qa_toy``: extractive questions a tiny encoder learns on a CPU — a story sentence names one animal, one colour,
one number and one place ("In the garden, three children watched a blue owl."), among filler sentences; the
question asks for one of the four ("Where did it happen?", "What colour is mentioned?"…), the answer is that word at
its character offset. Contexts vary in length (``fillers``), so a short ``data.max_length`` splits some into
several windows. With ``unanswerable`` > 0 that share of contexts is filler alone (SQuAD 2.0's kind, empty answer).
Written as JSONL (``id``, ``context``, ``question``, ``answer_start``, ``answer_text``) or, with ``format: squad``,
as SQuAD v1.1/v2.0 JSON. Trivial baseline: an answer that ignores the question (``blind_answer``: the colour word)
is right on a quarter of the questions; a random word of the story's four, also a quarter."""
from __future__ import annotations

import json
import os
import random
import re
from typing import Sequence

from mm_ptft.data.generated import GENERATORS

WORDS = {"animal": "fox cat dog owl bear frog duck wolf goat hen mouse horse seal crow deer lion".split(),
         "colour": "red blue green yellow black white brown pink grey orange".split(),
         "number": "two three four five six seven eight nine".split(),
         "place": "garden kitchen forest harbour market station library meadow".split()}
QUESTIONS = {"animal": "Which animal is it about?", "colour": "What colour is mentioned?",
             "number": "How many are there?", "place": "Where did it happen?"}
TEMPLATES = ["The {colour} {animal} waited in the {place} with {number} friends.",
             "In the {place}, {number} children watched a {colour} {animal}.",
             "A {animal} painted {colour} slept in the {place} for {number} days.",
             "{number} bells rang in the {place} when the {animal} turned {colour}."]
FILLER = ["It rained today.", "The farm is quiet.", "Nobody came in the morning.", "A bell rang twice.",
          "The gate is open.", "Lunch was late.", "Everyone went home early.", "The road was long and dusty."]


def toy_question(rng: random.Random, fillers: int, unanswerable: float) -> dict:
    """One row: a story sentence naming one animal, colour, number and place (with probability ``unanswerable`` a
    filler sentence instead: the question has no answer), up to ``fillers`` filler sentences around it, a question asking
    for one of the four, and its answer."""
    kind = rng.choice(list(WORDS))
    picked = {k: rng.choice(v) for k, v in WORDS.items()}
    story = rng.choice(TEMPLATES).format(**picked)
    story = story[0].upper() + story[1:]
    missing = rng.random() < unanswerable
    if missing:  # no story: the context is filler alone
        story = rng.choice(FILLER)
    sentences = [story] + [rng.choice(FILLER) for _ in range(rng.randint(0, fillers))]
    rng.shuffle(sentences)
    context = " ".join(sentences)
    row = {"context": context, "question": QUESTIONS[kind], "answer_start": -1, "answer_text": ""}
    if not missing:
        at = re.search(rf"\b{picked[kind]}\b", context, re.IGNORECASE).start()
        row.update(answer_start=at, answer_text=context[at: at + len(picked[kind])])
    return row


def blind_answer(context: str) -> str:
    """The trivial answer that ignores the question: the context's colour word (right on the quarter of the
    questions that ask for the colour)."""
    return next((w.strip(".,") for w in context.split() if w.strip(".,") in WORDS["colour"]), "")


@GENERATORS.register()
def qa_toy(out_dir: str, n_train: int = 2000, n_eval: int = 200, seed: int = 0, fillers: int = 4,
           unanswerable: float = 0.0, format: str = "jsonl") -> dict[str, str]:
    """``train``/``eval`` files of toy questions (``format``: jsonl, or squad for SQuAD JSON)."""
    if format not in ("jsonl", "squad"):
        raise ValueError(f"data.generate.format={format!r}: choose jsonl or squad")
    rng = random.Random(seed)
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for split, n in (("train", n_train), ("eval", n_eval)):
        rows = [{"id": f"{split}-{i}", **toy_question(rng, fillers, unanswerable)}
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


__all__ = ["QUESTIONS", "WORDS", "blind_answer", "qa_toy", "squad_document", "toy_question"]
