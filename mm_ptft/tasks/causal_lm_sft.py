"""Supervised fine-tuning (instruction tuning) of any causal LM on prompt/response rows or chat ``messages``
(CSV/JSON/JSONL/parquet via HF datasets, or streamed shards); loss on the responses only, optional packing, LoRA via
``finetune.strategy=lora``; eval: response perplexity and the generated text's exact match and ROUGE-L."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Iterator, Optional

import mm_ptft.data.generated.sft  # noqa: F401  (registers the sft_toy generator)
from mm_ptft.config import RunConfig
from mm_ptft.contracts import GenerationConfig, Prepared
from mm_ptft.data.sft import PROMPT, PROMPT_MASK, UNPACKED, SFTCollator, SFTRow, check_template, sft_length, \
    sft_records, template_texts
from mm_ptft.data.stream import CountingCollate
from mm_ptft.data.table_cache import CacheFields, features, tokenizer_identity
from mm_ptft.data.tables import DataError
from mm_ptft.heads.causal_lm import CausalLMTask, build_causal_lm, check_packing
from mm_ptft.tasks import recipe
from mm_ptft.tasks import streaming as S
from mm_ptft.tasks.cached_tables import lengths, map_records, once, prepare_tables, split_counts
from mm_ptft.tasks.common import check_choices, eval_name, generate_batched, generated_rows, load_splits, \
    predict_batch_size, save_tokenizer
from mm_ptft.types import LABELS, REFERENCE, TEXT


@dataclass
class SFTData(CacheFields):
    RANGES: ClassVar[dict[str, str]] = {"eval_fraction": "(0, 1)", "max_length": ">0", "shuffle_block": ">0",
                                        "pad_to_multiple_of": ">0"}  # checked by config.parse
    train_file: str = ""  # a file; with streaming also a glob, brace range, directory of shards or hf:<dataset>
    eval_file: str = ""  # empty: a seeded split of train_file (eval_fraction)
    prompt_column: str = "prompt"
    response_column: str = "response"
    messages_column: str = "messages"  # a row with this column is a chat (list of {role, content})
    eval_fraction: float = 0.1
    max_length: int = 512  # prompt + response tokens; also the packed row length
    truncate: str = "left"  # left: drop a long prompt's first tokens (counted); error: a DataError naming the row
    packing: bool = False  # training samples laid end to end (attention kept inside each, or refused)
    pad_to_multiple_of: int = 1
    skip_bad_samples: bool = False
    generate: Optional[Dict[str, Any]] = None  # {name: <data generator>, ...}: generated data
    streaming: bool = False  # read shards lazily (data bigger than memory); needs train.max_steps
    shuffle_block: int = 1000


@dataclass
class SFTModel:
    # {name_or_path | config: {model_type, ...}, tokenizer, vocab_size, attn_implementation, trust_remote_code}
    lm: Dict[str, Any] = field(default_factory=lambda: {"config": {"model_type": "gpt2", "n_embd": 64,
                                                                   "n_layer": 2, "n_head": 4}})


@dataclass
class CausalLMSFTConfig(RunConfig):
    task: str = "causal_lm_sft"
    data: SFTData = field(default_factory=SFTData)
    model: SFTModel = field(default_factory=SFTModel)
    generation: GenerationConfig = field(default_factory=GenerationConfig)


def _cols(d: SFTData) -> dict[str, str]:
    return {"prompt": d.prompt_column, "response": d.response_column, "messages": d.messages_column}


def _require(ds: Any, d: SFTData, where: str) -> None:
    if ds is not None and d.messages_column not in ds.column_names \
            and not {d.prompt_column, d.response_column} <= set(ds.column_names):
        raise DataError(f"{where}: needs columns {d.prompt_column!r} and {d.response_column!r}, or "
                        f"{d.messages_column!r}; it has {ds.column_names} (set data.*_column to the right names)")


def _records(ds: Any, cfg: CausalLMSFTConfig, tokenizer: Any, where: str, max_length: int, counters: dict[str, int],
             cache: Any, split: str) -> Any:
    """The tokenised samples of one split (prompt masked) as the cache entry's ``split`` table; evaluation samples
    are marked ``UNPACKED`` (collated padded, with the prompt to generate from)."""
    d = cfg.data
    _require(ds, d, where)

    def fn(rows: list[dict[str, Any]], numbers: list[int]) -> list[dict[str, Any]]:
        return sft_records(tokenizer, rows, _cols(d), max_length, where, d.skip_bad_samples, counters, d.truncate,
                           numbers)

    spec = {**FEATURES, UNPACKED: "bool"} if split == "eval" else FEATURES
    return map_records(ds, fn, cache, split, features(spec), {UNPACKED: True} if split == "eval" else None)


FEATURES = {TEXT: "int32[]", LABELS: "int32[]", "prompt_len": "int64", REFERENCE: "string"}  # an sft_sample


def _corpus(ds: Any, d: SFTData) -> Optional[list[str]]:
    """Texts a random-init model's tokenizer learns its vocabulary from: prompts, responses, chat turns, and the plain
    template's headers once per row (``template_texts``), so that the template itself has no unknown tokens."""
    if ds is None:
        return None
    if d.messages_column in ds.column_names:
        texts = [m["content"] for ms in ds[d.messages_column] for m in ms or [] if isinstance(m.get("content"), str)]
    else:
        texts = [str(t) for c in (d.prompt_column, d.response_column) for t in ds[c] if t]
    return texts + template_texts(len(ds))


def _check(cfg: CausalLMSFTConfig) -> None:
    check_choices(cfg, ("left", "error"))


def _task(cfg: CausalLMSFTConfig, corpus: Optional[list[str]]) -> tuple[CausalLMTask, int]:
    lm = build_causal_lm(cfg.model.lm, corpus, "model.lm")
    check_template(lm.tokenizer, "model.lm")
    if not cfg.model.lm.get("name_or_path"):
        save_tokenizer(cfg.model.lm, lm.tokenizer, cfg.output_dir)
    if cfg.data.packing:
        check_packing(lm.model, "data.packing")
    return CausalLMTask(lm, cfg.generation), min(cfg.data.max_length, lm.max_length)


def prepare(cfg: CausalLMSFTConfig, train: bool = True) -> Prepared:
    """Load the pairs or chats, build (or load) the causal LM and its tokenizer, tokenise with the prompt masked; the
    tokenised tables come from the preprocessing cache (``tasks/cached_tables.py``) when the same data was prepared
    the same way before."""
    _check(cfg)
    d = cfg.data
    if d.streaming:
        return _prepare_stream(cfg, train)
    learn = not (cfg.model.lm.get("tokenizer") or cfg.model.lm.get("name_or_path"))

    @once
    def raw() -> tuple[Any, Any]:
        train_ds, eval_ds = load_splits(cfg, train, learn=learn)
        _require(train_ds, d, d.train_file)
        return train_ds, eval_ds

    task, max_len = _task(cfg, _corpus(raw()[0], d) if learn else None)
    tok = task.lm.tokenizer

    def build(cache: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        train_ds, eval_ds = raw()
        counters: dict[str, int] = {}
        tables = {split: _records(ds, cfg, tok, where, max_len, counters, cache, split)
                  for split, ds, where in (("train", train_ds if train else None, d.train_file),
                                           ("eval", eval_ds, eval_name(d))) if ds is not None}
        return tables, {"counters": counters}

    settings = {"recipe": "causal_lm_sft", "columns": _cols(d), "max_length": max_len, "truncate": d.truncate,
                "skip_bad": d.skip_bad_samples, "tokenizer": tokenizer_identity(tok)}
    tables, info, _ = prepare_tables(cfg, train, learn, settings, build)
    counters: dict[str, int] = {}
    split_counts(info, counters)
    tr, ev = tables.get("train"), tables.get("eval")
    for name, part in (("training", tr), ("evaluation", ev)):
        if part is not None and len(part) == 0:
            raise DataError(f"no usable {name} samples left in {d.train_file or d.eval_file} "
                            f"(skipped: {counters.get('skipped_bad_samples', 0)})")
    collate = _collate(cfg, tok.pad_token_id, max_len, train)
    return Prepared(task, tr, ev, collate, lengths(tr, TEXT), lengths(ev, TEXT), counters)


def _collate(cfg: CausalLMSFTConfig, pad_id: int, max_len: int, train: bool) -> SFTCollator:
    return SFTCollator(pad_id, cfg.data.packing and train, max_len, cfg.data.pad_to_multiple_of)


def _prepare_stream(cfg: CausalLMSFTConfig, train: bool) -> Prepared:
    """``data.streaming``: samples tokenised in the loader workers; a learned vocabulary reads the first records."""
    d = cfg.data
    S.unsupported(packing=d.packing)
    shards = S.shards_of(cfg, train)
    corpus = None
    if train and not (cfg.model.lm.get("tokenizer") or cfg.model.lm.get("name_or_path")):
        corpus = S.stream_corpus(shards[0], lambda r: " ".join(
            [str(r.get(d.prompt_column) or ""), str(r.get(d.response_column) or "")]
            + [m.get("content", "") for m in r.get(d.messages_column) or []]))
        corpus = corpus + template_texts(len(corpus)) if corpus is not None else None
    task, max_len = _task(cfg, corpus)
    fn = SFTRow(task.lm.tokenizer, _cols(d), max_len, d.skip_bad_samples, d.truncate)
    tr, ev = S.streams(cfg, shards, fn, train, length=sft_length)
    collate = CountingCollate(SFTCollator(task.lm.tokenizer.pad_token_id, False, max_len, d.pad_to_multiple_of))
    return Prepared(task, tr, ev, collate, None, None, {})


def predict(cfg: CausalLMSFTConfig, prepared: Prepared, inputs: list[Any]) -> Iterator[dict[str, Any]]:
    """The response generated (``generation`` settings) for each prompt text or chat (list of messages), formatted
    as in training, ``train.eval_batch_size`` prompts per ``generate``; rows come out a batch at a time (every
    input is checked before the first is generated)."""
    from mm_ptft.data.sft import encode_chat, check_messages

    task = prepared.task
    tok = task.lm.tokenizer
    prompts = []
    for i, x in enumerate(inputs):
        chat = x if isinstance(x, list) else [{"role": "user", "content": str(x)}]
        msgs = check_messages([*chat, {"role": "assistant", "content": "-"}], "input", i)
        prompts.append(encode_chat(tok, msgs)[0][-cfg.data.max_length:])
    yield from generated_rows(inputs, generate_batched(task, prompts, predict_batch_size(cfg), (PROMPT, PROMPT_MASK),
                                                       left=True))


CausalLMSFT = recipe(CausalLMSFTConfig, prepare, predict)
