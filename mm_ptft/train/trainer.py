"""The training loop. It runs any Task: it sums nothing itself (but the ``optim.l1`` weight penalty, added
as ``l1_loss``), logs every ``*_loss`` it is given,
and evaluates with the metrics object the task builds. Options are branches, not subclasses."""
from __future__ import annotations

import contextlib
import json
import math
import random
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset

from mm_ptft.config import ConfigError, RunConfig, to_dict
from mm_ptft.contracts import Callback, Prepared, Task, on_device
from mm_ptft.env import cpu_count, resolve_precision
from mm_ptft.train import callbacks as C
from mm_ptft.train import checkpoint as ckpt
from mm_ptft.train import compiling
from mm_ptft.train import distributed as D
from mm_ptft.train import loader_rate as LR
from mm_ptft.train import parallel as P
from mm_ptft.train import rundir
from mm_ptft.train import step as S
from mm_ptft.train import trackers as T
from mm_ptft.train.logging import RunLogger, log, setup_console
from mm_ptft.train.optim import ParamGroups, build_optimizer, build_scheduler, l1_params, l1_penalty, param_groups
from mm_ptft.train.samplers import GroupedBatchSampler
from mm_ptft.types import take_counts

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteError(RuntimeError):
    """Too many consecutive steps with a NaN/Inf loss or gradient."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def to_device(batch: Any, device: torch.device) -> Any:
    """Move tensors (also inside dicts/lists, e.g. detection targets) to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def device_batch(batch: Any, device: torch.device, collate: Any) -> Any:
    """``to_device``, then the collate's device stage (``contracts.on_device``: e.g. images decoded there)."""
    return on_device(collate, to_device(batch, device), device)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuple_to_list(x: Any) -> Any:
    return [_tuple_to_list(v) for v in x] if isinstance(x, tuple) else x


class Trainer:
    """Fits ``task`` on ``train_data``, evaluating on ``eval_data``; writes the run directory.

    ``param_groups`` builds the optimizer's groups from the (wrapped) task; by default every trainable
    parameter, without weight decay for biases and norms. ``callbacks`` are called at the hook points, followed
    by those ``train.callbacks`` / ``train.early_stopping_patience`` ask for; a callback stops the run by setting
    ``trainer.should_stop = True`` (on every rank alike: decide from synced values such as eval results).
    ``train.report_to`` names the trackers the run reports to."""

    def __init__(self, task: Task, cfg: RunConfig, train_data: Optional[Dataset], eval_data: Optional[Dataset],
                 collate: Callable[[list[Any]], dict[str, Any]], train_lengths: Optional[Sequence[int]] = None,
                 eval_lengths: Optional[Sequence[int]] = None, counters: Optional[dict[str, int]] = None, *,
                 param_groups: Optional[ParamGroups] = None, callbacks: Sequence[Callback] = ()) -> None:
        self.cfg, self.tc, self.task = cfg, cfg.train, task
        self.param_groups = param_groups
        self.callbacks = [*callbacks, *C.from_config(cfg, task=task)]
        self.should_stop = False
        if self.tc.precision not in (*PRECISIONS, "auto"):
            raise ConfigError(f"train.precision={self.tc.precision!r}; choose one of {['auto', *sorted(PRECISIONS)]}")
        self.dist, self.device = D.setup(self.tc.device)
        self.precision = resolve_precision(self.tc.precision, self.device.type)
        self.run_dir = Path(cfg.output_dir)
        self.counters = dict(counters or {})
        if self.tc.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        task.to(self.device)
        self.model: nn.Module = self._wrap(task)
        self.collate = collate
        self.amp_dtype = PRECISIONS[self.precision]
        # train.num_workers=auto: 0 until sized before the first step (_size_workers), then the loaders are rebuilt
        self._data = (train_data, train_lengths, eval_data, eval_lengths)
        self._auto_workers, self.loader_record = None, {}
        self._build_loaders()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype is torch.float16
                                           and self.device.type == "cuda")
        self.metric = self.tc.metric_for_best or task.main_metric
        self.greater = self.tc.greater_is_better if self.tc.metric_for_best else task.greater_is_better
        self.faults, self.window = S.FaultCounter(self.device), None
        self.found_inf = torch.zeros((), device=self.device)  # the last step's NaN/Inf flag (1.0: skipped)
        self._undo = S.Undo() if self.tc.undo_skips else None  # non-fused optimizers: skip by rolling back
        # The host must know each step's NaN/Inf verdict when on_step_end callbacks are told only of steps that
        # changed the weights (every_step callbacks read the verdict from found_inf on the device instead).
        self._host_steps = any(
            getattr(type(cb), "on_step_end", None) is not Callback.on_step_end and not getattr(cb, "every_step", False)
            for cb in self.callbacks)

    @property
    def bad_steps_total(self) -> int:
        """Non-finite steps skipped so far (counted on the device: reading it syncs)."""
        return self.faults.read_total()

    @bad_steps_total.setter
    def bad_steps_total(self, value: int) -> None:
        self.faults = S.FaultCounter(self.device, value)

    @classmethod
    def from_prepared(cls, prepared: Prepared, cfg: RunConfig, param_groups: Optional[ParamGroups] = None,
                      callbacks: Sequence[Callback] = (), train: bool = True) -> "Trainer":
        """A trainer for what a recipe prepared (its task, data, collate, lengths, counters and callbacks)."""
        return cls(prepared.task, cfg, prepared.train_data if train else None, prepared.eval_data, prepared.collate,
                   prepared.train_lengths, prepared.eval_lengths, prepared.counters, param_groups=param_groups,
                   callbacks=[*prepared.callbacks, *callbacks])

    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    # ---- building -------------------------------------------------------------------------
    def _wrap(self, task: nn.Module) -> nn.Module:
        model, self._export = task, None
        if self.dist.enabled:
            if self.tc.distributed == "fsdp" and self.dist.is_main:
                self._export = P.export_template(task)  # sharded modules cannot be saved as encoder dirs
            model = P.wrap_distributed(task, self.tc.distributed, self.device)
        # after the DDP wrap (DDP's graph splitting at bucket boundaries keeps its overlap of compute and all-reduce)
        model, self._cudagraphs = compiling.compile_model(model, self.tc.compile, self.device, self.tc.compile_dynamic)
        return model

    def _build_loaders(self) -> None:
        train_data, train_lengths, eval_data, eval_lengths = self._data
        self.train_loader = self._loader(train_data, train_lengths, train=True) if train_data is not None else None
        self.eval_loader = self._loader(eval_data, eval_lengths, train=False) if eval_data is not None else None

    def _loader(self, data: Dataset, lengths: Optional[Sequence[int]], train: bool):
        from torchdata.stateful_dataloader import StatefulDataLoader

        bs = self.tc.batch_size if train else (self.tc.eval_batch_size or self.tc.batch_size)
        # A private generator: iterating a loader must not draw from the global RNG (dropout etc.),
        # or a resumed run, which starts a fresh iterator mid-epoch, would diverge.
        gen = torch.Generator().manual_seed(self.cfg.seed + 7919 * self.dist.rank + (0 if train else 1))
        workers = self._workers()
        common = dict(collate_fn=self.collate, num_workers=workers, pin_memory=self.device.type == "cuda",
                      generator=gen, persistent_workers=self.tc.persistent_workers and workers > 0,
                      prefetch_factor=self.tc.prefetch_factor if workers > 0 else None)
        if isinstance(data, IterableDataset):  # a stream splits, shuffles and buckets itself (data.stream)
            return StatefulDataLoader(data, batch_size=bs, **common)
        sampler = GroupedBatchSampler(len(data), bs, lengths if self.tc.group_by_length else None, shuffle=train,
                                      seed=self.cfg.seed, rank=self.dist.rank, world=self.dist.world, even=train)
        if train and hasattr(data, "batch_sampler"):  # data that orders its own batches (multitask round-robin)
            sampler = data.batch_sampler(sampler)
        return StatefulDataLoader(data, batch_sampler=sampler, **common)

    def _epoch_batches(self) -> Optional[int]:
        """Batches in one epoch of the training loader; None for a stream (it runs to ``train.max_steps``)."""
        return None if isinstance(self.train_loader.dataset, IterableDataset) else len(self.train_loader)

    def _workers(self) -> int:
        """``train.num_workers``, capped at the CPUs this process may use (more only adds contention); ``auto``: the
        measured count (0 until it is measured)."""
        if self.tc.num_workers == "auto":
            return self._auto_workers or 0
        cpus = cpu_count()
        if self.tc.num_workers > cpus:
            warnings.warn(f"train.num_workers={self.tc.num_workers} > the {cpus} CPUs this process may use: "
                          f"using {cpus}", stacklevel=2)
        return min(self.tc.num_workers, cpus)

    def measure_loader(self, train: bool = True) -> LR.LoaderRate:
        """Samples/s one loader worker makes (a few of the sampler's first batches, read and collated here) and
        samples/s the step takes (forward + backward on the first; forward only for ``train=False``), and the
        workers they call for, the same on every rank. Changes nothing: weights, buffers, RNG, data order."""
        loader = self.train_loader if train else self.eval_loader
        bs = self.tc.batch_size if train else (self.tc.eval_batch_size or self.tc.batch_size)
        batches = LR.sample_batches(loader.dataset, loader.batch_sampler, bs, 3)
        with LR.no_trace(self.model, self.device):
            worker_rate, first = LR.time_data(batches, self.collate)
            step_rate = 0.0 if first is None else LR.time_step(self._probe_step(first, train), self.device)
        cap = LR.max_workers(cpu_count(), self.dist.local_world,
                             torch.get_num_threads() if self.device.type == "cpu" else 1)
        n = D.all_reduce_max(LR.workers_needed(step_rate, worker_rate, cap))
        return LR.LoaderRate(worker_rate, step_rate, n, cap)

    def _probe_step(self, batch: Any, train: bool) -> Callable[[], int]:
        """The collate's device stage (decoding there: ``data.decode_on=device``) and one forward (+ backward when
        ``train``) on ``batch``, as the loop runs them; returns the batch size."""
        take_counts(batch, {})
        moved = to_device(batch, self.device)
        self.model.train(train)

        def step() -> int:
            ready = on_device(self.collate, moved, self.device)
            with torch.set_grad_enabled(train), self._autocast():
                out = self.model(ready)
            if train:
                out["loss"].backward()
            return _batch_size(ready)
        return step

    def _size_workers(self, state: Optional[dict[str, Any]] = None, train: bool = True) -> None:
        """``train.num_workers=auto``: the count of the run that wrote ``state`` (a resumed run keeps its data
        order: per-worker augmentation seeds and stream readers depend on it), else a measured one; the loaders
        are rebuilt with it."""
        if self.tc.num_workers != "auto" or self._auto_workers is not None:
            return
        if state is not None and state.get("num_workers") is not None:
            n = int(state["num_workers"])
            log.info("loader: %d workers, as in the run that wrote the checkpoint (train.num_workers=auto)", n)
            self.loader_record = {"num_workers": n}
        else:
            rate = self.measure_loader(train)
            n, self.loader_record = rate.workers, rate.record()
            log.info(rate.line())
        self._auto_workers = n
        self._build_loaders()

    def _set_epoch(self, epoch: int) -> None:
        """Point the sampler and the loader's generator (worker seeds) at ``epoch``: same draws after a resume."""
        if self._epoch_batches() is not None:
            self.train_loader.batch_sampler.set_epoch(epoch)
        self.train_loader.generator.manual_seed(self.cfg.seed + 7919 * self.dist.rank + 2 * (epoch + 1))

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # ---- state ----------------------------------------------------------------------------
    def _state(self, optimizer: dict[str, Any], rngs: list[Any]) -> dict[str, Any]:
        n = self._epoch_batches()
        at_epoch_end = n is not None and self.batches_done >= n
        return {"step": self.step, "epoch": self.epoch + int(at_epoch_end),
                "loader": None if at_epoch_end else self.train_loader.state_dict(),
                "optimizer": optimizer, "scheduler": self.sched.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": rngs[0], "rng_per_rank": rngs,
                "best": {"metric": self.best_value, "step": self.best_step}, "callbacks": self._callback_states(),
                "batches_done": 0 if at_epoch_end else self.batches_done,
                "counters": self.counters, "bad_steps_total": self.bad_steps_total, "num_workers": self._workers()}

    def _stateful_callbacks(self) -> dict[str, Callback]:
        """Callbacks with ``state_dict``/``load_state_dict``, keyed by class name (``Name.1`` for a second one)."""
        keyed: dict[str, Callback] = {}
        for cb in self.callbacks:
            if callable(getattr(cb, "state_dict", None)) and callable(getattr(cb, "load_state_dict", None)):
                name = type(cb).__name__
                keyed[name if name not in keyed else f"{name}.{sum(k.split('.')[0] == name for k in keyed)}"] = cb
        return keyed

    def _callback_states(self) -> dict[str, Any]:
        return {key: cb.state_dict() for key, cb in self._stateful_callbacks().items()}

    def _restore(self, state: dict[str, Any]) -> None:
        self.step, self.epoch = state["step"], state["epoch"]
        if P.is_fsdp(self.model):
            P.load_full_state(self._unwrapped(), self.opt, {}, state["optimizer"])
        else:
            self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        rngs = state.get("rng_per_rank") or [state["rng"]]
        if self.dist.rank < len(rngs):  # each rank continues its own random stream (dropout, augmentation)
            rng = rngs[self.dist.rank]
            rng["python"] = (rng["python"][0], tuple(rng["python"][1]), rng["python"][2])
            _set_rng_state(rng)
        else:  # more ranks than the run that wrote the checkpoint
            seed_everything(self.cfg.seed + self.dist.rank + 1_000_003 * self.step)
        self.best_value, self.best_step = state["best"]["metric"], state["best"]["step"]
        for key, cb in self._stateful_callbacks().items():  # a callback added on resume starts fresh
            if key in state.get("callbacks", {}):
                cb.load_state_dict(state["callbacks"][key])
        self.bad_steps_total = state["bad_steps_total"]
        self.batches_done = state["batches_done"]
        self._set_epoch(self.epoch)
        if state["loader"] is not None:
            self.train_loader.load_state_dict(state["loader"])

    def save_checkpoint(self) -> Optional[Path]:
        """Write a checkpoint from rank 0 (every rank must call it: FSDP gathers the full state first)."""
        with self._timed("save_s"):
            return self._save_checkpoint()

    def _save_checkpoint(self) -> Optional[Path]:
        path = None
        rngs = _gather_rng_states()
        if P.is_fsdp(self.model):
            weights: Any = P.full_model_state(self._unwrapped())
            optimizer = P.full_optim_state(self._unwrapped(), self.opt)
        else:
            weights = self._unwrapped()
            optimizer = self.opt.state_dict() if self.dist.is_main else {}
        if self.dist.is_main:
            root = self.run_dir / "checkpoints"
            path = ckpt.save(root, self.step, weights, self._state(optimizer, rngs), self.config_text)
            best = root / f"step_{self.best_step:08d}" if self.best_step >= 0 else None
            if best is not None:
                tmp = root / "best.json.tmp"  # renamed into place: a crash never leaves half a file
                tmp.write_text(json.dumps({"step": self.best_step, "path": best.name, self.metric: self.best_value}))
                tmp.replace(root / "best.json")
            ckpt.prune(root, self.tc.keep_last, {best} if best else set())
        D.barrier()
        self._call("on_save", path)
        return path

    def _load(self, path: Path) -> dict[str, Any]:
        """Load a checkpoint's weights into the model and return its trainer state."""
        if not P.is_fsdp(self.model):
            return ckpt.load(path, self._unwrapped())
        try:  # every rank reads the full file and keeps its own shard
            P.load_full_state(self._unwrapped(), None, ckpt.read_weights(path), None)
        except (KeyError, RuntimeError, ValueError) as err:
            raise ckpt.CheckpointError(f"{path}: weights do not fit this model ({err})") from err
        return ckpt.read_state(path)

    def _unwrapped(self) -> nn.Module:
        m = self.model
        m = getattr(m, "_orig_mod", m)
        return getattr(m, "module", m)

    # ---- evaluation -----------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Metrics on the eval split (synced across ranks), plus the mean eval ``loss``."""
        if self.eval_loader is None:
            return {}
        if self.train_loader is None:  # evaluation alone: sized by the forward pass
            self._size_workers(train=False)
        # DDP's forward would sync buffers (a collective) although ranks may hold different numbers of
        # eval batches; FSDP needs its forward, so ranks with fewer batches run filler forwards below.
        model = self._unwrapped() if self.dist.enabled and not P.is_fsdp(self.model) else self.model
        model.eval()
        metrics = self.task.build_metrics().to(self.device)
        loss_sum = torch.zeros(2, device=self.device, dtype=torch.float64)
        first, eval_counts = None, {}
        for batch in self._eval_batches():
            if batch is None:  # FSDP: this rank is out of batches while another still runs forwards
                with self._autocast():
                    model(device_batch(self._filler(first), self.device, self.collate))  # output discarded
                continue
            take_counts(batch, eval_counts)  # the workers' skips (off the batch kept for filler forwards)
            first = first or batch
            batch = device_batch(batch, self.device, self.collate)
            take_counts(batch, eval_counts)  # the device stage's
            with self._autocast():
                out = self._eval_forward(model, batch)
            metrics.update(out, batch)
            if "loss" in out:
                n = len(next(iter(batch.values())))
                loss_sum += torch.stack([out["loss"].detach().double() * n, torch.tensor(n, device=self.device)])
        model.train()
        results = metrics.compute()
        # non-scalar results (a confusion matrix) a metrics object may give: written at the end of fit
        self.last_artifacts = metrics.artifacts() if hasattr(metrics, "artifacts") else {}
        if eval_counts and hasattr(self, "logger"):  # a streamed eval split's skips (the same at every evaluation)
            self.logger.log(getattr(self, "step", 0), "data", {f"eval_{k}": v for k, v in eval_counts.items()})
        total = D.all_reduce_mean(loss_sum)
        if total[1] > 0:
            results["loss"] = float(total[0] / total[1])
        return results

    def _eval_forward(self, model: nn.Module, batch: Any) -> Any:
        """An evaluation forward; under CUDA graphs its outputs are copied out (metrics may keep them past the next
        replay, which overwrites graph memory)."""
        if not self._cudagraphs:
            return model(batch)
        torch.compiler.cudagraph_mark_step_begin()
        return compiling.clone_outputs(model(batch))

    def _eval_batches(self) -> Iterator[Optional[Any]]:
        """The eval batches. Under FSDP (its forward is a collective) a rank with fewer batches then gets None (a
        filler forward) until every rank is done: counted up front for a map-style split, agreed batch by batch
        for a stream (whose length no rank knows)."""
        if not P.is_fsdp(self.model):
            yield from self.eval_loader
            return
        if not isinstance(self.eval_loader.dataset, IterableDataset):
            n = len(self.eval_loader)
            extra = D.all_reduce_max(n) - n  # before any forward: every rank calls it at the same point
            yield from self.eval_loader
            yield from [None] * extra
            return
        batches = iter(self.eval_loader)
        while True:
            batch = next(batches, None)
            if not D.all_reduce_max(int(batch is not None)):
                return
            yield batch

    def _filler(self, seen: Optional[Any]) -> Any:
        """A batch for a filler forward: one this rank has seen, else the split's first sample."""
        if seen is not None:
            return seen
        if isinstance(self.eval_loader.dataset, IterableDataset):
            raise ConfigError("the eval stream gave this rank no batch: use fewer ranks or train.num_workers, or more "
                              "eval data")
        return self.collate([self.eval_loader.dataset[0]])

    # ---- the loop -------------------------------------------------------------------------
    def _setup_fit(self) -> int:
        if self.train_loader is None:
            raise ConfigError("no training data: set data.train_file")
        if self._epoch_batches() is None:
            if self.tc.max_steps <= 0:
                raise ConfigError("train.max_steps is not set, but the training data is a stream (no length): set "
                                  "train.max_steps to the number of optimizer steps to train")
            per_epoch = self.tc.max_steps  # evaluate and checkpoint at the end unless eval_every/save_every say more
        else:
            per_epoch = math.ceil(len(self.train_loader) / self.tc.grad_accum_steps)
            if per_epoch == 0:
                raise ConfigError(f"train.batch_size={self.tc.batch_size} leaves no batch from "
                                  f"{len(self.train_loader.dataset)} samples")
        total = self.tc.max_steps if self.tc.max_steps > 0 else per_epoch * self.tc.epochs
        groups = (self.param_groups or (lambda m: param_groups(m, self.cfg.optim)))(self.task)
        self.opt = build_optimizer(groups, self.cfg.optim, self.device)
        self.sched = build_scheduler(self.opt, self.cfg.sched, total)
        if self.cfg.optim.l1 > 0 and P.is_fsdp(self.model):
            raise ConfigError("optim.l1 is not supported with train.distributed=fsdp (sharded weights)")
        # optim.l1: the one loss term the trainer adds (it knows parameters, not what the task computes)
        self.l1_params = l1_params(self.task) if self.cfg.optim.l1 > 0 else []
        fresh = [{k: v for k, v in g.items() if k != "params"} for g in self.opt.param_groups]  # this config's
        self.eval_every = self.tc.eval_every or per_epoch
        self.step = self.epoch = self.batches_done = self.bad_steps = self.bad_steps_total = 0
        self.best_value, self.best_step, self.should_stop = None, -1, False
        self.start_step, self.last_eval_step, self.last_results = 0, -1, {}
        self.counts_changed = False
        self.config_changes: list[tuple[str, Any, Any]] = []
        if self.dist.is_main:
            setup_console()  # resume messages are logged before the RunLogger exists
            rundir.clean_stale(self.run_dir / "checkpoints")
        restarts = D.restart_count()
        if restarts:
            log.info("torchrun restart %d: resuming from the latest checkpoint in %s", restarts, self.run_dir)
        if self.tc.resume or restarts:
            found = ckpt.latest_good(self.run_dir / "checkpoints")
            if found is None:
                log.info("train.resume=true but no usable checkpoint in %s: starting fresh", self.run_dir)
            else:
                self.config_changes = rundir.check_resume(self.run_dir, self.cfg)
                state = self._load(found)
                self._size_workers(state)
                self._restore(state)
                self.start_step = self.step
                if self.config_changes:
                    self._apply_hparams(fresh)
                log.info("resumed from %s (step %d, epoch %d)", found, self.step, self.epoch)
        self._size_workers()  # after the optimizer is built, before the first step
        return total

    def _apply_hparams(self, fresh: list[dict[str, Any]]) -> None:
        """Resumed with ``train.on_config_change=new``: the new config's per-group hyperparameters (lr,
        weight decay, betas…) replace the checkpoint's; the schedule keeps its position."""
        for group, new in zip(self.opt.param_groups, fresh):
            group.update({k: v for k, v in new.items() if k != "initial_lr"}, initial_lr=new["lr"])
        self.sched.base_lrs = [g["initial_lr"] for g in self.opt.param_groups]
        for group, base, fn in zip(self.opt.param_groups, self.sched.base_lrs, getattr(self.sched, "lr_lambdas", [])):
            group["lr"] = base * fn(self.sched.last_epoch)
        log.warning("resumed with a changed config (train.on_config_change=new): %s",
                    "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in self.config_changes))

    def _finished_results(self, total: int) -> Optional[dict[str, float]]:
        """A resumed run that already reached ``total`` and wrote its final metrics: those, unchanged."""
        final = self.run_dir / "final_metrics.json"
        if self.start_step == 0 or self.start_step < total or not final.is_file():
            return None
        log.info("%s is finished (step %d of %d): nothing to train; final metrics unchanged", self.run_dir,
                 self.start_step, total)
        return json.loads(final.read_text())

    def fit(self) -> dict[str, float]:
        """Train to ``max_steps`` / ``epochs``; return the final evaluation."""
        trackers = T.from_config(self.tc.report_to)  # checked on every rank (before any work), started on the main one
        total = self._setup_fit()
        self.already_finished = self._finished_results(total)
        if self.already_finished is not None:
            return self.already_finished
        resolved = to_dict(self.cfg)  # once per fit (omegaconf: tens of ms): the logger's and every checkpoint's
        self.config_text = rundir.config_yaml(self.cfg, resolved)
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(self.config_text)
        if self.start_step == 0:
            seed_everything(self.cfg.seed + self.dist.rank)
        self.logger = RunLogger(self.run_dir, self.dist.is_main, total, self.start_step, trackers, resolved)
        self.window = S.Window()  # the first train log covers the time from here
        try:
            results = self._train(total)
            self._finish(results)
        except BaseException:
            self.logger.close(None)  # trackers mark the run failed (and W&B's service process ends)
            raise
        return results

    def _train(self, total: int) -> dict[str, float]:
        """The loop, from the logged start to the last evaluation."""
        log.info("device %s, precision %s%s", self.device, self.precision,
                 " (train.precision=auto)" if self.tc.precision == "auto" else "")
        if self.counters and self.start_step == 0:
            self.logger.log(0, "data", self.counters)
        if self.loader_record:
            self.logger.log(self.step, "loader", self.loader_record)
        if self.config_changes:
            self.logger.log(self.step, "config_change", {k: new for k, _, new in self.config_changes})
        self.model.train()
        self._call("on_train_start")
        while self.step < total and not self.should_stop:
            self._set_epoch(self.epoch)
            self._run_epoch(total)
            if self.batches_done >= (self._epoch_batches() or math.inf):
                self.epoch, self.batches_done = self.epoch + 1, 0
        if self.last_eval_step != self.step:
            self._eval_and_save()
        return self.last_results

    def _run_epoch(self, total: int) -> None:
        """One pass over the loader (or what is left of it after a resume), or less when a callback stops the run.
        Nothing here waits for the device but the log, evaluation and checkpoint steps."""
        accum, n_batches, win = self.tc.grad_accum_steps, self._epoch_batches(), self.window
        for batch in self.train_loader:
            self.batches_done += 1
            batch = device_batch(batch, self.device, self.collate)
            self._take_counts(batch)  # after the device stage: it may skip samples too
            win.samples += _batch_size(batch)
            boundary = self.batches_done % accum == 0 or self.batches_done == n_batches
            with P.grad_sync(self.model, boundary):  # accumulating: no all-reduce until the last micro-batch
                if self._cudagraphs and (self.batches_done - 1) % accum == 0:  # a new optimizer step: the last
                    torch.compiler.cudagraph_mark_step_begin()  # one's graph outputs may be overwritten (not the
                    # gradients accumulated within a step: they stay live)
                with self._autocast():
                    out = self.model(batch)
                if self.l1_params:
                    out = {**out, "l1_loss": l1_penalty(self.l1_params, self.cfg.optim.l1)}
                    out["loss"] = out["loss"] + out["l1_loss"]
                self.scaler.scale(out["loss"] / accum).backward()
            win.add_losses(out, accum)
            if not boundary:
                continue
            self.grad_norm = self._optimizer_step()
            win.steps += 1
            self.logger.advance()
            if self.step % self.tc.log_every == 0 or self.step >= total:
                self._check_faults()
                self._log_train()
                win = self.window
            if self.step % self.eval_every == 0 or self.step >= total:
                self._eval_and_save()
            elif self.tc.save_every and self.step % self.tc.save_every == 0:
                self._check_faults()
                self.save_checkpoint()
            if self.step >= total or self.should_stop:
                return

    def _take_counts(self, batch: Any) -> None:
        """Move a streamed batch's skip counts (``COUNTS``) into the run's counters."""
        if take_counts(batch, self.counters):
            self.counts_changed = True

    def _log_train(self) -> None:
        """Log the window's mean losses, the last gradient norm, lr and throughput; open the next window."""
        win = self.window
        vals = {k: v / win.steps for k, v in _mean_over_ranks(win.sums).items()}
        vals.update(lr=self.sched.get_last_lr()[0], grad_norm=float(self.grad_norm))  # read before the clock stops
        now = time.perf_counter()
        self.logger.log(self.step, "train", {**vals, **win.timings(self.dist.world, now), "epoch": self.epoch})
        if self.counts_changed:  # skips counted by streaming loader workers since the last log
            self.logger.log(self.step, "data", self.counters)
            self.counts_changed = False
        self.window = S.Window(start=now)

    @contextlib.contextmanager
    def _timed(self, part: str) -> Iterator[None]:
        """Add the time the block takes to the current window's ``part`` (``eval_s`` / ``save_s``)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.window is not None:
                setattr(self.window, part, getattr(self.window, part) + time.perf_counter() - t0)

    def _optimizer_step(self) -> torch.Tensor:
        """Unscale, clip, and step unless the loss or gradient is NaN/Inf (then skip and count), without a host
        sync where the optimizer can skip on the device (``step.skips_on_device``). Returns the gradient norm
        (a device tensor)."""
        self.scaler.unscale_(self.opt)
        norm = S.grad_norm(S.params_of(self.opt), self.tc.grad_clip)  # same on every rank (reduced grads)
        if self.scaler.is_enabled():  # fp16: the scaler skips overflow steps itself (fused: on the device)
            self.scaler.step(self.opt)
            self.found_inf = S.scaler_found_inf(self.scaler, self.opt)
            self.scaler.update()
            stepped: Optional[bool] = True
        else:
            self.found_inf = S.nonfinite(norm)
            on_device = not self._host_steps and S.skips_on_device(self.opt)
            undo = None if self._host_steps else self._undo
            stepped = S.step_unless(self.opt, self.found_inf, on_device, undo)
            self.faults.add(self.found_inf)
        self.opt.zero_grad(set_to_none=True)
        self.sched.step()
        self.step += 1
        for cb in self.callbacks:  # they see the new step count and found_inf; stepped None: decided on the device
            if stepped is not False or getattr(cb, "every_step", False):
                cb.on_step_end(self)
        return norm

    def _check_faults(self) -> None:
        """At log, evaluation and checkpoint steps (one sync): log the non-finite steps skipped since the last
        check; stop when a run of ``train.max_bad_steps`` consecutive ones happened, saving the last good state
        (skipped steps changed no weights)."""
        since, worst, total = self.faults.read()
        if since:
            self.logger.log(self.step, "fault", {"nonfinite_steps_skipped": since, "nonfinite_steps_total": total})
        if worst >= self.tc.max_bad_steps:
            self.opt.zero_grad(set_to_none=True)
            path = self.save_checkpoint()
            raise NonFiniteError(f"{worst} consecutive steps had a NaN/Inf loss or gradient "
                                 f"(train.max_bad_steps={self.tc.max_bad_steps}); the last good state "
                                 f"is saved in {path or self.run_dir / 'checkpoints'}")

    def _eval_and_save(self) -> None:
        """Evaluate, track the best metric, checkpoint (callbacks see the results first: early stopping)."""
        self._check_faults()
        with self._timed("eval_s"):
            results = self.evaluate()
            self.last_eval_step, self.last_results = self.step, results
            if results:
                self.logger.log(self.step, "eval", results)
            self._call("on_evaluate", results)
        value = results.get(self.metric)
        if value is not None:
            better = self.best_value is None or (value > self.best_value if self.greater else value < self.best_value)
            if better:
                self.best_value, self.best_step = value, self.step
        self.save_checkpoint()

    def plain_model(self) -> Optional[nn.Module]:
        """The trained task as one plain module on the main process, None elsewhere (under FSDP a collective:
        every rank calls it; the shards are gathered into an unsharded CPU copy)."""
        plain = self._unwrapped()
        if P.is_fsdp(self.model):
            weights = P.full_model_state(plain)
            plain = self._export(weights) if self._export is not None else None
        return plain if self.dist.is_main else None

    def _finish(self, results: dict[str, float]) -> None:
        if self.dist.is_main:
            (self.run_dir / "final_metrics.json").write_text(json.dumps(results, indent=2))
            for stem, value in getattr(self, "last_artifacts", {}).items():
                (self.run_dir / f"{stem}.json").write_text(json.dumps(value))
        self._call("on_train_end", results)
        self.logger.close(results)
        if self.dist.is_main and self.tc.report:
            from mm_ptft.train.report import write_report

            write_report(self.run_dir)
        D.barrier()


def _gather_rng_states() -> list[Any]:
    """Every rank's RNG state, in rank order (as numpy while in transit: ``all_gather_object`` of
    CPU tensors fails to unpickle under gloo)."""
    mine = _tuple_to_list(_rng_state())
    if not D.is_distributed():
        return [mine]
    gathered = D.all_gather_object(_map_tensors(mine, lambda t: t.numpy()))
    return [_map_tensors(r, torch.from_numpy) for r in gathered]


def _map_tensors(obj: Any, fn: Callable[[Any], Any]) -> Any:
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_map_tensors(v, fn) for v in obj]
    return obj


def _mean_over_ranks(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    """Logged losses averaged over ranks (every rank calls this at the same steps)."""
    keys = sorted(sums)
    if D.is_distributed():  # ranks may hold different parts (mixed-source batches): use the union
        keys = sorted(set().union(*D.all_gather_object(keys)))
        device = next((v.device for v in sums.values() if isinstance(v, torch.Tensor)), None)
        sums = {k: sums.get(k, torch.zeros((), device=device)) for k in keys}
    if not keys:
        return {}
    values = D.all_reduce_mean(torch.stack([torch.as_tensor(sums[k], dtype=torch.float32) for k in keys]))
    return {k: float(v) for k, v in zip(keys, values)}


def _batch_size(batch: Mapping[str, Any]) -> int:
    first = next(iter(batch.values()))
    if isinstance(first, Mapping):  # a mixed batch {source: sub-batch} (MixtureDataset): count all rows
        return sum(_batch_size(sub) for sub in batch.values())
    return len(first)
