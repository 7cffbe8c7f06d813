"""Steps shared by recipes: where generated data goes, resolving data files, run-time artifacts,
seeded eval splits, and rebuilding a trained run (for evaluation, prediction, export and teachers)."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from mm_ptft.config import ConfigError
from mm_ptft.contracts import Prepared, Recipe
from mm_ptft.data import remote
from mm_ptft.data.generated import generate
from mm_ptft.data.table_cache import unique_values
from mm_ptft.data.folders import FolderSpec, read_table, split_folders
from mm_ptft.data.tables import ROW, DataError, LabelMap, load_table, per_class_sample, require_columns, split_off
from mm_ptft.encoders.base import untrusted_source
from mm_ptft.train.finetune import apply_finetune
from mm_ptft.tasks import get_recipe, load_config
from mm_ptft.train import checkpoint as ckpt

def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def resolve_files(data: Any, output_dir: str) -> None:
    """Fill ``data.train_file``/``data.eval_file`` from ``data.generate`` when those are empty; a folder with split
    sub-folders (``train/`` + ``val/``, ``validation/`` or ``test/``) as ``data.train_file`` becomes its ``train/``,
    and its eval sub-folder ``data.eval_file`` unless one is given. Remote files use the section's ``data.remote_*``
    settings."""
    remote.configure(data)
    if getattr(data, "generate", None) and not data.train_file:
        root = os.environ.get("MM_PTFT_DATA", os.path.join(output_dir, "generated_data"))
        paths = generate(data.generate, root)
        data.train_file = paths["train_file"]
        data.eval_file = data.eval_file or paths.get("eval_file", "")
    split = split_folders(data.train_file) if folder_spec(data) is not None and data.train_file else None
    if split is not None:
        data.train_file, data.eval_file = split[0], data.eval_file or split[1]


def folder_spec(data: Any) -> Optional[FolderSpec]:
    """How the recipe whose data section is ``data`` reads a folder (its ``folder()``), None: table files only."""
    folder = getattr(data, "folder", None)
    return folder() if callable(folder) else None


def needs_train_file(data: Any, train: bool, learn: bool = False) -> bool:
    """Whether ``prepare`` must read ``data.train_file``: to train on it, to ``learn`` labels or a
    vocabulary from it, or because the eval set is its seeded split (no ``data.eval_file``) — so
    ``mm-ptft eval`` of a run trained on such a split evaluates the same held-out rows."""
    return bool(data.train_file) and (train or learn or not data.eval_file)


def load_splits(cfg: Any, train: bool, learn: bool = False, counters: Optional[dict[str, int]] = None,
                loader: Callable[[str, str], Any] = load_table) -> tuple[Any, Any]:
    """(train table, eval table) of ``cfg.data`` (HF datasets; None where not needed or not given): generated
    files resolved first; the training file read when ``needs_train_file`` says so, its eval split seeded by
    ``cfg.seed`` unless there is an eval file; else the eval file alone (evaluation, prediction). Folders are read
    as the recipe reads them (``folder_spec``); files their listing skipped are counted in ``counters``.
    ``loader(path, key)`` reads a file (``tables.load_table``, or a recipe's own format on top of it)."""
    d = cfg.data
    resolve_files(d, cfg.output_dir)
    spec, counters = folder_spec(d), counters if counters is not None else {}
    ev = read_table(d.eval_file, "data.eval_file", spec, counters, loader) if d.eval_file else None
    if needs_train_file(d, train, learn):
        tr = read_table(d.train_file, "data.train_file", spec, counters, loader)
        return (tr, ev) if ev is not None else split_off(tr, d.eval_fraction, cfg.seed)
    return None, ev


def learn_labels(data: Any, table: Any) -> LabelMap:
    """``data.labels``, or the sorted values of the training ``table``'s label column (written into ``data.labels``,
    so the run's resolved config keeps them for evaluation and prediction)."""
    if not data.labels:
        if table is None:
            raise ValueError("data.labels is empty and there is no data.train_file to learn them from")
        learned = LabelMap.from_values(unique_values(table, data.label_column),
                                       f"{data.train_file}: column {data.label_column!r}")
        if len(learned) < 2:
            raise DataError(f"{data.train_file}: column {data.label_column!r} holds {len(learned)} distinct label(s) "
                            f"{learned.names}: classification needs at least two (or list the classes in data.labels)")
        data.labels = [str(x) for x in learned.names]
    try:
        return LabelMap(data.labels)
    except DataError as err:  # e.g. data.labels: [a, " a"]
        raise DataError(f"data.labels: {err}") from None


def few_shot_rows(data: Any, values: Sequence[Any], seed: int, counters: dict[str, int]) -> Optional[list[int]]:
    """The training rows ``data.labels_per_class`` keeps (None when it is 0: all of them): ``K`` rows per class of
    ``data.labels``, seeded and stratified, drawn from the training split (the eval rows were set aside before).
    Counted in the run's data log as ``few_shot_rows`` / ``few_shot_unused_rows``."""
    k = getattr(data, "labels_per_class", 0)
    if not k:
        return None
    picked = per_class_sample(values, k, seed, LabelMap(data.labels),
                              f"data.labels_per_class={k}: the training rows of {data.train_file}")
    counters["few_shot_rows"], counters["few_shot_unused_rows"] = len(picked), len(values) - len(picked)
    return picked


def few_shot_table(data: Any, table: Any, seed: int, counters: dict[str, int], train: bool) -> Any:
    """The training ``table`` (an HF dataset) cut to ``data.labels_per_class`` rows per class when training."""
    if table is None or not train or not getattr(data, "labels_per_class", 0):
        return table
    require_columns(table, [data.label_column], data.train_file)
    return table.select(few_shot_rows(data, table[data.label_column], seed, counters))


def check_choices(cfg: Any, truncate: tuple[str, ...]) -> None:
    """ConfigErrors naming ``data.truncate`` outside ``truncate`` or a bad ``generation`` strategy."""
    if cfg.data.truncate not in truncate:
        raise ConfigError(f"bad value for config key 'data.truncate': {cfg.data.truncate!r}; choose "
                          f"{' or '.join(truncate)}")
    try:
        cfg.generation.hf_kwargs()
    except ValueError as err:
        raise ConfigError(str(err)) from None


def generate_batched(task: Any, prompts: Sequence[Sequence[int]], batch_size: int, keys: tuple[str, str],
                     left: bool) -> Iterator[list[str]]:
    """The texts a generative task writes for token-id prompts, one list per ``generate`` call of ``batch_size``
    prompts (padded per batch, ``left`` for a causal LM), each yielded as soon as it is generated: memory bounded by
    the batch, not by the number of inputs, and a caller can write a batch's rows before the next is generated."""
    from mm_ptft.data.sft import pad_rows

    pad, dev = task.lm.tokenizer.pad_token_id, next(task.parameters()).device
    for i in range(0, len(prompts), batch_size):
        part = prompts[i:i + batch_size]
        ids, mask = pad_rows(part, pad, left), pad_rows([[1] * len(p) for p in part], 0, left)  # (b, P)
        yield task.generate({keys[0]: ids.to(dev), keys[1]: mask.to(dev)})


def generated_rows(inputs: Sequence[Any], batches: Iterator[list[str]]) -> Iterator[dict[str, Any]]:
    """``{"input", "generated"}`` rows of ``generate_batched``'s batches, in input order, a batch at a time."""
    done = 0
    for texts in batches:
        for x, t in zip(inputs[done: done + len(texts)], texts):
            yield {"input": x, "generated": t}
        done += len(texts)


def predict_batch_size(cfg: Any) -> int:
    """How many inputs ``predict`` runs at once: the run's evaluation batch size."""
    return cfg.train.eval_batch_size or cfg.train.batch_size


def eval_name(data: Any) -> str:
    """How error messages name the eval data: its file, or the split of the training file."""
    return data.eval_file or f"{data.train_file} (eval split)"


def save_tokenizer(spec: dict[str, Any], tokenizer: Any, output_dir: str) -> None:
    """Save a tokenizer learned at run time and point the resolved config at it."""
    if spec.get("tokenizer") or spec.get("name_or_path"):
        return
    path = Path(output_dir) / "tokenizer"
    if is_main_process():
        tokenizer.save_pretrained(str(path))
    spec["tokenizer"] = str(path.resolve())


def pick_checkpoint(run_dir: str | Path, checkpoint: Optional[str] = None, trusted: Optional[Path] = None) -> Path:
    """``checkpoint`` if given, else the run's best checkpoint, else its latest good one. ``trusted``: a checkpoint
    this process wrote and has not changed since (``Trainer.weights_checkpoint``): taken without re-hashing it."""
    if checkpoint:
        return Path(checkpoint)
    root = Path(run_dir) / "checkpoints"
    best = root / "best.json"
    if best.exists():
        path = root / json.loads(best.read_text())["path"]
        if path.is_dir() and (path == trusted or ckpt.verify(path) is None):
            return path
    found = ckpt.latest_good(root, trusted)
    if found is None:
        raise FileNotFoundError(f"no usable checkpoint under {root}")
    return found


def drop_data_files(cfg: Any) -> None:
    """Clear the data files (and generator) a config names, for building a trained model alone: its own, and
    each task's of a multitask config (``tasks.<name>.data``, a mapping)."""
    tasks = getattr(cfg, "tasks", None) or {}
    for data in (getattr(cfg, "data", None), *(getattr(t, "data", None) for t in tasks.values())):
        for key, empty in (("train_file", ""), ("eval_file", ""), ("generate", None)):
            if isinstance(data, dict) and key in data:
                data[key] = empty
            elif data is not None and hasattr(data, key):
                setattr(data, key, empty)


def load_run(run_dir: str | Path, overrides: Sequence[str] = (), checkpoint: Optional[str] = None,
             with_data: bool = True, trust_remote_code: bool = False,
             train_data: bool = False) -> tuple[Any, Prepared, Recipe]:
    """Rebuild a trained run from its resolved ``config.yaml`` and load its weights.
    Returns (cfg, prepared, recipe) with ``prepared.task`` in eval mode. ``with_data=False`` builds
    the model alone (labels, vocabulary and tokenizer are in the run), so a run directory copied to
    another machine predicts without its training data. A run directory is data, not code: an encoder
    whose config asks for ``trust_remote_code`` is refused unless the caller passes
    ``trust_remote_code=True`` (the command line's ``--trust-remote-code``). ``train_data=True`` also builds
    the training set (fine-tuning a pruned copy, the Fisher of an earlier run)."""
    path = Path(run_dir)
    # A run directory answers for itself wherever it now lies: its config's ``${output_dir}/…`` paths
    # (tokenizer, generated data) resolve inside it, never in the place it was trained.
    where = [] if path.is_file() else [f"output_dir={json.dumps(str(path.resolve()))}"]
    cfg = load_config(path if path.is_file() else path / "config.yaml", [*where, *overrides])
    if not with_data:
        drop_data_files(cfg)
    recipe = get_recipe(cfg.task)
    with contextlib.nullcontext() if trust_remote_code else untrusted_source(str(run_dir)):
        prepared = recipe.prepare(cfg, train=train_data)
    apply_finetune(prepared.task, cfg.finetune)  # the same modules (e.g. LoRA adapters) as the checkpoint
    ckpt.load_weights(pick_checkpoint(cfg.output_dir if path.is_file() else path, checkpoint), prepared.task)
    prepared.task.eval()
    return cfg, prepared, recipe


# ---- rehearsal (continual fine-tuning) -------------------------------------------------------------

def earlier_config(cfg: Any, keys: Sequence[str]) -> Optional[Any]:
    """The resolved config of the earlier run ``data.rehearsal.source`` names (paths inside it resolved there),
    or None when the source is a data file. Its data section must have the ``keys`` (``text_column`` …)."""
    source = Path(cfg.data.rehearsal.source)
    if not source.is_dir():
        return None
    if not (source / "config.yaml").is_file():
        raise DataError(f"data.rehearsal.source={str(source)!r}: a directory without config.yaml is not a run")
    earlier = load_config(source / "config.yaml", [f"output_dir={json.dumps(str(source.resolve()))}"])
    missing = [k for k in keys if not hasattr(earlier.data, k)]
    if missing:
        raise DataError(f"data.rehearsal.source={str(source)!r}: that run ({earlier.task}) has no data.{missing[0]}; "
                        f"rehearsal needs an earlier run of a recipe with the same columns")
    return earlier


def rehearsal_picks(spec: Any, n: int) -> list[int]:
    """Seeded indices of ``spec.fraction`` of ``n`` earlier rows, at most ``spec.max_samples`` (0: no cap)."""
    import torch

    k = round(spec.fraction * n)
    k = min(k, spec.max_samples) if spec.max_samples else k
    return torch.randperm(n, generator=torch.Generator().manual_seed(spec.seed))[:k].tolist()


def check_rehearsed_labels(cfg: Any, theirs: Sequence[Any], ours: Sequence[Any]) -> None:
    """Rehearsed labels must fit this run: the same type as its own, and inside ``data.labels`` when that is set."""
    where = f"data.rehearsal.source={cfg.data.rehearsal.source!r}"
    kinds = sorted({type(v).__name__ for v in theirs}), sorted({type(v).__name__ for v in ours})
    if theirs and ours and kinds[0] != kinds[1]:
        raise DataError(f"{where}: its labels are {'/'.join(kinds[0])}, this run's are {'/'.join(kinds[1])}: the label "
                        f"sets clash (write both tasks' labels the same way, e.g. as class names)")
    outside = sorted({str(v) for v in theirs} - {str(v) for v in cfg.data.labels})
    if cfg.data.labels and outside:
        raise DataError(f"{where}: labels {outside[:5]} of the earlier task are not in data.labels; rehearsal is "
                        f"class-incremental: list the union of both tasks' labels, or leave data.labels empty")


def add_rehearsal(cfg: Any, table: Any, keys: Sequence[str], counters: dict[str, int]) -> Any:
    """``table`` (an HF dataset) plus a seeded sample of the earlier task's training rows named by
    ``data.rehearsal`` (a run: its training split under its own column names; a file: this run's names), in the
    columns ``cfg.data.<keys>`` name (the last holds the labels); counted as ``rehearsal_samples``."""
    import datasets

    spec = getattr(cfg.data, "rehearsal", None)
    if spec is None:
        return table
    earlier = earlier_config(cfg, keys)
    rows = load_splits(earlier, train=True)[0] if earlier else load_table(spec.source, "data.rehearsal.source")
    columns = [getattr((earlier or cfg).data, k) for k in keys]
    require_columns(rows, columns, f"data.rehearsal.source={spec.source}")
    ours = [getattr(cfg.data, k) for k in keys]
    picked = rows.select(rehearsal_picks(spec, len(rows))).select_columns([*columns, ROW])
    picked = picked.rename_columns({c: o for c, o in zip(columns, ours) if c != o})
    check_rehearsed_labels(cfg, picked[ours[-1]], table[ours[-1]])
    counters["rehearsal_samples"] = len(picked)
    table = table.select_columns([*ours, ROW])
    return datasets.concatenate_datasets([table, picked.cast(table.features)])
