"""The streaming side of a recipe's data (``data.streaming: true``): shards named by ``data.train_file`` /
``data.eval_file`` (a file, glob, brace range, directory or ``hf:<dataset>``) read lazily by
``data.stream.ShardStream``. Without ``data.eval_file`` the eval split is a seeded hash of (shard, row),
so it needs no pass over the data and stays the same on every run."""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from mm_ptft.config import ConfigError
from mm_ptft.data.shards import Shard, column_values, expand_sources, head_records
from mm_ptft.data.stream import MapFn, ShardStream, hash_split
from mm_ptft.data.tables import DataError, LabelMap
from mm_ptft.tasks.common import learn_labels, resolve_files

#: how many leading texts a text encoder without a tokenizer learns its vocabulary from, when streaming
TOKENIZER_CORPUS = 20000


def unsupported(**options: bool) -> None:
    """A ConfigError naming the ``data.<option>`` settings (option → whether it is set) a stream cannot honour."""
    on = [k for k, is_set in options.items() if is_set]
    if on:
        raise ConfigError(f"data.{on[0]} is not supported with data.streaming=true (it needs the whole training set "
                          f"in memory); unset it or set data.streaming=false")


def shards_of(cfg: Any, train: bool) -> tuple[list[Shard], list[Shard]]:
    """(training shards, eval shards): the eval shards are the training ones (hash split) without an eval file;
    ``train=False`` (evaluating a finished run) reads the training shards only for that split."""
    d = cfg.data
    resolve_files(d, cfg.output_dir)
    tr = expand_sources(d.train_file, "data.train_file") if d.train_file and (train or not d.eval_file) else []
    ev = expand_sources(d.eval_file, "data.eval_file") if d.eval_file else tr
    return tr, ev


def streams(cfg: Any, shards: tuple[list[Shard], list[Shard]], fn: MapFn, train: bool,
            length: Optional[Callable[[Any], int]] = None,
            eval_fn: Optional[MapFn] = None) -> tuple[Optional[ShardStream], Optional[ShardStream]]:
    """(training stream or None, eval stream or None) of ``fn`` (``eval_fn`` for eval, when given) over the shards."""
    d, tc = cfg.data, cfg.train
    tr_shards, ev_shards = shards
    in_eval = None if d.eval_file else hash_split(cfg.seed, d.eval_fraction)
    tr = None
    if train and tr_shards:
        tr = ShardStream(tr_shards, fn, seed=cfg.seed, shuffle=True, block=d.shuffle_block, passes=0,
                         batch_size=tc.batch_size if tc.group_by_length else 0, length=length,
                         select=(lambda s, r: not in_eval(s, r)) if in_eval else None, where=d.train_file)
    ev = ShardStream(ev_shards, eval_fn or fn, shuffle=False, block=d.shuffle_block, passes=1, select=in_eval,
                     where=d.eval_file or f"{d.train_file} (eval split)") if ev_shards else None
    return tr, ev


def stream_labels(data: Any, shards: Sequence[Shard]) -> LabelMap:
    """``data.labels``, or (``common.learn_labels``) the label column's distinct values over the training shards,
    reading that column alone. WebDataset shards need ``data.labels``: learning them would read every shard."""
    if not data.labels and any(s.kind == "tar" for s in shards):
        raise DataError("data.labels is empty: list the classes (learning them from WebDataset shards would read "
                        "every shard before the first step)")
    column = {data.label_column: column_values(shards, data.label_column)} if shards and not data.labels else None
    return learn_labels(data, column)


def stream_corpus(shards: Sequence[Shard], text: Callable[[dict[str, Any]], Any]) -> Optional[list[str]]:
    """The first texts (``text(record)``) of the training shards, for a text encoder that learns its tokenizer."""
    if not shards:
        return None
    return [str(t) for t in map(text, head_records(shards, TOKENIZER_CORPUS)) if t]
