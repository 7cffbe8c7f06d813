"""Instruction tuning: mm_ptft's ``causal_lm_sft`` recipe vs TRL's ``SFTTrainer`` on the same random-init GPT-2
config, the same tokenised instruction pairs (sft_toy: add/copy/reverse/sort), batch size, optimizer and number of
steps, with and without packing; each arm a separate process, arms and seeds interleaved.

Each process times itself with ``benchmarks.common.StepClock`` (step-end stamps from outside the loop: an mm_ptft
``Callback`` / an HF ``TrainerCallback``) over the same window (w, N], counting the tokens every training forward
of the transformers model is given (padding counted; a packed batch counts its packed row(s)); the parent times the
whole process (interpreter start to exit: imports, data, model, training, final evaluation, saving).

Both sides see the very same token ids: the pairs are formatted with the recipe's plain template and tokenised once
by the parent with the recipe's code (``data.sft.encode_chat``); mm_ptft reads the pairs as text and tokenises them
in its process, TRL gets ``input_ids`` + ``completion_mask`` (its processed-dataset form; loss on the completion).

    python benchmarks/vs_trl_sft.py [--quick] [--seeds 3] [--device cpu|cuda] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import ClockCallback, StepClock, fmt, paired_rows, script_main, section  # noqa: E402

SIZES = {"quick": {"n_train": 400, "n_eval": 8, "steps": 12, "warmup": 3, "n_embd": 128, "n_layer": 2},
         "full": {"n_train": 2000, "n_eval": 16, "steps": 30, "warmup": 6, "n_embd": 256, "n_layer": 4}}
BATCH, MAX_LEN, LR, HEADS, NEW_TOKENS = 16, 128, 1e-3, 4, 8
ARMS = ("mm_ptft causal_lm_sft", "TRL SFTTrainer")


# ---- data, made once by the parent -------------------------------------------------------------------------------

def make_data(root: Path, args: Any) -> None:
    """root/{data/train.jsonl, data/eval.jsonl} (prompt/response), root/tok (the tokenizer both sides load) and
    root/trl_{train,eval}.jsonl (the same pairs as input_ids + completion_mask)."""
    from mm_ptft.data.generated import generate
    from mm_ptft.data.sft import encode_chat
    from mm_ptft.heads.causal_lm import build_causal_lm

    files = generate({"name": "sft_toy", "n_train": args.n_train, "n_eval": args.n_eval, "seed": 0}, root / "data")
    rows = {s: [json.loads(x) for x in Path(files[f"{s}_file"]).read_text().splitlines()] for s in ("train", "eval")}
    corpus = [r[k] for r in rows["train"] for k in ("prompt", "response")]
    lm = build_causal_lm({"config": {"model_type": "gpt2", "n_embd": 8, "n_layer": 1, "n_head": 1}}, corpus)
    lm.tokenizer.save_pretrained(str(root / "tok"))
    for split, rs in rows.items():
        with open(root / f"trl_{split}.jsonl", "w") as f:
            for r in rs:
                chat = [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]
                prompt, response = encode_chat(lm.tokenizer, chat)
                f.write(json.dumps({"input_ids": prompt + response,
                                    "completion_mask": [0] * len(prompt) + [1] * len(response)}) + "\n")
        Path(root / f"{split}_file").write_text(files[f"{split}_file"])


# ---- one arm, in its own process ---------------------------------------------------------------------------------

def count_tokens(model: torch.nn.Module, clock: StepClock) -> None:
    """Record the tokens (padding counted) of every training-mode forward of the transformers ``model``."""
    def hook(mod: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if mod.training:
            clock.sizes.append(int((kwargs.get("input_ids") if "input_ids" in kwargs else args[0]).numel()))
    model.register_forward_pre_hook(hook, with_kwargs=True)


def gpt2(args: Any) -> dict[str, Any]:
    return {"model_type": "gpt2", "n_embd": args.n_embd, "n_layer": args.n_layer, "n_head": HEADS,
            "n_positions": MAX_LEN}


def run_ours(args: Any, root: Path, out: str, clock: StepClock) -> None:
    from transformers import PreTrainedModel

    from mm_ptft.contracts import Callback
    from mm_ptft.run import load_config, train

    class Tokens(Callback):
        def on_train_start(self, trainer: Any) -> None:
            count_tokens(next(m for m in trainer.task.modules() if isinstance(m, PreTrainedModel)), clock)

    cfg = load_config(ROOT / "recipes/causal_lm_sft/tiny.yaml", [
        f"output_dir={out}", f"seed={args.seed}", f"train.max_steps={args.steps}", f"train.batch_size={BATCH}",
        f"train.device={args.device}", "train.report=false", "train.log_every=100000", f"train.eval_every={args.steps}",
        "train.group_by_length=false", "train.num_workers=0", "train.keep_last=1", f"train.threads={args.threads}",
        f"optim.lr={LR}", "optim.weight_decay=0.0", "sched.warmup_steps=0", "data.generate=null",
        f"data.train_file={(root / 'train_file').read_text()}", f"data.eval_file={(root / 'eval_file').read_text()}",
        f"data.max_length={MAX_LEN}", f"data.packing={str(args.packing).lower()}",
        f"generation.max_new_tokens={NEW_TOKENS}",
        "model.lm=" + json.dumps({"config": gpt2(args), "tokenizer": str(root / "tok")})])
    train(cfg, callbacks=[Tokens(), ClockCallback(clock)])


def run_trl(args: Any, root: Path, out: str, clock: StepClock) -> None:
    import datasets
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, TrainerCallback, set_seed
    from trl import SFTConfig, SFTTrainer

    class Stamp(TrainerCallback):
        def on_step_end(self, targs, state, control, **kwargs):
            clock.stamp()

    set_seed(args.seed)
    tok = AutoTokenizer.from_pretrained(str(root / "tok"))
    spec = gpt2(args)
    cfg = AutoConfig.for_model(spec.pop("model_type"), vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                               eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, **spec)
    model = AutoModelForCausalLM.from_config(cfg)
    count_tokens(model, clock)
    datasets.disable_progress_bars()
    data = {s: datasets.load_dataset("json", data_files=str(root / f"trl_{s}.jsonl"), split="train")
            for s in ("train", "eval")}
    targs = SFTConfig(output_dir=out, max_steps=args.steps, per_device_train_batch_size=BATCH,
                      per_device_eval_batch_size=BATCH, learning_rate=LR, weight_decay=0.0, lr_scheduler_type="linear",
                      warmup_steps=0, max_grad_norm=1.0, logging_steps=100000, save_strategy="no", eval_strategy="no",
                      report_to=[], use_cpu=args.device == "cpu", seed=args.seed, disable_tqdm=True, bf16=False,
                      fp16=False, packing=args.packing, max_length=MAX_LEN, completion_only_loss=True,
                      dataloader_num_workers=0)
    trainer = SFTTrainer(model=model, args=targs, train_dataset=data["train"], eval_dataset=data["eval"],
                         processing_class=tok, callbacks=[Stamp()])
    trainer.train()
    trainer.evaluate()
    trainer.save_model(out)


def arm_main(argv: list[str]) -> None:
    """``--arm ours|trl``: one timed run; prints its StepClock timing as the last line (JSON)."""
    ap = argparse.ArgumentParser()
    for name, typ in (("arm", str), ("root", str), ("seed", int), ("packing", int), ("device", str),
                      ("threads", int), ("quick", int)):
        ap.add_argument(f"--{name}", type=typ, required=True)
    ns = ap.parse_args(argv)
    args = settings(bool(ns.quick), ns.device, ns.threads)
    args.seed, args.packing = ns.seed, bool(ns.packing)
    if ns.threads > 0:
        torch.set_num_threads(ns.threads)
    clock = StepClock(args.warmup, args.steps, args.device)
    clock.begin()
    with tempfile.TemporaryDirectory() as out:
        (run_ours if ns.arm == "ours" else run_trl)(args, Path(ns.root), out, clock)
    clock.end()
    t = clock.timing()
    t["tokens_per_s"] = t.pop("samples_per_s")
    t["window_tokens"] = float(sum(clock.sizes[args.warmup:args.steps]))
    print(json.dumps(t))


# ---- the comparison ----------------------------------------------------------------------------------------------

def settings(quick: bool, device: str = "", threads: int = 1) -> argparse.Namespace:
    return argparse.Namespace(device=device or ("cuda" if torch.cuda.is_available() else "cpu"), threads=threads,
                              quick=quick, **SIZES["quick" if quick else "full"])


def one_process(arm: str, root: Path, seed: int, packing: bool, args: Any) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--arm", arm, "--root", str(root), "--seed", str(seed), "--packing",
           str(int(packing)), "--device", args.device, "--threads", str(args.threads), "--quick", str(int(args.quick))]
    env = {**os.environ, "PYTHONPATH": str(ROOT), **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(ROOT))
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{arm} (seed {seed}, packing {packing}) failed:\n{done.stderr[-4000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process_s": wall}


def compare(quick: bool = False, seeds: int = 3, device: str = "", threads: int = 0) -> dict[str, Any]:
    args = settings(quick, device, threads or torch.get_num_threads())
    timings: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_data(root, args)
        order = [("ours", ARMS[0]), ("trl", ARMS[1])]
        for seed in range(seeds):
            for packing in (False, True):
                turn = order if (seed + packing) % 2 == 0 else order[::-1]  # ABBA...: load drift hits both
                for arm, name in turn:
                    key = f"{name}, packing {'on' if packing else 'off'}"
                    timings.setdefault(key, []).append(one_process(arm, root, seed, packing, args))
    keys = ("tokens_per_s", "window_tokens", "startup_s", "after_s", "wall_s", "process_s")
    rows = [[name, *(fmt([r[k] for r in runs], 1 if k == "tokens_per_s" else 0 if k == "window_tokens" else 2)
                     for k in keys)] for name, runs in timings.items()]
    for packing in ("off", "on"):
        ours, theirs = timings[f"{ARMS[0]}, packing {packing}"], timings[f"{ARMS[1]}, packing {packing}"]
        rows += paired_rows(ours, theirs, f"packing {packing}: mm_ptft vs TRL", keys=("tokens_per_s", "process_s"))
    notes = [f"device {args.device}, fp32, {args.threads} torch thread(s) per process; random-init GPT-2 n_embd "
             f"{args.n_embd}, {args.n_layer} layers, {HEADS} heads, {MAX_LEN} positions; {args.n_train} sft_toy pairs "
             f"(add/copy/reverse/sort, 10-40 tokens each), batch {BATCH}, {args.steps} steps, AdamW lr {LR}, linear "
             "decay, no warm-up, clip 1.0, no weight decay, random (not length-grouped) batches on both sides",
             "tokens = every token the training forwards get, padding included. Packing differs in what a batch is: "
             f"mm_ptft packs the {BATCH} samples of each batch into rows of <= {MAX_LEN} tokens (first fit; so "
             f"fewer tokens per step), TRL packs the whole set into {MAX_LEN}-token rows (best-fit decreasing) and "
             f"takes {BATCH} rows per step, flattened padding-free; both give position ids restarting per sample and "
             "no attention mask",
             "process s: the whole process as the parent saw it (interpreter start, imports, data, model, training, "
             f"final evaluation, saving). After s: mm_ptft's final evaluation on {args.n_eval} pairs includes greedy "
             f"generation (<= {NEW_TOKENS} tokens) and its checkpoint; TRL's evaluate() computes the loss only, then "
             "save_model()",
             "TRL is given the pairs already tokenised (input_ids + completion_mask, the very ids mm_ptft's tokeniser "
             "makes); mm_ptft tokenises its text rows inside its process"]
    return section("issue-25: instruction tuning vs TRL SFTTrainer", f"tokens/s over steps ({args.warmup}, "
                   f"{args.steps}] (step-end stamps outside each loop, same w, N on both sides); start-up = process's "
                   "arm start -> end of step 1; process s = the whole process, timed by the parent",
                   ["arm", "tokens/s", "window tokens", "start-up s", "after s", "wall s", "process s"], rows,
                   seeds=seeds, quick=quick, notes=notes, raw={"timings": timings})


def main() -> None:
    script_main(compare, __doc__.split("\n")[0])


if __name__ == "__main__":
    if "--arm" in sys.argv:
        arm_main(sys.argv[1:])
    else:
        main()
