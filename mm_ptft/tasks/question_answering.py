"""Extractive question answering (SQuAD) with any text encoder that transformers' ``AutoModelForQuestionAnswering``
puts a span head on (BERT, RoBERTa, DistilBERT, ELECTRA, MiniLM…: ``model.text`` by hub id, directory or random-init
config): SQuAD JSON (v1.1; v2.0 with ``data.version_2_with_negative``) or a CSV/JSONL/parquet/``hf:`` table, long
contexts in strided windows, eval and ``predict`` answers mapped back to character offsets, SQuAD exact match / F1.
The windows are prepared once and kept in the preprocessing cache (``tasks/cached_tables.py``)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, Iterator, Mapping

import mm_ptft.data.generated.qa  # noqa: F401  (registers the qa_toy generator)
from mm_ptft.config import ConfigError, RunConfig, SkipBadSamples, SplitData
from mm_ptft.contracts import Prepared
from mm_ptft.data import qa as Q
from mm_ptft.data.table_cache import CacheFields, features, tokenizer_identity
from mm_ptft.data.tables import DataError, require_columns
from mm_ptft.encoders import TEXT_ENCODERS, build_encoder
from mm_ptft.heads.question_answering import QuestionAnsweringTask, SpanSearch
from mm_ptft.metrics.question_answering import ANSWER_SPANS
from mm_ptft.tasks import recipe
from mm_ptft.tasks.cached_tables import learned_tokenizer, lengths, map_table, once, prepare_tables, split_counts
from mm_ptft.tasks.common import eval_name, load_splits, predict_batch_size, save_tokenizer
from mm_ptft.types import TEXT, TEXT_SEGMENTS


@dataclass
class QAData(SplitData, SkipBadSamples, CacheFields):
    """train_file: a SQuAD JSON file, or a CSV/TSV/JSONL/parquet/``hf:<dataset>`` table with a context, a question and
    either an answers column ({text: [...], answer_start: [...]}) or an answer start and an answer text column."""

    RANGES: ClassVar[dict[str, str]] = {"max_length": ">0", "doc_stride": ">=0", "n_best": ">0",
                                        "max_answer_length": ">0"}
    context_column: str = "context"
    question_column: str = "question"
    answers_column: str = "answers"  # used where the table has it (SQuAD JSON, hf:squad)
    answer_start_column: str = "answer_start"  # else these two: the answer's first character (from 0) and text
    answer_text_column: str = "answer_text"
    id_column: str = "id"  # optional: names predictions (else the row number)
    max_length: int = 384  # tokens of a window: question + context + special tokens
    doc_stride: int = 128  # tokens shared by consecutive windows of a long context
    version_2_with_negative: bool = False  # SQuAD 2.0: unanswerable questions learnt and predicted (null answer)
    n_best: int = 20  # start and end candidates paired per window
    max_answer_length: int = 30  # tokens
    null_score_diff_threshold: float = 0.0  # v2: predict the null answer when it beats the best span by more


@dataclass
class QAModel:
    # any text encoder giving tokens; `hf` (name_or_path | config, tokenizer…) is the one `export --format hf` takes
    text: Dict[str, Any] = field(default_factory=lambda: {"name": "hf", "vocab_size": 1000, "config": {
        "model_type": "bert", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 128, "max_position_embeddings": 128}})


@dataclass
class QuestionAnsweringConfig(RunConfig):
    task: str = "question_answering"
    data: QAData = field(default_factory=QAData)
    model: QAModel = field(default_factory=QAModel)


FEATURES = {"train": {TEXT: "int32[]", TEXT_SEGMENTS: "int32[]", Q.START: "int64", Q.END: "int64"},
            "eval": {Q.WINDOWS: "int32[][]", Q.SEGMENTS: "int32[][]", Q.OFFSETS: "int32[][][]", Q.START: "int64[]",
                     Q.END: "int64[]", Q.CONTEXT: "string", Q.ANSWERS: "string[]", Q.QID: "string"}}


def _cols(d: QAData) -> dict[str, str]:
    return {"context": d.context_column, "question": d.question_column, "answers": d.answers_column,
            "answer_start": d.answer_start_column, "answer_text": d.answer_text_column, "id": d.id_column}


def _require(ds: Any, d: QAData, where: str) -> None:
    """The context and question columns, and the answers column or both answer start and text columns."""
    answers = [d.answers_column] if d.answers_column in ds.column_names else [d.answer_start_column,
                                                                            d.answer_text_column]
    require_columns(ds, [d.context_column, d.question_column, *answers], where,
                    "set data.context_column/question_column, and data.answers_column or "
                    "data.answer_start_column + data.answer_text_column, to the right names")


def _search(d: QAData) -> SpanSearch:
    return SpanSearch(d.n_best, d.max_answer_length, d.version_2_with_negative, d.null_score_diff_threshold)


def _limits(cfg: QuestionAnsweringConfig, encoder: Any) -> tuple[int, int]:
    d = cfg.data
    limit = min(d.max_length, encoder.max_length)
    if d.doc_stride >= limit:
        raise ConfigError(f"bad value for config key 'data.doc_stride': {d.doc_stride} must be below the window "
                          f"length (data.max_length={d.max_length}, capped at the encoder's {encoder.max_length})")
    return limit, d.doc_stride


def _windows(d: QAData, tokenizer: Any, limits: tuple[int, int], where: str, train: bool,
             counters: dict[str, int]) -> Callable[[dict[str, list], list[int]], dict[str, list]]:
    """A batch of table rows → its samples (``data.qa.qa_samples``) as columns."""
    names = list(FEATURES["train" if train else "eval"])

    def fn(batch: dict[str, list], rows: list[int]) -> dict[str, list]:
        table = [dict(zip(batch, vals)) for vals in zip(*batch.values())]
        samples = Q.qa_samples(tokenizer, table, _cols(d), limits, where, d.skip_bad_samples, counters, train,
                               d.version_2_with_negative, rows)
        return {n: [s[n] for s in samples] for n in names}

    return fn


def prepare(cfg: QuestionAnsweringConfig, train: bool = True) -> Prepared:
    """Read the questions, build (or load) the encoder and its tokenizer, cut the contexts into windows (cached)."""
    d = cfg.data
    learn = learned_tokenizer(cfg.model.text)

    @once
    def raw() -> tuple[Any, Any]:
        train_ds, eval_ds = load_splits(cfg, train, learn=learn, loader=Q.load_qa_table)
        for ds, where in ((train_ds, d.train_file), (eval_ds, eval_name(d))):
            if ds is not None:
                _require(ds, d, where)
        return train_ds, eval_ds

    corpus = None
    if learn and raw()[0] is not None:
        corpus = [t for c in (d.question_column, d.context_column) for t in raw()[0][c] if t]
    encoder = build_encoder(TEXT_ENCODERS, cfg.model.text, "model.text", corpus=corpus)
    save_tokenizer(cfg.model.text, encoder.tokenizer, cfg.output_dir)
    limits = _limits(cfg, encoder)

    def build(cache: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        train_ds, eval_ds = raw()
        counts: dict[str, int] = {}
        tables = {}
        for split, ds, where in (("train", train_ds if train else None, d.train_file), ("eval", eval_ds, eval_name(d))):
            if ds is not None:
                fn = _windows(d, encoder.tokenizer, limits, where, split == "train", counts)
                tables[split] = map_table(ds, fn, cache, split, features(FEATURES[split]))
                if len(tables[split]) == 0:
                    raise DataError(f"{where}: no usable question left (skipped: {counts.get('skipped_bad_samples')})")
        return tables, {"counters": counts}

    settings = {"recipe": "question_answering", **_cols(d), "skip_bad": d.skip_bad_samples, "limits": limits,
                "negatives": d.version_2_with_negative, "tokenizer": tokenizer_identity(encoder.tokenizer)}
    tables, info, _ = prepare_tables(cfg, train, learn, settings, build)
    counters: dict[str, int] = {}
    split_counts(info, counters)
    task = QuestionAnsweringTask(encoder, _search(d))
    tr = tables.get("train")
    return Prepared(task, tr, tables.get("eval"), Q.QACollator(encoder.tokenizer.pad_token_id), lengths(tr, TEXT),
                    None, counters)


def _input_row(x: Any, d: QAData, i: int) -> dict[str, Any]:
    """A predict input — ``{"question", "context"}`` (or the data's column names), as a mapping or a JSON string."""
    row = x
    if isinstance(x, str):
        try:
            row = json.loads(x)
        except ValueError:
            row = None
    if not isinstance(row, Mapping):
        raise DataError(f"input {i}: give a JSON object {{\"question\": ..., \"context\": ...}}, not {str(x)[:60]!r}")
    q, c = (row.get(d.question_column, row.get("question")), row.get(d.context_column, row.get("context")))
    return {d.question_column: q, d.context_column: c}


def predict(cfg: QuestionAnsweringConfig, prepared: Prepared, inputs: list[Any]) -> Iterator[dict[str, Any]]:
    """The answer span of each ``{"question", "context"}``: its text and character offsets ``start``/``end`` (end
    exclusive) in the context, and its score (start + end logit); the null answer ("", offsets None) where the run
    learnt SQuAD 2.0's and it wins. Long contexts are windowed as in training; rows come out
    ``train.eval_batch_size`` questions at a time (every input is checked before the first is answered)."""
    d, task = cfg.data, prepared.task
    rows = [_input_row(x, d, i) for i, x in enumerate(inputs)]
    size = predict_batch_size(cfg)
    for at in range(0, len(rows), size):
        samples = Q.qa_samples(task.encoder.tokenizer, rows[at: at + size], _cols(d), _limits(cfg, task.encoder),
                               "input", False, {}, False, True, list(range(at, at + size)))
        spans = task(prepared.collate(samples))[ANSWER_SPANS]
        yield from ({"question": r[d.question_column], "context": r[d.context_column], **s}
                    for r, s in zip(rows[at: at + size], spans))


QuestionAnswering = recipe(QuestionAnsweringConfig, prepare, predict)
