"""The map-style table path of recipes, through the preprocessing cache (``data/table_cache.py``).

A recipe gives what its preprocessed rows depend on (``settings``) and how to build them from the raw tables
(``build``); ``prepare_tables`` returns memory-mapped ``ArrowRecords`` per split and what preparing learned (labels,
counts, target scale), from the cache entry when one matches, else by building and writing it. The raw tables are
read only on a miss, or when a vocabulary must be learned from their texts."""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Optional, Sequence

from mm_ptft.data.table_cache import ArrowRecords, CacheStatus, TableCache, cache_key, cached, default_root, features
from mm_ptft.data.tables import ROW
from mm_ptft.tasks.common import eval_name, needs_train_file, resolve_files

Raw = Callable[[], tuple]  # () -> (train table, eval table, ...), read once


def learned_tokenizer(spec: Mapping[str, Any]) -> bool:
    """Whether the text encoder ``spec`` learns its vocabulary from the training texts (as ``save_tokenizer``)."""
    return not (spec.get("tokenizer") or spec.get("name_or_path"))


def once(load: Raw) -> Raw:
    """``load`` run at most once (the raw tables are read on the first call that needs them)."""
    return functools.lru_cache(maxsize=None)(load)


def table_cache(cfg: Any, train: bool, learn: bool, settings: Mapping[str, Any],
                more_files: Sequence[str] = ()) -> TableCache:
    """The cache entry of ``cfg.data``'s files (and ``more_files``, e.g. a mixture's sources) preprocessed with
    ``settings`` (generated files resolved first)."""
    d = cfg.data
    resolve_files(d, cfg.output_dir)
    files = [f for f in (d.train_file if needs_train_file(d, train, learn) else "", d.eval_file, *more_files) if f]
    off = "data.cache=false" if not getattr(d, "cache", True) else \
        "data.rehearsal mixes in another task's rows" if getattr(d, "rehearsal", None) is not None else \
        "an hf: source (datasets keeps its own Arrow cache of it)" if any(f.startswith("hf:") for f in files) else ""
    key = cache_key(files, {**settings, "seed": cfg.seed, "train": train, "eval_fraction": d.eval_fraction}) \
        if files and not off else ""
    return TableCache(default_root(files, getattr(d, "cache_dir", "")), key, enabled=bool(key), reason=off)


def map_table(table: Any, fn: Callable[[dict[str, list], list[int]], dict[str, list]], cache: TableCache, split: str,
              features: Any) -> Any:
    """``fn`` over ``table`` in batches (rows named by the file's ``ROW`` numbers, else positions) written to the
    cache entry's ``split`` file, or kept in memory when the cache is off."""
    path = cache.file_for(split)

    def call(batch: dict[str, list], idx: list[int]) -> dict[str, list]:
        return fn(batch, batch[ROW] if ROW in batch else idx)

    return table.map(call, batched=True, batch_size=1000, with_indices=True, remove_columns=table.column_names,
                     features=features, cache_file_name=path, keep_in_memory=path is None, load_from_cache_file=False,
                     new_fingerprint=f"{cache.key or 'mem'}-{split}")


def map_records(table: Any, fn: Callable[[list[dict[str, Any]], list[int]], list[dict[str, Any]]], cache: TableCache,
                split: str, features: Any, extra: Optional[Mapping[str, Any]] = None) -> Any:
    """``fn(rows, row numbers) -> samples`` (one dict per kept row, as a recipe's record builder gives them) over
    ``table`` in batches, as ``map_table`` writes them; each sample's columns are those of ``features``, with
    ``extra``'s constant values (e.g. an evaluation flag) added to every sample."""
    names, extra = list(features), dict(extra or {})

    def call(batch: dict[str, list], rows: list[int]) -> dict[str, list]:
        cols = [n for n in batch if n != ROW]
        samples = [{**s, **extra} for s in fn([dict(zip(cols, vals)) for vals in zip(*(batch[c] for c in cols))],
                                             list(rows))]
        return {n: [s[n] for s in samples] for n in names}

    return map_table(table, call, cache, split, features)


def store_columns(columns: Mapping[str, list], cache: TableCache, split: str, features: Any) -> Any:
    """Columns a recipe computed from its raw data (checked media paths, label ids, sample counts ...) as the cache
    entry's ``split`` table (``map_table``: written to the entry, or kept in memory when the cache is off)."""
    import datasets

    table = datasets.Dataset.from_dict(dict(columns), features=features)
    names = list(columns)  # a new dict: datasets drops the columns of the batch object itself (remove_columns)
    return map_table(table, lambda batch, rows: {n: batch[n] for n in names}, cache, split, features)


def splits(cfg: Any, train_table: Any, eval_table: Any, train: bool) -> list[tuple[str, Any, str]]:
    """(split, table, where) of the tables a recipe prepares: the training table when training, the evaluation table
    when there is one; ``where`` names the file (or the seeded split) in messages."""
    pairs = (("train", train_table if train else None, cfg.data.train_file), ("eval", eval_table, eval_name(cfg.data)))
    return [(split, table, where) for split, table, where in pairs if table is not None]


def store_splits(cfg: Any, tables: tuple[Any, Any], train: bool, columns: Callable[[Any, str], Mapping[str, list]],
                 cache: TableCache, spec: Mapping[str, str]) -> dict[str, Any]:
    """{split: the cache entry's table of ``columns(table, where)``} of the (train, eval) ``tables`` (``splits``);
    ``spec``: the columns' types (``table_cache.features``)."""
    return {split: store_columns(columns(table, where), cache, split, features(spec))
            for split, table, where in splits(cfg, *tables, train)}


def prepare_tables(cfg: Any, train: bool, learn: bool, settings: Mapping[str, Any],
                   build: Callable[[TableCache], tuple[dict[str, Any], dict[str, Any]]],
                   more_files: Sequence[str] = ()) -> tuple[dict[str, ArrowRecords], dict[str, Any], CacheStatus]:
    """({split: ArrowRecords}, info, status) of the cache entry for ``settings`` (``table_cache``): read when
    complete and intact, else ``build(cache)`` (which maps the raw tables with ``map_table``) and sealed."""
    cache = table_cache(cfg, train, learn, settings, more_files)
    tables, info, status = cached(cache, build)
    return {split: ArrowRecords(t, status) for split, t in tables.items()}, info, status


def split_counts(info: Mapping[str, Any], counters: dict[str, int]) -> None:
    """Add the counts preparing made (skips, truncations) that an entry keeps, so a hit logs what a miss logged."""
    for k, v in info.get("counters", {}).items():
        counters[k] = counters.get(k, 0) + int(v)


def lengths(records: Optional[ArrowRecords], *columns: str) -> Optional[Any]:
    """The summed lengths of list ``columns`` (e.g. token ids) per sample, as a NumPy array (None without records)."""
    return None if records is None else sum(records.list_lengths(c) for c in columns)
