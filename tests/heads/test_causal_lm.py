"""The SFT loss against transformers' own (labels -100 on the prompt) and a hand-computed masked cross-entropy,
for random-init GPT-2 and Llama; packing against the same samples unpacked, per sample; packing refused where the
attention leaks across samples (OPT); generation equals the model's own ``generate``."""
from __future__ import annotations

import json
import random

import pytest
import torch

from mm_ptft.contracts import GenerationConfig
from mm_ptft.data.generated.sft import toy_pair
from mm_ptft.data.sft import IGNORE, SFTCollator, sft_records
from mm_ptft.heads.causal_lm import CausalLMTask, build_causal_lm, check_packing

COLS = {"prompt": "prompt", "response": "response", "messages": "messages"}
CONFIGS = {
    "gpt2": {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64,
             "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
    "llama": {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64},
}


def rows(n: int = 6, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [dict(zip(("prompt", "response"), toy_pair(rng))) for _ in range(n)]


def build(kind: str) -> CausalLMTask:
    torch.manual_seed(0)
    corpus = [t for r in rows(50) for t in r.values()]
    return CausalLMTask(build_causal_lm({"config": CONFIGS[kind]}, corpus), GenerationConfig(max_new_tokens=6))


def hand_loss(model, items) -> tuple[float, list[float]]:
    """Token-mean NLL of the response tokens, and each sample's mean, from each sample run alone."""
    total, count, per = 0.0, 0, []
    for it in items:
        ids = torch.tensor([it["text"]])
        logp = model(input_ids=ids).logits[0].double().log_softmax(-1)  # (L, V)
        nll = [-float(logp[t - 1, ids[0, t]]) for t in range(len(it["text"])) if it["labels"][t] != IGNORE]
        total, count = total + sum(nll), count + len(nll)
        per.append(sum(nll) / len(nll))
    return total / count, per


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_loss_equals_transformers_masked_loss_and_a_hand_computation(kind):
    task = build(kind).train()
    items = sft_records(task.lm.tokenizer, rows(), COLS, 64, "rows", False, {})
    assert all(it["labels"][: it["prompt_len"]] == [IGNORE] * it["prompt_len"] for it in items)
    batch = SFTCollator(task.lm.tokenizer.pad_token_id)(items)
    ours = task(batch)["loss"]
    theirs = task.lm.model(input_ids=batch["text"], attention_mask=batch["text_mask"], labels=batch["labels"]).loss
    assert abs(float(ours.detach()) - float(theirs.detach())) <= 1e-5
    assert float(ours) == pytest.approx(hand_loss(task.lm.model, items)[0], abs=1e-5)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_packed_batch_gives_each_sample_the_loss_it_has_alone(kind):
    task = build(kind).train()
    items = sft_records(task.lm.tokenizer, rows(7), COLS, 64, "rows", False, {})
    packed = SFTCollator(task.lm.tokenizer.pad_token_id, pack=True, pack_length=40)(items)
    assert packed["text"].shape[0] < len(items) and int(packed["packed_samples"].sum()) == len(items)
    unpacked = SFTCollator(task.lm.tokenizer.pad_token_id)(items)
    assert float(task(packed)["loss"]) == pytest.approx(float(task(unpacked)["loss"]), abs=1e-5)
    theirs = task.lm.model(input_ids=unpacked["text"], attention_mask=unpacked["text_mask"],
                           labels=unpacked["labels"]).loss  # transformers' own loss on the same samples unpacked
    assert abs(float(task(packed)["loss"]) - float(theirs)) <= 1e-5
    logp = task.logits(packed).double().log_softmax(-1)  # (R, L, V)
    _, alone = hand_loss(task.lm.model, items)
    got, pos = [], packed["position_ids"]
    for r in range(pos.shape[0]):
        starts = [t for t in range(pos.shape[1]) if pos[r, t] == 0]
        for s, e in zip(starts, starts[1:] + [pos.shape[1]]):
            nll = [-float(logp[r, t - 1, packed["text"][r, t]]) for t in range(s + 1, e)
                   if packed["labels"][r, t] != IGNORE]
            got += [sum(nll) / len(nll)] if nll else []  # the tail padding has no labels
    assert sorted(got) == pytest.approx(sorted(alone), abs=1e-5)  # first-fit packing reorders the samples


def test_packing_is_refused_where_attention_crosses_samples():
    from transformers import AutoConfig, AutoModelForCausalLM

    opt = AutoModelForCausalLM.from_config(AutoConfig.for_model(
        "opt", vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, ffn_dim=64,
        word_embed_proj_dim=32))
    with pytest.raises(ValueError, match="data.packing=true: OPTForCausalLM .* attend to the one before"):
        check_packing(opt, "data.packing")
    check_packing(build("llama").lm.model, "data.packing")  # isolates: no error


@pytest.mark.parametrize("strategy", ["greedy", "beam", "sample"])
def test_generate_is_the_models_own_generate_and_sampling_repeats_by_seed(strategy):
    task = build("gpt2").eval()
    items = sft_records(task.lm.tokenizer, rows(4), COLS, 64, "rows", False, {})
    batch = SFTCollator(task.lm.tokenizer.pad_token_id)(items)
    gen = GenerationConfig(max_new_tokens=5, strategy=strategy, num_beams=3, seed=7)
    a = task.generate_ids(batch["prompt"], batch["prompt_mask"], gen)
    assert a.shape[1] <= 5
    if strategy == "sample":
        assert torch.equal(a, task.generate_ids(batch["prompt"], batch["prompt_mask"], gen))
        return
    ref = task.lm.model.generate(input_ids=batch["prompt"], attention_mask=batch["prompt_mask"], max_new_tokens=5,
                                 do_sample=False, num_beams=3 if strategy == "beam" else 1,
                                 pad_token_id=task.lm.tokenizer.pad_token_id)[:, batch["prompt"].shape[1]:]
    assert torch.equal(a, ref)
    assert task.generate(batch, gen) == task.lm.tokenizer.batch_decode(ref, skip_special_tokens=True)


def test_bad_strategy_is_refused_naming_the_key():
    with pytest.raises(ValueError, match="generation.strategy='topk'"):
        GenerationConfig(strategy="topk").hf_kwargs()


def _causal_only(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
    """An attention implementation that is causal by place in the row and ignores the mask transformers builds
    (so also the sample bounds a packed row's position ids give): what packing must refuse."""
    rep = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(rep, 1), value.repeat_interleave(rep, 1)  # (B, H, L, d)
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling)
    return out.transpose(1, 2).contiguous(), None  # (B, L, H, d)


def test_an_attn_implementation_that_crosses_samples_is_refused_naming_the_keys(tmp_path):
    from transformers import AttentionInterface

    from mm_ptft.tasks import load_config
    from mm_ptft.tasks.causal_lm_sft import prepare

    from mm_paths import ROOT

    AttentionInterface.register("causal_only", _causal_only)
    lm = json.dumps({"config": CONFIGS["llama"], "attn_implementation": "causal_only"})
    small = ["data.generate.n_train=16", "data.generate.n_eval=4", f"model.lm={lm}"]
    tiny = f"{ROOT}/recipes/causal_lm_sft/tiny.yaml"
    with pytest.raises(ValueError, match=r"data.packing=true: LlamaForCausalLM with "
                                         r"model.lm.attn_implementation='causal_only' lets a packed sample attend .* "
                                         r"set data.packing=false, or model.lm.attn_implementation to"):
        prepare(load_config(tiny, [f"output_dir={tmp_path / 'a'}", *small, "data.packing=true"]))
    assert prepare(load_config(tiny, [f"output_dir={tmp_path / 'b'}", *small])).task.lm.model.config \
        ._attn_implementation == "causal_only"  # unpacked, the same model is fine
    for impl in ("sdpa", "eager"):  # transformers' own keep packed samples apart
        spec = {"config": CONFIGS["llama"], "attn_implementation": impl}
        check_packing(build_causal_lm(spec, [t for r in rows(20) for t in r.values()]).model, "data.packing")
