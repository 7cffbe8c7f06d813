"""The causal_lm_sft recipe end to end on generated pairs: trains and evaluates (streamed generation metrics equal
a recomputation with rouge-score), LoRA merged on export, ``export --format hf`` loadable by
``AutoModelForCausalLM`` and ``pipeline("text-generation")`` with the same greedy tokens as ``mm-ptft predict``,
chat data through a tokenizer's chat template, packing, streaming, and bad rows named or counted."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mm_ptft.data.generated import generate
from mm_ptft.data.tables import DataError
from mm_ptft.run import load_run, predict, train
from mm_ptft.tasks import load_config

from mm_paths import ROOT

TINY = Path(ROOT) / "recipes" / "causal_lm_sft" / "tiny.yaml"
SMALL = ["train.report=false", "train.epochs=1", "data.generate.n_train=96", "data.generate.n_eval=16",
         "train.batch_size=16", "generation.max_new_tokens=4",
         "model.lm.config={model_type: gpt2, n_embd: 32, n_layer: 1, n_head: 2, n_positions: 64}"]


def run_cfg(out: Path, *extra: str):
    return load_config(TINY, [f"output_dir={out}", *SMALL, *extra])


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sft_lora")
    return out, train(run_cfg(out, "finetune.strategy=lora", "finetune.lora_r=4", "optim.lr=0.01"))


@pytest.mark.slow  # trains a run (about 10-30 s on a shared 2-core machine)
def test_trains_evaluates_and_the_streamed_metrics_recompute(lora_run):
    from rouge_score import rouge_scorer

    out, results = lora_run
    assert {"perplexity", "exact_match", "rougeL", "loss"} <= set(results)
    assert results["perplexity"] == pytest.approx(float(torch.tensor(results["response_nll"]).exp()), rel=1e-6)
    cfg, prepared, _ = load_run(out)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    items = [prepared.eval_data[i] for i in range(len(prepared.eval_data))]
    batch = prepared.collate(items)
    gen = prepared.task.generate(batch)
    assert results["exact_match"] == pytest.approx(sum(" ".join(g.split()) == r for g, r in
                                                       zip(gen, batch["reference"])) / len(items))
    assert results["rougeL"] == pytest.approx(sum(scorer.score(r, g)["rougeL"].fmeasure for g, r in
                                                  zip(gen, batch["reference"])) / len(items), abs=1e-6)


@pytest.mark.slow  # trains a run (about 10-30 s on a shared 2-core machine)
def test_lora_adapters_train_alone_and_merge_into_the_hf_export(lora_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    from mm_ptft.run.hub import export_pretrained

    out, _ = lora_run
    cfg, prepared, _ = load_run(out)
    names = [n for n, _ in prepared.task.named_parameters()]
    assert any("lora_A" in n for n in names)
    hf_dir = tmp_path / "hf"
    export_pretrained(out, "hf", hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    tok = AutoTokenizer.from_pretrained(hf_dir)
    assert not any("lora" in n for n, _ in model.named_parameters())
    prompts = ["reverse: a b c", "sort: c a b"]
    ours = predict(out, prompts)
    from mm_ptft.data.sft import plain_prompt

    for p, row in zip(prompts, ours):
        text = plain_prompt([{"role": "user", "content": p}])
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        if tok.bos_token_id is not None:
            ids = torch.cat([torch.tensor([[tok.bos_token_id]]), ids], 1)
        new = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=cfg.generation.max_new_tokens)[0, ids.shape[1]:]
        assert row["generated"] == tok.decode(new, skip_special_tokens=True)
    pipe = pipeline("text-generation", model=model, tokenizer=tok)
    got = pipe(plain_prompt([{"role": "user", "content": prompts[0]}]), max_new_tokens=cfg.generation.max_new_tokens,
               do_sample=False, return_full_text=False)
    assert isinstance(got[0]["generated_text"], str)


def test_chat_messages_use_the_tokenizers_chat_template_and_packing_trains(tmp_path):
    files = generate({"name": "sft_toy", "n_train": 64, "n_eval": 16, "chat": True, "seed": 3}, tmp_path / "data")
    cfg = run_cfg(tmp_path / "run", "data.generate=null", f"data.train_file={files['train_file']}",
                  f"data.eval_file={files['eval_file']}", "data.packing=true")
    from mm_ptft.tasks.causal_lm_sft import prepare

    prepared = prepare(cfg)
    tok = prepared.task.lm.tokenizer
    packed = prepared.collate([prepared.train_data[i] for i in range(8)])
    assert "position_ids" in packed and packed["text"].shape[0] < 8
    evaluated = prepared.collate([prepared.eval_data[i] for i in range(4)])
    assert "prompt" in evaluated  # eval batches stay padded, with prompts to generate from
    # a tokenizer with a chat template: the prompt is what apply_chat_template renders up to the assistant turn
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
                         "{% if add_generation_prompt %}<assistant> {% endif %}")
    from mm_ptft.data.sft import sft_sample

    row = json.loads(Path(files["train_file"]).read_text().splitlines()[0])
    item = sft_sample(tok, row, {"prompt": "prompt", "response": "response", "messages": "messages"}, 64, "f", 0, {})
    want = tok.apply_chat_template(row["messages"][:1], add_generation_prompt=True, tokenize=True)
    want = want["input_ids"] if isinstance(want, dict) or hasattr(want, "keys") else want
    assert item["text"][: item["prompt_len"]] == list(want)


@pytest.mark.parametrize("row, message", [
    ({"prompt": "copy: a", "response": ""}, "row 1: the last message must be a non-empty assistant turn"),
    ({"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "a"}]},
     "row 1: unknown message role 'wizard'"),
    ({"prompt": "copy: " + "a " * 200, "response": "a"}, None),  # truncated from the left and counted
])
def test_bad_rows_are_named_or_counted(tmp_path, row, message):
    good = [{"prompt": "copy: a b", "response": "a b"}] * 8
    rows = [good[0], row, *good]
    if "messages" in row:
        rows = [{"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]}
                if "prompt" in r else r for r in rows]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = ["data.generate=null", f"data.train_file={path}", f"data.eval_file={path}"]
    from mm_ptft.tasks.causal_lm_sft import prepare

    if message is None:
        prepared = prepare(run_cfg(tmp_path / "t", *base))
        assert prepared.counters["truncated_prompts"] == 2  # the file is both the training and the eval file
        with pytest.raises(DataError, match="row 1: prompt\\+response is .* over data.max_length=64"):
            prepare(run_cfg(tmp_path / "e", *base, "data.truncate=error"))
        return
    with pytest.raises(DataError, match=message):
        prepare(run_cfg(tmp_path / "a", *base))
    prepared = prepare(run_cfg(tmp_path / "b", *base, "data.skip_bad_samples=true"))
    assert prepared.counters["skipped_bad_samples"] == 2  # once in the training file, once in the eval file


def test_missing_columns_and_bad_keys_are_named(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("question,answer\nq,a\n")
    from mm_ptft.config import ConfigError
    from mm_ptft.tasks.causal_lm_sft import prepare

    with pytest.raises(DataError, match="needs columns 'prompt' and 'response', or 'messages'"):
        prepare(run_cfg(tmp_path / "a", "data.generate=null", f"data.train_file={path}", f"data.eval_file={path}"))
    with pytest.raises(ConfigError, match="generation.strategy='nucleus'"):
        prepare(run_cfg(tmp_path / "b", "generation.strategy=nucleus"))


@pytest.mark.slow  # trains a run (about 10-30 s on a shared 2-core machine)
def test_streaming_trains_and_evaluates(tmp_path):
    files = generate({"name": "sft_toy", "n_train": 64, "n_eval": 16, "seed": 4}, tmp_path / "data")
    results = train(run_cfg(tmp_path / "run", "data.generate=null", f"data.train_file={files['train_file']}",
                            f"data.eval_file={files['eval_file']}", "data.streaming=true", "train.max_steps=4",
                            "data.shuffle_block=16"))
    assert {"exact_match", "perplexity"} <= set(results)


@pytest.mark.parametrize("chat, streaming", [(False, False), (True, False), (False, True)])
def test_a_learned_vocabulary_tokenises_the_plain_template_without_unknown_tokens(tmp_path, chat, streaming):
    """Digit sums alone hold neither ``#`` nor the letters of ``System``/``User``/``Assistant``: the vocabulary
    learned from them must still cover the template, and the saved tokenizer decodes it back to its words."""
    from tokenizers import normalizers, pre_tokenizers
    from transformers import AutoTokenizer

    from mm_ptft.data.sft import encode_chat, plain_prompt
    from mm_ptft.tasks.causal_lm_sft import prepare

    files = generate({"name": "sft_toy", "n_train": 64, "n_eval": 8, "ops": ["add"], "chat": chat}, tmp_path / "d")
    cfg = run_cfg(tmp_path / "run", "data.generate=null", f"data.train_file={files['train_file']}",
                  f"data.eval_file={files['eval_file']}", f"data.streaming={str(streaming).lower()}",
                  "train.max_steps=2")
    prepared = prepare(cfg)
    chat_ = [{"role": "system", "content": "add"}, {"role": "user", "content": "add: 3 4"},
             {"role": "assistant", "content": "7"}]
    saved = AutoTokenizer.from_pretrained(tmp_path / "run" / "tokenizer")  # what the run directory keeps
    for tok in (prepared.task.lm.tokenizer, saved):
        prompt, response = encode_chat(tok, chat_)
        assert tok.unk_token_id not in prompt + response, tok.convert_ids_to_tokens(prompt)
        # the reference: the text as BERT's normaliser and pre-tokenizer split it (a WordPiece decode joins words)
        text = normalizers.BertNormalizer(lowercase=True).normalize_str(plain_prompt(chat_[:-1]))
        words = [w for w, _ in pre_tokenizers.BertPreTokenizer().pre_tokenize_str(text)]
        assert tok.decode(prompt, skip_special_tokens=True) == " ".join(words)


def test_a_given_tokenizer_that_cannot_tokenise_the_plain_template_is_refused(tmp_path):
    from mm_ptft.encoders.text import train_wordpiece

    train_wordpiece(["1 2 3", "add"], 50).save_pretrained(tmp_path / "tok")
    with pytest.raises(ValueError, match="model.lm: the tokenizer turns the plain prompt template .* unknown tokens"):
        from mm_ptft.tasks.causal_lm_sft import prepare

        prepare(run_cfg(tmp_path / "run", f"model.lm.tokenizer={tmp_path / 'tok'}"))
