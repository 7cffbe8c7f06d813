"""``mm-ptft check-data CONFIG``: read every training and eval sample of a config once, as training would
(tokenise, decode, check), before a long run; images are decoded in full, also for ``data.decode_on=device``. Bad
samples are counted, not fatal (the check runs with ``data.skip_bad_samples=true``), and the counts are what the
run's data log would show.
``mm-ptft loader-rate CONFIG``: what ``train.num_workers=auto`` measures for it (samples/s per worker and of the
step) and the worker count it would choose."""
from __future__ import annotations

import copy
from typing import Any, Optional, Sequence

from torch.utils.data import IterableDataset

from mm_ptft.data.shards import remote_plan
from mm_ptft.data.stream import ShardStream
from mm_ptft.tasks import get_recipe, load_config
from mm_ptft.train.loader_rate import LoaderRate
from mm_ptft.train.trainer import Trainer
from mm_ptft.types import take_counts


def _read_all(data: Any, counters: dict[str, int]) -> int:
    """Samples read from a map-style dataset or one pass of a stream; skip counts added to ``counters``."""
    if isinstance(data, ShardStream):
        data = copy.copy(data)
        data.passes, data._pending = 1, {}
    n = 0
    items = iter(data) if isinstance(data, IterableDataset) else (data[i] for i in range(len(data)))
    for item in items:
        take_counts(item, counters)
        n += 1
    if isinstance(data, ShardStream):  # skips after the last usable sample
        for k, v in data._pending.items():
            counters[k] = counters.get(k, 0) + v
    return n


def cache_of(*datasets: Any) -> Optional[dict[str, Any]]:
    """The preprocessing-cache entry map-style tables came from (state hit/miss/rebuilt/off, path, bytes), if any."""
    for data in datasets:
        status = getattr(getattr(data, "base", data), "cache", None)
        if status is not None:
            return {"state": status.state, "path": status.path, "size_bytes": status.size_bytes,
                    "describe": status.describe()}
    return None


def check_data(config: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """{"samples": {split: usable samples}, "counts": {problem: n}}, for map-style tables "cache" (``cache_of``) and for
    URLs "remote" (``remote_of``):
    every training and eval sample read once; the counts are over both splits (what preparing counted, plus what
    reading the streams counted)."""
    cfg = load_config(config, [*overrides, "data.skip_bad_samples=true"])
    if getattr(cfg.data, "decode_on", "worker") == "device":
        cfg.data.decode_on = "worker"  # decode every image in full here: the device stage would meet them in training
    prepared = get_recipe(cfg.task).prepare(cfg, train=True)
    counts: dict[str, int] = dict(prepared.counters)
    samples = {split: _read_all(data, counts) for split, data in (("train", prepared.train_data),
                                                                    ("eval", prepared.eval_data)) if data is not None}
    cache = cache_of(prepared.train_data, prepared.eval_data)
    remote = remote_of(cfg.data)
    return {"samples": samples, "counts": counts, **({"cache": cache} if cache else {}),
            **({"remote": remote} if remote else {})}


def remote_of(data: Any) -> list[dict[str, Any]]:
    """``shards.remote_plan`` of the data files that are URLs (what is read, and how)."""
    streaming = bool(getattr(data, "streaming", False))
    plans = (remote_plan(getattr(data, k), f"data.{k}", streaming) for k in ("train_file", "eval_file")
             if getattr(data, k, ""))
    return [p for p in plans if p is not None]


def problems(report: dict[str, Any]) -> Optional[int]:
    """Total bad samples counted, or None when there were none."""
    return sum(v for k, v in report["counts"].items() if k.startswith(("skipped", "dropped"))) or None


def loader_rate(config: str, overrides: Sequence[str] = ()) -> LoaderRate:
    """The rates ``train.num_workers=auto`` measures before a run of ``config`` (on its device), and its choice."""
    cfg = load_config(config, [*overrides, "train.num_workers=auto"])
    prepared = get_recipe(cfg.task).prepare(cfg, train=True)
    return Trainer.from_prepared(prepared, cfg).measure_loader()
