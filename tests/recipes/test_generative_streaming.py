"""Generation is streamed (issue 25, "stream predictions to metrics, never hold all logits"):

- ``mm-ptft predict`` writes each batch's rows before the next batch is generated: a spy on ``generate`` reads what
  stdout holds when each batch starts (0, 2, 4 rows for 6 inputs two at a time), for the causal LM and the seq2seq
  recipe; ``run.predict_rows`` is lazy (one ``generate`` for the first row).
- evaluation drops every logits tensor before the metrics see its batch: weak references to each logits tensor the
  model returns (forward hooks, also inside ``generate``) are all dead at every metric update of a 48-sample eval
  set, the outputs handed to the metrics hold 0-dim tensors only, and the metric state after the pass is sums."""
from __future__ import annotations

import contextlib
import io
import json
import sys
import weakref
from pathlib import Path

import pytest
import torch

from mm_ptft import cli
from mm_ptft.heads.generative import GenerativeLMTask
from mm_ptft.metrics.generation import GENERATED, GenerationMetrics
from mm_ptft.run import predict, predict_rows, train
from mm_ptft.tasks import get_recipe, load_config

from mm_paths import ROOT

RECIPES = Path(ROOT) / "recipes"
SMALL = ["train.report=false", "train.max_steps=1", "train.batch_size=8", "train.eval_batch_size=2",
         "train.eval_every=1000", "data.generate.n_train=16", "data.generate.n_eval=4", "generation.max_new_tokens=3"]
MODELS = {
    "causal_lm_sft": {"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 64},
    "seq2seq": {"model_type": "bart", "d_model": 32, "encoder_layers": 1, "decoder_layers": 1,
                "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_ffn_dim": 64,
                "decoder_ffn_dim": 64, "max_position_embeddings": 64},
}
PROMPTS = ["reverse: a b c d", "copy: b", "sort: c a b", "reverse: e d", "copy: a a", "sort: b a"]


def cfg_of(recipe: str, out: Path, *extra: str):
    return load_config(RECIPES / recipe / "tiny.yaml", [f"output_dir={out}", *SMALL,
                                                        f"model.lm={json.dumps({'config': MODELS[recipe]})}", *extra])


@pytest.fixture(scope="module", params=sorted(MODELS))
def run(request, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp(request.param) / "run"
    train(cfg_of(request.param, out))
    return out


def spy_generate(monkeypatch, seen: list, probe) -> None:
    """Record ``probe()`` each time a batch starts generating."""
    real = GenerativeLMTask.generate

    def generate(self, batch, gen=None):
        seen.append(probe())
        return real(self, batch, gen)

    monkeypatch.setattr(GenerativeLMTask, "generate", generate)


def test_predict_writes_each_batch_before_the_next_is_generated(run, monkeypatch):
    want = predict(run, PROMPTS)  # the same rows, all at once
    out, seen = io.StringIO(), []
    spy_generate(monkeypatch, seen, lambda: out.getvalue().count("\n"))
    monkeypatch.setattr(sys, "stdout", out)
    assert cli.main(["predict", str(run), *PROMPTS]) == 0
    assert seen == [0, 2, 4]  # train.eval_batch_size=2: three generate calls, the rows before each already written
    assert [json.loads(x) for x in out.getvalue().splitlines()] == want


def test_predict_rows_is_lazy(run, monkeypatch):
    seen: list = []
    spy_generate(monkeypatch, seen, lambda: None)
    rows = predict_rows(run, PROMPTS)
    first = next(rows)
    assert first["input"] == PROMPTS[0] and len(seen) == 1
    assert [first["input"], *(r["input"] for r in rows)] == PROMPTS and len(seen) == 3


class WatchedMetrics(GenerationMetrics):
    """GenerationMetrics that, at each update, checks that no logits tensor the model returned so far is alive."""

    def __init__(self, logits: list, bleu: bool) -> None:
        super().__init__(bleu=bleu)
        self.logits, self.updates, self.seen = logits, 0, 0

    def update(self, out, batch) -> None:
        assert self.logits and all(ref() is None for ref in self.logits), "a logits tensor outlived its forward"
        assert all(v.dim() == 0 for v in out.values() if torch.is_tensor(v)), {k: getattr(v, "shape", None)
                                                                                for k, v in out.items()}
        assert isinstance(out[GENERATED], list) and all(isinstance(t, str) for t in out[GENERATED])
        self.updates, self.seen = self.updates + 1, len(self.logits)
        super().update(out, batch)


@pytest.mark.parametrize("recipe", sorted(MODELS))
def test_evaluation_holds_no_logits_and_the_metric_state_is_sums(recipe, tmp_path):
    from torch.utils.data import DataLoader

    from mm_ptft.train.evaluation import run_evaluation

    cfg = cfg_of(recipe, tmp_path / "run", "data.generate.n_eval=48")
    prepared = get_recipe(recipe).prepare(cfg)
    task = prepared.task
    logits: list = []
    task.lm.model.register_forward_hook(lambda m, args, output: logits.append(weakref.ref(output.logits)))
    watched = WatchedMetrics(logits, bleu=recipe == "seq2seq")
    task.build_metrics = lambda: watched
    loader = DataLoader(prepared.eval_data, batch_size=4, collate_fn=prepared.collate)
    result = run_evaluation(task, task, loader, prepared.collate, torch.device("cpu"), contextlib.nullcontext,
                            False, False)
    assert watched.updates == 12 and watched.seen > 12  # loss forwards plus generate's own
    assert {"exact_match", "rougeL", "perplexity"} <= set(result.results)
    assert all(v.dim() == 0 for v in watched.sums.compute().values())  # sums, not per-sample lists
    assert float(watched.sums["samples"].compute()) == 48
