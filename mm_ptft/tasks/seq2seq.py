"""Sequence-to-sequence fine-tuning (translation, summarisation) of any ``AutoModelForSeq2SeqLM`` (T5, BART,
Marian, …) on source/target rows (CSV/JSON/JSONL/parquet via HF datasets, or streamed shards); loss on the target
tokens (padding -100), LoRA via ``finetune.strategy=lora``; eval: sacrebleu BLEU, ROUGE-L and exact match of the
generated text, and the target perplexity."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Iterator, Optional

import mm_ptft.data.generated.sft  # noqa: F401  (registers the seq2seq_toy generator)
from mm_ptft.config import RunConfig, SkipBadSamples, SplitData, StreamingData
from mm_ptft.contracts import GenerationConfig, Prepared
from mm_ptft.data.seq2seq import TRUNCATE, Seq2SeqCollator, Seq2SeqRow, seq2seq_length, seq2seq_records
from mm_ptft.data.stream import CountingCollate
from mm_ptft.data.table_cache import CacheFields, features, tokenizer_identity
from mm_ptft.data.tables import DataError, require_columns
from mm_ptft.heads.seq2seq import Seq2SeqTask, build_seq2seq_lm
from mm_ptft.tasks import recipe
from mm_ptft.tasks import streaming as S
from mm_ptft.tasks.cached_tables import lengths, map_records, once, prepare_tables, split_counts
from mm_ptft.tasks.common import check_choices, eval_name, generate_batched, generated_rows, load_splits, \
    predict_batch_size, save_tokenizer
from mm_ptft.types import LABELS, REFERENCE, TEXT, TEXT_MASK


@dataclass
class Seq2SeqData(SplitData, StreamingData, SkipBadSamples, CacheFields):
    """train_file: CSV/TSV/JSON/JSONL/parquet with a source and a target column (streaming: shards, globs,
    ``hf:<dataset>``); data.generate: {name: seq2seq_toy, ...} for generated pairs."""

    RANGES: ClassVar[dict[str, str]] = {"max_source_length": ">0", "max_target_length": ">0"}
    source_column: str = "source"
    target_column: str = "target"
    source_prefix: str = ""  # put before every source, e.g. T5's "translate English to German: "
    max_source_length: int = 256  # tokens, special tokens included (capped by the model's positions)
    max_target_length: int = 128
    truncate: str = "right"  # right: cut a long source/target's end (counted); error: a DataError naming the row


@dataclass
class Seq2SeqModel:
    # {name_or_path | config: {model_type: t5|bart|marian, ...}, tokenizer, vocab_size, attn_implementation,
    #  trust_remote_code}
    lm: Dict[str, Any] = field(default_factory=lambda: {"config": {
        "model_type": "bart", "d_model": 64, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
        "decoder_attention_heads": 4, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128, "max_position_embeddings": 128}})


@dataclass
class Seq2SeqConfig(RunConfig):
    task: str = "seq2seq"
    data: Seq2SeqData = field(default_factory=Seq2SeqData)
    model: Seq2SeqModel = field(default_factory=Seq2SeqModel)
    generation: GenerationConfig = field(default_factory=GenerationConfig)


def _cols(d: Seq2SeqData) -> dict[str, str]:
    return {"source": d.source_column, "target": d.target_column}


def _limits(cfg: Seq2SeqConfig, task: Seq2SeqTask) -> tuple[int, int]:
    cap = task.lm.max_length
    return min(cfg.data.max_source_length, cap), min(cfg.data.max_target_length, cap)


def _task(cfg: Seq2SeqConfig, corpus: Optional[list[str]]) -> Seq2SeqTask:
    lm = build_seq2seq_lm(cfg.model.lm, corpus, "model.lm")
    if not cfg.model.lm.get("name_or_path"):
        save_tokenizer(cfg.model.lm, lm.tokenizer, cfg.output_dir)
    return Seq2SeqTask(lm, cfg.generation)


def _records(ds: Any, cfg: Seq2SeqConfig, task: Seq2SeqTask, where: str, counters: dict[str, int], cache: Any,
             split: str) -> Any:
    """The tokenised source/target pairs of one split as the cache entry's ``split`` table."""
    d = cfg.data
    require_columns(ds, [d.source_column, d.target_column], where)

    def fn(rows: list[dict[str, Any]], numbers: list[int]) -> list[dict[str, Any]]:
        return seq2seq_records(task.lm.tokenizer, rows, _cols(d), _limits(cfg, task), where, d.skip_bad_samples,
                               counters, d.truncate, d.source_prefix, numbers)

    return map_records(ds, fn, cache, split, features(FEATURES))


FEATURES = {TEXT: "int32[]", LABELS: "int32[]", REFERENCE: "string"}  # a seq2seq_sample


def prepare(cfg: Seq2SeqConfig, train: bool = True) -> Prepared:
    """Load the source/target pairs, build (or load) the encoder-decoder and its tokenizer, tokenise both sides; the
    tokenised tables come from the preprocessing cache (``tasks/cached_tables.py``) when the same data was prepared
    the same way before."""
    check_choices(cfg, TRUNCATE)
    d = cfg.data
    if d.streaming:
        return _prepare_stream(cfg, train)
    learn = not (cfg.model.lm.get("tokenizer") or cfg.model.lm.get("name_or_path"))

    @once
    def raw() -> tuple[Any, Any]:
        train_ds, eval_ds = load_splits(cfg, train, learn=learn)
        if train_ds is not None:
            require_columns(train_ds, [d.source_column, d.target_column], d.train_file)
        return train_ds, eval_ds

    train_ds = raw()[0] if learn else None
    corpus = [str(t) for c in _cols(d).values() for t in train_ds[c] if t] if train_ds is not None else None
    task = _task(cfg, corpus)

    def build(cache: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        train_ds, eval_ds = raw()
        counters: dict[str, int] = {}
        tables = {split: _records(ds, cfg, task, where, counters, cache, split)
                  for split, ds, where in (("train", train_ds if train else None, d.train_file),
                                           ("eval", eval_ds, eval_name(d))) if ds is not None}
        return tables, {"counters": counters}

    settings = {"recipe": "seq2seq", "columns": _cols(d), "limits": _limits(cfg, task), "truncate": d.truncate,
                "prefix": d.source_prefix, "skip_bad": d.skip_bad_samples,
                "tokenizer": tokenizer_identity(task.lm.tokenizer)}
    tables, info, _ = prepare_tables(cfg, train, learn, settings, build)
    counters: dict[str, int] = {}
    split_counts(info, counters)
    tr, ev = tables.get("train"), tables.get("eval")
    for name, part in (("training", tr), ("evaluation", ev)):
        if part is not None and len(part) == 0:
            raise DataError(f"no usable {name} samples left in {d.train_file or d.eval_file} "
                            f"(skipped: {counters.get('skipped_bad_samples', 0)})")
    return Prepared(task, tr, ev, Seq2SeqCollator(task.lm.tokenizer.pad_token_id), lengths(tr, TEXT, LABELS),
                    lengths(ev, TEXT, LABELS), counters)


def _prepare_stream(cfg: Seq2SeqConfig, train: bool) -> Prepared:
    """``data.streaming``: samples tokenised in the loader workers; a learned vocabulary reads the first records."""
    d = cfg.data
    shards = S.shards_of(cfg, train)
    corpus = None
    if train and not (cfg.model.lm.get("tokenizer") or cfg.model.lm.get("name_or_path")):
        corpus = S.stream_corpus(shards[0], lambda r: f"{r.get(d.source_column) or ''} {r.get(d.target_column) or ''}")
    task = _task(cfg, corpus)
    fn = Seq2SeqRow(task.lm.tokenizer, _cols(d), _limits(cfg, task), d.skip_bad_samples, d.truncate, d.source_prefix)
    tr, ev = S.streams(cfg, shards, fn, train, length=seq2seq_length)
    return Prepared(task, tr, ev, CountingCollate(Seq2SeqCollator(task.lm.tokenizer.pad_token_id)), None, None, {})


def predict(cfg: Seq2SeqConfig, prepared: Prepared, inputs: list[Any]) -> Iterator[dict[str, Any]]:
    """The target generated (``generation`` settings) for each source text (``data.source_prefix`` put first, cut
    to ``data.max_source_length`` tokens as in training), ``train.eval_batch_size`` sources per ``generate``; rows
    come out a batch at a time."""
    task = prepared.task
    tok, limit = task.lm.tokenizer, _limits(cfg, task)[0]
    sources = [tok(cfg.data.source_prefix + str(x), truncation=True, max_length=limit)["input_ids"] for x in inputs]
    yield from generated_rows(inputs, generate_batched(task, sources, predict_batch_size(cfg), (TEXT, TEXT_MASK),
                                                       left=False))


Seq2Seq = recipe(Seq2SeqConfig, prepare, predict)
