"""A resumable stream over shards: split across ranks and loader workers, shuffled in blocks, optionally
length-bucketed, mapped to samples lazily in the loader workers.

**Sharding.** With G = ranks × workers readers, whole shards go round-robin to readers (in a seeded order
that changes every pass); the ``S mod G`` shards left over are read by every reader, each keeping the rows
``row % G == reader``. So every record is read by exactly one reader per pass, for any number of shards.

**Shuffling and bucketing.** Each reader cuts its stream into blocks of ``block`` records and yields a
block in a seeded permutation (keyed by seed, pass, reader and block number). With ``batch_size`` and
``length``, a block is mapped first, sorted by length, cut into batches and the batches are shuffled:
neighbours in the stream (which the loader batches together) have similar lengths.

**Exact resume.** The state is (pass, piece and row where the current block starts, block number,
position in the block): ``load_state_dict`` re-reads that one block and continues with the very next
sample. ``torchdata``'s ``StatefulDataLoader`` keeps one such state per worker.

**Bad records.** ``fn(shard, row, record, counters)`` returns the sample, or None for a counted skip
(it raises ``DataError`` naming the row for a fatal one). Counts travel to the trainer with the next
sample (``types.COUNTS``), gathered per batch by ``CountingCollate``; so do the retries of remote shards' reads
(``remote_retries``, ``data.remote``).
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import zlib
from dataclasses import dataclass
from itertools import islice
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch.utils.data import IterableDataset, get_worker_info

from mm_ptft.config import redacted
from mm_ptft.contracts import on_device
from mm_ptft.data.remote import take_retries
from mm_ptft.data.shards import Shard, read_records
from mm_ptft.data.tables import DataError
from mm_ptft.types import COUNTS, take_counts

log = logging.getLogger(__name__)

#: (shard, row, record, counters) → sample, or None to skip it (counted in ``counters``); a map function
#: with ``set_pass(pass_no)`` is told each pass it starts
MapFn = Callable[[Shard, int, dict[str, Any], dict[str, int]], Optional[Any]]


@dataclass(frozen=True)
class Piece:
    """Rows ``row % stride == offset`` of one shard (``stride`` 1: the whole shard)."""

    shard: int
    stride: int = 1
    offset: int = 0


def assign(n_shards: int, reader: int, readers: int, order: Sequence[int]) -> list[Piece]:
    """The pieces one reader reads in a pass: whole shards round-robin, the remainder split by rows."""
    whole = n_shards - n_shards % readers
    return ([Piece(order[i]) for i in range(reader, whole, readers)]
            + [Piece(order[i], readers, reader) for i in range(whole, n_shards)])


def hash_split(seed: int, fraction: float) -> Callable[[Shard, int], bool]:
    """A streaming train/eval split: a record is in eval when a seeded hash of (shard file name, row) falls
    under ``fraction`` — the same rows every time, wherever the shards lie (a presigned URL's changing signature
    aside)."""

    def in_eval(shard: Shard, row: int) -> bool:
        key = f"{seed}:{os.path.basename(redacted(shard.path))}:{shard.index}:{row}".encode()  # no URL query string
        return zlib.crc32(key) / 2 ** 32 < fraction

    return in_eval


@contextlib.contextmanager
def sample_seed(*key: Any) -> Iterator[None]:
    """Seed torch's and Python's random streams from ``key`` (e.g. seed, pass, shard, row) for one sample's
    augmentation, restoring both afterwards: a sample gets the same draws whichever worker reads it, so a
    resumed stream continues exactly, and the process's own streams (dropout, ...) are left untouched."""
    value = zlib.crc32(repr(key).encode())
    state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(value)
        random.seed(value)
        try:
            yield
        finally:
            random.setstate(state)


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class ShardStream(IterableDataset):
    """Samples ``fn(shard, row, record)`` of ``shards``; ``passes`` 0 repeats forever (training), 1 reads
    once (evaluation). ``select(shard, row)`` keeps a subset (a split) before anything is decoded."""

    def __init__(self, shards: Sequence[Shard], fn: MapFn, *, seed: int = 0, shuffle: bool = True,
                 block: int = 1000, passes: int = 0, batch_size: int = 0,
                 length: Optional[Callable[[Any], int]] = None,
                 select: Optional[Callable[[Shard, int], bool]] = None, where: str = "data.train_file") -> None:
        if not shards:
            raise DataError(f"{where}: no shards")
        if block < 1:
            raise DataError(f"{where}: the shuffle block must hold at least 1 record, got {block}")
        self.shards, self.fn, self.seed, self.shuffle, self.block = list(shards), fn, seed, shuffle, block
        self.passes, self.batch_size, self.length, self.select, self.where = passes, batch_size, length, select, where
        self._state: dict[str, int] = {}
        self._resume: Optional[dict[str, int]] = None
        self._pending: dict[str, int] = {}

    # ---- StatefulDataLoader protocol (called in the worker that iterates) ----
    def state_dict(self) -> dict[str, int]:
        return dict(self._state)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = dict(state)

    # ---- iteration ----
    def _reader(self) -> tuple[int, int]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rank, world = _rank_world()
        return rank * workers + worker, world * workers

    def _start(self, reader: int, readers: int) -> dict[str, int]:
        fresh = {"pass": 0, "piece": 0, "row": 0, "block": 0, "pos": 0, "readers": readers}
        state, self._resume = self._resume, None
        if state is None:
            return fresh
        if state.get("readers") != readers:
            log.warning("%s: resumed with %d readers (ranks x workers) instead of %s: pass %d restarts with the new "
                        "split", self.where, readers, state.get("readers"), state["pass"])
            return {**fresh, "pass": state["pass"]}
        return state

    def _pieces(self, pass_no: int, reader: int, readers: int) -> list[Piece]:
        order = list(range(len(self.shards)))
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + pass_no)
            order = torch.randperm(len(order), generator=g).tolist()
        return assign(len(order), reader, readers, order)

    def _raw(self, pieces: list[Piece], piece: int, row: int) -> Iterator[tuple[int, int, Shard, int, dict]]:
        """(piece index, next row to read, shard, row, record) from ``piece``/``row`` on."""
        for p in range(piece, len(pieces)):
            pc = pieces[p]
            shard = self.shards[pc.shard]
            for r, record in read_records(shard, row if p == piece else 0):
                retried = take_retries()  # a remote shard's transient failures, retried while reading it
                if retried:
                    self._pending["remote_retries"] = self._pending.get("remote_retries", 0) + retried
                if r % pc.stride == pc.offset and (self.select is None or self.select(shard, r)):
                    yield p, r + 1, shard, r, record

    def _order(self, block: list[tuple], key: tuple[int, ...]) -> list[Any]:
        """The block's records (or, bucketing, mapped samples with None for skips first) in yield order."""
        g = torch.Generator().manual_seed(zlib.crc32(repr((self.seed, *key)).encode()))
        perm = torch.randperm(len(block), generator=g).tolist() if self.shuffle else list(range(len(block)))
        entries = [block[i][2:] for i in perm]  # (shard, row, record)
        if not (self.batch_size and self.length):
            return entries
        samples = [self._map(*e) for e in entries]
        kept = sorted((s for s in samples if s is not None), key=self.length)
        batches = [kept[i: i + self.batch_size] for i in range(0, len(kept), self.batch_size)]
        batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        return [None] * (len(samples) - len(kept)) + [s for b in batches for s in b]

    def _map(self, shard: Shard, row: int, record: dict[str, Any]) -> Any:
        return self.fn(shard, row, record, self._pending)

    def __iter__(self) -> Iterator[Any]:
        reader, readers = self._reader()
        st = self._state = self._start(reader, readers)
        bucketing = bool(self.batch_size and self.length)
        while self.passes == 0 or st["pass"] < self.passes:
            if hasattr(self.fn, "set_pass"):  # e.g. per-sample augmentation seeds that change every pass
                self.fn.set_pass(st["pass"])
            pieces = self._pieces(st["pass"], reader, readers)
            raw = self._raw(pieces, st["piece"], st["row"])
            yielded = st["block"] > 0 or st["pos"] > 0
            while block := list(islice(raw, self.block)):
                order = self._order(block, (st["pass"], reader, st["block"]))
                for k in range(st["pos"], len(order)):
                    st["pos"] = k + 1
                    sample = order[k] if bucketing else self._map(*order[k])
                    if sample is not None:
                        yielded = True
                        yield self._with_counts(sample)
                st.update(piece=block[-1][0], row=block[-1][1], block=st["block"] + 1, pos=0)
            if not yielded and self.passes == 0:
                raise DataError(f"{self.where}: reader {reader} of {readers} (ranks x loader workers) got no usable "
                                f"sample in a whole pass; use fewer workers/ranks or more data")
            st.update({"pass": st["pass"] + 1, "piece": 0, "row": 0, "block": 0, "pos": 0})

    def _with_counts(self, sample: Any) -> Any:
        if not self._pending or not isinstance(sample, dict):
            return sample
        counts, self._pending = self._pending, {}
        return {**sample, COUNTS: counts}


class MixtureStream(IterableDataset):
    """Several streams mixed by weight: each sample is ``(source, sample)`` from a source drawn with probability
    ∝ its weight (draw k of a reader seeded by (seed, reader, k), so the draws survive a resume). Each source
    stream splits its own shards across the readers; the state is every source's state and the draw count."""

    def __init__(self, sources: dict[str, ShardStream], weights: dict[str, float], seed: int = 0) -> None:
        names = sorted(sources)
        if any(weights.get(n, 0) < 0 for n in names) or sum(weights.get(n, 0) for n in names) <= 0:
            raise DataError(f"data.sources weights {dict(weights)}: need non-negative weights for {names} "
                            f"with a positive sum")
        self.sources, self.seed = {n: sources[n] for n in names}, seed
        total = sum(weights.get(n, 0) for n in names)
        self.probs = torch.tensor([weights.get(n, 0) / total for n in names], dtype=torch.float64)
        self.draws, self._resume = 0, None

    def state_dict(self) -> dict[str, Any]:
        return {"draws": self.draws, "sources": {n: s.state_dict() for n, s in self.sources.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = state

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        names = list(self.sources)
        if self._resume is not None:
            for n, st in self._resume["sources"].items():
                if n in self.sources and st:
                    self.sources[n].load_state_dict(st)
            self.draws, self._resume = self._resume["draws"], None
        else:
            self.draws = 0
        iters = {n: iter(s) for n, s in self.sources.items()}
        reader = self.sources[names[0]]._reader()[0]
        while True:
            g = torch.Generator().manual_seed(zlib.crc32(repr((self.seed, reader, self.draws)).encode()))
            name = names[int(torch.multinomial(self.probs, 1, generator=g))]
            sample = next(iters[name])
            self.draws += 1
            yield name, sample


class CountingCollate:
    """Wraps a collate function: per-sample skip counts (``COUNTS``) are summed into the batch's ``COUNTS``."""

    def __init__(self, collate: Callable[[list[Any]], Any]) -> None:
        self.collate = collate

    def __call__(self, items: list[Any]) -> Any:
        counts: dict[str, int] = {}
        for it in items:
            take_counts(it[1] if isinstance(it, tuple) else it, counts)  # a mixture's item is (source, sample)
        batch = self.collate(items)
        if counts and isinstance(batch, dict):
            take_counts(batch, counts)  # the wrapped collate's own counts, if any
            batch[COUNTS] = counts
        return batch

    def on_device(self, batch: Any, device: torch.device) -> Any:
        """The wrapped collate's device stage (``contracts.on_device``)."""
        return on_device(self.collate, batch, device)
