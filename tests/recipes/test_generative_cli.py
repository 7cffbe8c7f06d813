"""The generative recipes through the command line: a few training steps (``mm-ptft train``), ``mm-ptft export
--format hf``, then ``mm-ptft predict`` against plain transformers on the exported directory alone
(``AutoModelFor*`` + ``AutoTokenizer`` + greedy ``generate``, one prompt at a time, no mm_ptft code), row by row.
``predict`` runs its inputs two at a time (``train.eval_batch_size=2``) over prompts of different lengths, so the
batching and its padding are exercised. The run directory also predicts after being copied elsewhere."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mm_ptft import cli

from mm_paths import ROOT

RECIPES = Path(ROOT) / "recipes"
SMALL = ["train.report=false", "train.max_steps=3", "train.batch_size=8", "train.eval_batch_size=2",
         "train.eval_every=1000", "optim.lr=1e-9", "data.generate.n_train=32", "data.generate.n_eval=4", "generation.max_new_tokens=6"]
# wide random-init weights (and a learning rate of ~0 in training): greedy outputs that differ from prompt to prompt,
# with wide margins between the best tokens, rather than the one collapsed answer a few real steps give
S2S = {"init_std": 1.0, "d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
       "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "max_position_embeddings": 64}
MODELS = {  # recipe, model.lm.config, the transformers class that loads the export
    "gpt2": ("causal_lm_sft", {"model_type": "gpt2", "initializer_range": 1.0, "n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 64},
             "AutoModelForCausalLM"),
    "t5": ("seq2seq", {"model_type": "t5", "initializer_factor": 30.0, "d_model": 32, "d_ff": 64, "num_layers": 1, "num_heads": 2, "d_kv": 16},
           "AutoModelForSeq2SeqLM"),
    "bart": ("seq2seq", {"model_type": "bart", **S2S}, "AutoModelForSeq2SeqLM"),
    "marian": ("seq2seq", {"model_type": "marian", **S2S, "init_std": 3.0}, "AutoModelForSeq2SeqLM"),
}
PROMPTS = ["reverse: a b c d", "copy: b", "sort: c a b", "reverse: e d"]


def flow(name: str, out: Path, capsys) -> tuple[list[dict], Path]:
    """Train, export --format hf, predict: (predict's rows, the exported directory)."""
    recipe, config, _ = MODELS[name]
    lm = json.dumps({"config": config})
    assert cli.main(["train", str(RECIPES / recipe / "tiny.yaml"), f"output_dir={out / 'run'}", *SMALL,
                     f"model.lm={lm}"]) == 0
    assert cli.main(["export", str(out / "run"), "--format", "hf", "--out", str(out / "hf")]) == 0
    capsys.readouterr()
    assert cli.main(["predict", str(out / "run"), *PROMPTS]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return rows, out / "hf"


def plain_transformers(name: str, hf_dir: Path, max_new_tokens: int) -> list[str]:
    """What a user of the exported directory gets from transformers alone, greedy, one prompt at a time."""
    import transformers

    model = getattr(transformers, MODELS[name][2]).from_pretrained(hf_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    out = []
    for p in PROMPTS:
        if MODELS[name][0] == "causal_lm_sft":  # the exported tokenizer carries the run's prompt template
            ids = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                          tokenize=True, return_dict=True, return_tensors="pt")["input_ids"]
        else:
            ids = tok(p, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, num_beams=1,
                                 max_new_tokens=max_new_tokens)
        new = gen[0, ids.shape[1]:] if MODELS[name][0] == "causal_lm_sft" else gen[0]
        out.append(tok.decode(new, skip_special_tokens=True))
    return out


@pytest.mark.parametrize("name", sorted(MODELS))
def test_predict_equals_plain_transformers_generate_on_the_export(name, tmp_path, capsys):
    rows, hf_dir = flow(name, tmp_path, capsys)
    assert [r["input"] for r in rows] == PROMPTS
    assert len({r["generated"] for r in rows}) > 1  # not one collapsed answer: the prompts matter
    assert [r["generated"] for r in rows] == plain_transformers(name, hf_dir, 6)
    # a copied run directory (training data gone) predicts the same
    shutil.copytree(tmp_path / "run", tmp_path / "copied")
    shutil.rmtree(tmp_path / "run")
    capsys.readouterr()
    assert cli.main(["predict", str(tmp_path / "copied"), *PROMPTS]) == 0
    assert [json.loads(x) for x in capsys.readouterr().out.splitlines()] == rows
