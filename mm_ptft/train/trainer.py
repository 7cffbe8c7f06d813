"""The training loop. It runs any Task: it sums nothing itself (but the ``optim.l1`` weight penalty, added
as ``l1_loss``), logs every ``*_loss`` it is given,
and evaluates with the metrics object the task builds. Options are branches, not subclasses."""
from __future__ import annotations

import contextlib
import functools
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from mm_ptft.config import ConfigError, RunConfig, to_dict
from mm_ptft.contracts import Callback, Prepared, Task
from mm_ptft.env import cpu_count, resolve_precision, thread_message, thread_plan
from mm_ptft.train import async_save
from mm_ptft.train import callbacks as C
from mm_ptft.train import checkpoint as ckpt
from mm_ptft.train import compiling
from mm_ptft.train import distributed as D
from mm_ptft.train import fit_state
from mm_ptft.train import loader_rate as LR
from mm_ptft.train import loaders as L
from mm_ptft.train import parallel as P
from mm_ptft.train import rng as R
from mm_ptft.train import rundir
from mm_ptft.train import step as S
from mm_ptft.train import trackers as T
from mm_ptft.train.evaluation import Evaluation, run_evaluation
from mm_ptft.train.fit_state import FitState, fit_attribute
from mm_ptft.train.loaders import device_batch, to_device
from mm_ptft.train.logging import RunLogger, log, setup_console
from mm_ptft.train.optim import (GroupBuilder, apply_hparams, build_optimizer, build_scheduler, decay_groups, l1_params,
                                 l1_penalty)
from mm_ptft.train.rng import seed_everything
from mm_ptft.train.row_grads import RowGrads
from mm_ptft.types import take_counts

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
__all__ = ["PRECISIONS", "Evaluation", "FitState", "NonFiniteError", "Trainer", "device_batch", "seed_everything",
           "to_device"]


class NonFiniteError(RuntimeError):
    """Too many consecutive steps with a NaN/Inf loss or gradient."""


class Trainer:
    """Fits ``task`` on ``train_data``, evaluating on ``eval_data``; writes the run directory.

    ``group_builder`` builds the optimizer's parameter groups from the (wrapped) task; by default every trainable
    parameter, without weight decay for biases and norms. ``callbacks`` are called at the hook points, followed
    by those ``train.callbacks`` / ``train.early_stopping_patience`` ask for; a callback stops the run by setting
    ``trainer.should_stop = True`` and asks for a checkpoint after the current step with ``trainer.should_save =
    True`` (on every rank alike: decide from synced values such as eval results).
    ``train.report_to`` names the trackers the run reports to. What a fit builds and advances (optimizer, step
    counters, logger…) is ``trainer.state``, a fresh ``FitState`` per ``fit`` (None before the first)."""

    step = fit_attribute("step", "Optimizer steps taken")
    opt = fit_attribute("opt", "The optimizer")
    logger = fit_attribute("logger", "The run's logger (metrics.jsonl and trackers)")
    best_step = fit_attribute("best_step", "The step of the best evaluation so far (-1: none)")
    found_inf = fit_attribute("found_inf", "The last step's NaN/Inf flag, a 0-d device tensor (1.0: skipped)")
    bad_steps_total = fit_attribute("bad_steps_total", "Non-finite steps skipped so far (counted on the device: "
                                                       "reading it syncs)")
    already_finished = fit_attribute("already_finished", "A finished run resumed: its final metrics (else None)")

    def __init__(self, task: Task, cfg: RunConfig, train_data: Optional[Dataset], eval_data: Optional[Dataset],
                 collate: Callable[[list[Any]], dict[str, Any]], train_lengths: Optional[Sequence[int]] = None,
                 eval_lengths: Optional[Sequence[int]] = None, counters: Optional[dict[str, int]] = None, *,
                 group_builder: Optional[GroupBuilder] = None, callbacks: Sequence[Callback] = ()) -> None:
        self.cfg, self.tc, self.task = cfg, cfg.train, task
        self.group_builder = group_builder
        self.callbacks = [*callbacks, *C.from_config(cfg, task=task)]
        self.should_stop = self.should_save = False
        self.state: Optional[FitState] = None
        self._writer = async_save.BackgroundWriter() if self.tc.async_save else None
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
        self.metric = self.tc.metric_for_best or task.main_metric
        self.greater = self.tc.greater_is_better if self.tc.metric_for_best else task.greater_is_better
        # The host must know each step's NaN/Inf verdict when on_step_end callbacks are told only of steps that
        # changed the weights (every_step callbacks read the verdict from found_inf on the device instead).
        self._host_steps = any(
            getattr(type(cb), "on_step_end", None) is not Callback.on_step_end and not getattr(cb, "every_step", False)
            for cb in self.callbacks)

    @classmethod
    def from_prepared(cls, prepared: Prepared, cfg: RunConfig, group_builder: Optional[GroupBuilder] = None,
                      callbacks: Sequence[Callback] = (), train: bool = True) -> "Trainer":
        """A trainer for what a recipe prepared (its task, data, collate, lengths, counters and callbacks)."""
        return cls(prepared.task, cfg, prepared.train_data if train else None, prepared.eval_data, prepared.collate,
                   prepared.train_lengths, prepared.eval_lengths, prepared.counters, group_builder=group_builder,
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
        common = dict(tc=self.tc, seed=self.cfg.seed, dist=self.dist, device=self.device, collate=self.collate,
                      workers=self._workers())
        self.train_loader = None if train_data is None else L.build_loader(train_data, train_lengths, True, **common)
        self.eval_loader = None if eval_data is None else L.build_loader(eval_data, eval_lengths, False, **common)

    def _workers(self) -> int:
        return L.num_workers(self.tc, self._auto_workers, cpu_count())

    def _epoch_batches(self) -> Optional[int]:
        return L.epoch_batches(self.train_loader)

    def _set_epoch(self, epoch: int) -> None:
        L.set_epoch(self.train_loader, epoch, self.cfg.seed, self.dist.rank)

    def measure_loader(self, train: bool = True) -> LR.LoaderRate:
        """``loader_rate.measure`` on the train (or eval) loader, with the workers this process may start."""
        cap = LR.max_workers(cpu_count(), self.dist.local_world,
                             torch.get_num_threads() if self.device.type == "cpu" else 1)
        return LR.measure(self.model, self.train_loader if train else self.eval_loader, self.collate, self.device,
                          self._autocast, L.batch_size(self.tc, train), train, cap)

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

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # ---- state ----------------------------------------------------------------------------
    def _restore(self, state: dict[str, Any]) -> None:
        st = self.state
        if P.is_fsdp(self.model):
            P.load_full_state(self._unwrapped(), st.opt, {}, state["optimizer"])
        else:
            st.opt.load_state_dict(state["optimizer"])
        fit_state.restore(st, state, self.callbacks, self.dist.rank, self.cfg.seed, self.device)
        self._set_epoch(st.epoch)
        if state["loader"] is not None:
            self.train_loader.load_state_dict(state["loader"])

    def save_checkpoint(self, wait: bool = False) -> Optional[Path]:
        """Write a checkpoint from rank 0 (every rank must call it: FSDP gathers the full state first). With
        ``train.async_save`` rank 0 takes a CPU snapshot and a background thread writes it (the returned path
        exists once the write is done; a failed write raises here, at a later step or at the fit's end);
        ``wait=True`` returns once it is on disk (then every rank has waited: a preempted run exits after it)."""
        self.should_save = False
        with self._timed("save_s"):
            return self._save_checkpoint(wait)

    def _save_checkpoint(self, wait: bool) -> Optional[Path]:
        st, path = self.state, None
        rngs = R.gather_rng_states()  # a collective: on every rank
        if P.is_fsdp(self.model):
            weights: Any = P.full_model_state(self._unwrapped())
            optimizer = P.full_optim_state(self._unwrapped(), st.opt)
        else:
            weights = self._unwrapped()
            optimizer = st.opt.state_dict() if self.dist.is_main else {}
        if self.dist.is_main:
            root = self.run_dir / "checkpoints"
            state = fit_state.checkpoint_state(st, self.train_loader, self._epoch_batches(), optimizer, rngs,
                                               self.callbacks, self.counters, self._workers())
            write = functools.partial(ckpt.save_and_prune, root, st.step, config_yaml=st.config_text,
                                      best=(st.best_step, self.metric, st.best_value), keep_last=self.tc.keep_last)
            if self._writer is None or wait:
                self._wait_saves()
                path = write(weights, state)
            else:  # the snapshot is the stall; the write overlaps the next steps
                weights, state = self._writer.snapshot(ckpt.weights_of(weights), state)
                path = root / ckpt.step_name(st.step)
                self._writer.submit(path, functools.partial(write, weights, state))
            st.saved = (path, st.step, _fingerprint(self._unwrapped()))
        D.barrier()
        self._call("on_save", path)
        return path

    def _wait_saves(self) -> None:
        """Until the checkpoint write in flight (``train.async_save``) is on disk; its failure is raised."""
        if self._writer is not None:
            self._writer.wait()

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
        return P.unwrap(self.model)

    # ---- evaluation -----------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Metrics on the eval split (synced across ranks), plus the mean eval ``loss``; also without ``fit``."""
        return self._evaluate().results

    @torch.no_grad()
    def _evaluate(self) -> Evaluation:
        if self.eval_loader is None:
            return Evaluation({}, {}, {})
        if self.train_loader is None:  # evaluation alone: sized by the forward pass
            self._size_workers(train=False)
        # DDP's forward would sync buffers (a collective) although ranks may hold different numbers of
        # eval batches; FSDP needs its forward, so ranks with fewer batches run filler forwards.
        fsdp = P.is_fsdp(self.model)
        model = self._unwrapped() if self.dist.enabled and not fsdp else self.model
        return run_evaluation(model, self.task, self.eval_loader, self.collate, self.device, self._autocast,
                              self._cudagraphs, fsdp)

    # ---- the loop -------------------------------------------------------------------------
    def fit(self, write_timing: bool = True) -> dict[str, float]:
        """Train to ``max_steps`` / ``epochs``; return the final evaluation. ``write_timing=False``: the caller
        logs the run's phase split (``write_timing()``) once its own finishing work is done."""
        trackers = T.from_config(self.tc.report_to)  # checked on every rank (before any work), started on the main one
        st = self._setup_fit()
        st.already_finished = rundir.finished_results(self.run_dir, st.start_step, st.total)
        if st.already_finished is not None:
            return st.already_finished
        resolved = to_dict(self.cfg)  # once per fit (omegaconf: tens of ms): the logger's and every checkpoint's
        st.config_text = rundir.config_yaml(self.cfg, resolved)
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(st.config_text)
        if st.start_step == 0:
            seed_everything(self.cfg.seed + self.dist.rank)
        st.logger = RunLogger(self.run_dir, self.dist.is_main, st.total, st.start_step, trackers, resolved)
        st.window = S.Window()  # the first train log covers the time from here
        st.row_grads = RowGrads.for_fit(self.task, self.device, self.tc.sparse_embedding_grads, self.dist.enabled,
                                        compiling.compile_mode(self.tc.compile) is not None)
        try:
            results = self._train()
            self._wait_saves()  # the last checkpoint is on disk before final_metrics.json names it
            self._finish(results, write_timing)
        except BaseException as err:
            if st.report is not None:  # no report.md for a failed fit
                st.report, report = None, st.report
                report.cancel()
            self._drain_saves(err)
            st.logger.close(None)  # trackers mark the run failed (and W&B's service process ends)
            raise
        finally:
            st.row_grads.close()  # the model's embedding tables are plain (dense-gradient) modules again
        return results

    def _drain_saves(self, err: BaseException) -> None:
        """A fit that fails still finishes the checkpoint write in flight; a failure of that write is logged
        (the fit's own error is the one raised)."""
        try:
            self._wait_saves()
        except ckpt.CheckpointError as write_err:
            log.error("%s (while the run stopped with %s)", write_err, type(err).__name__)

    def _setup_fit(self) -> FitState:
        """This fit's fresh state (``self.state``): optimizer, schedule and counters, then a checkpoint's on a
        resume, then the loader's workers sized (``train.num_workers=auto``)."""
        total, per_epoch = L.schedule_length(self.train_loader, self.tc)
        groups = (self.group_builder or (lambda m: decay_groups(m, self.cfg.optim)))(self.task)
        opt = build_optimizer(groups, self.cfg.optim, self.device)
        sched = build_scheduler(opt, self.cfg.sched, total)
        if self.cfg.optim.l1 > 0 and P.is_fsdp(self.model):
            raise ConfigError("optim.l1 is not supported with train.distributed=fsdp (sharded weights)")
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype is torch.float16
                                      and self.device.type == "cuda")
        self.should_stop = self.should_save = False
        self.state = FitState(total=total, eval_every=self.tc.eval_every or per_epoch, opt=opt, sched=sched,
                              scaler=scaler, l1_params=l1_params(self.task) if self.cfg.optim.l1 > 0 else [],
                              faults=S.FaultCounter(self.device), found_inf=torch.zeros((), device=self.device),
                              undo=S.Undo() if self.tc.undo_skips else None)
        if self.dist.is_main:
            setup_console()  # resume messages are logged before the RunLogger exists
            rundir.clean_stale(self.run_dir / "checkpoints")
        self._size_threads(self._resume())
        self._size_workers()  # after the optimizer is built, before the first step
        return self.state

    def _size_threads(self, state: Optional[dict[str, Any]]) -> None:
        """Sized threads (``train.threads=0``, no ``OMP_NUM_THREADS``): a resume computes with the count its
        checkpoint records (the first start's: bit-identical to a straight run); a first start under torchrun with
        the fewest any rank sized (one collective, on every rank: ranks on nodes of other loads compute alike, and the
        checkpoint records one count). Explicit settings stay; one that differs from the recorded count is logged."""
        recorded = None if state is None else state.get("threads")
        plan = thread_plan(self.tc.threads, self.dist.local_world, recorded)
        if state is None and self.dist.enabled:
            fewest = -D.all_reduce_max(-torch.get_num_threads())
            plan = plan._replace(threads=fewest, why=f"the fewest any rank sized: {plan.why}")
        elif recorded is None:  # a first start (start() or the caller set the threads), or a checkpoint without them
            return
        if plan.auto:
            changed = plan.threads != torch.get_num_threads()
            torch.set_num_threads(plan.threads)
            if recorded or changed:
                log.info(thread_message(plan))
        elif recorded and plan.threads != recorded:
            log.warning("%s; the run that wrote the checkpoint computed with %d: from here its bits differ from a "
                        "straight run's", thread_message(plan), recorded)

    def _resume(self) -> Optional[dict[str, Any]]:
        """``train.resume`` (or a torchrun restart): the latest good checkpoint's weights and state, if any (returned)."""
        st, restarts = self.state, D.restart_count()
        if restarts:
            log.info("torchrun restart %d: resuming from the latest checkpoint in %s", restarts, self.run_dir)
        if not (self.tc.resume or restarts):
            return None
        self._wait_saves()  # a checkpoint of this trainer's previous fit is complete before one is chosen
        found = ckpt.latest_good(self.run_dir / "checkpoints")
        if found is None:
            log.info("train.resume=true but no usable checkpoint in %s: starting fresh", self.run_dir)
            return None
        fresh = [{k: v for k, v in g.items() if k != "params"} for g in st.opt.param_groups]  # this config's
        st.config_changes = rundir.check_resume(self.run_dir, self.cfg)
        state = self._load(found)
        self._size_workers(state)
        self._restore(state)
        st.start_step = st.step
        if st.config_changes:  # train.on_config_change=new: this config's hyperparameters, the schedule's position
            apply_hparams(st.opt, st.sched, fresh)
            log.warning("resumed with a changed config (train.on_config_change=new): %s",
                        "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in st.config_changes))
        log.info("resumed from %s (step %d, epoch %d)", found, st.step, st.epoch)
        return state

    def _train(self) -> dict[str, float]:
        """The loop, from the logged start to the last evaluation."""
        st = self.state
        log.info("device %s, precision %s%s", self.device, self.precision,
                 " (train.precision=auto)" if self.tc.precision == "auto" else "")
        if self.counters and st.start_step == 0:
            st.logger.log(0, "data", self.counters)
        if self.loader_record:
            st.logger.log(st.step, "loader", self.loader_record)
        if st.config_changes:
            st.logger.log(st.step, "config_change", {k: new for k, _, new in st.config_changes})
        self.model.train()
        self._call("on_train_start")
        st.clock.start_training()
        while st.step < st.total and not self.should_stop:
            self._set_epoch(st.epoch)
            self._run_epoch(st.total)
            if st.batches_done >= (self._epoch_batches() or math.inf):
                st.epoch, st.batches_done = st.epoch + 1, 0
        if st.last_eval_step != st.step:
            self._eval_and_save()
        return st.last_results

    def _run_epoch(self, total: int) -> None:
        """One pass over the loader (or what is left of it after a resume), or less when a callback stops the run.
        Nothing here waits for the device but the log, evaluation and checkpoint steps."""
        st, n_batches = self.state, self._epoch_batches()
        for batch in self.train_loader:
            st.batches_done += 1
            batch = device_batch(batch, self.device, self.collate)
            if take_counts(batch, self.counters):  # a stream's skips, after the device stage (it may skip too)
                st.counts_changed = True
            st.window.samples += L.batch_rows(batch)
            boundary = st.batches_done % self.tc.grad_accum_steps == 0 or st.batches_done == n_batches
            st.window.add_losses(self._forward_backward(batch, boundary), self.tc.grad_accum_steps)
            if not boundary:
                continue
            self._optimizer_step()
            st.logger.advance()
            self._log_eval_save(total)
            if st.step >= total or self.should_stop:
                return

    def _forward_backward(self, batch: Any, boundary: bool) -> dict[str, torch.Tensor]:
        """One micro-batch's forward (+ ``optim.l1``) and backward of ``loss / grad_accum_steps``."""
        st, accum = self.state, self.tc.grad_accum_steps
        with P.grad_sync(self.model, boundary):  # accumulating: no all-reduce until the last micro-batch
            if self._cudagraphs and (st.batches_done - 1) % accum == 0:  # a new optimizer step: the last
                torch.compiler.cudagraph_mark_step_begin()  # one's graph outputs may be overwritten (not the
                # gradients accumulated within a step: they stay live)
            with self._autocast():
                out = self.model(batch)
            if st.l1_params:
                out = {**out, "l1_loss": l1_penalty(st.l1_params, self.cfg.optim.l1)}
                out["loss"] = out["loss"] + out["l1_loss"]
            st.scaler.scale(out["loss"] / accum).backward()
        return out

    def _log_eval_save(self, total: int) -> None:
        """After an optimizer step: the train log, evaluation and checkpoint that are due."""
        step = self.state.step
        if self._writer is not None:
            self._writer.poll()  # a background write that failed stops the run at the next step
        if step % self.tc.log_every == 0 or step >= total:
            self._check_faults()
            self.log_train()
        if step % self.state.eval_every == 0 or step >= total:
            self._eval_and_save()
        elif (self.tc.save_every and step % self.tc.save_every == 0) or self.should_save:
            self._check_faults()
            self.save_checkpoint()

    def log_train(self) -> None:
        """Log a ``train`` row for the optimizer steps since the last one (their mean losses, this step's gradient
        norm, lr and throughput) and open the next window. The loop calls it every ``train.log_every`` steps; a
        callback that ends the run between those (``on_step_end``: the step it follows is counted already) calls it
        so that no step goes unlogged. A collective under torchrun (losses are averaged over ranks): every rank
        calls it at the same step."""
        st = self.state
        win = st.window
        vals = {k: v / win.steps for k, v in _mean_over_ranks(win.sums).items()}
        vals.update(lr=st.sched.get_last_lr()[0], grad_norm=float(st.grad_norm))  # read before the clock stops
        now = time.perf_counter()
        st.logger.log(st.step, "train", {**vals, **win.timings(self.dist.world, now), "epoch": st.epoch})
        if st.counts_changed:  # skips counted by streaming loader workers since the last log
            st.logger.log(st.step, "data", self.counters)
            st.counts_changed = False
        st.window = S.Window(start=now)

    @contextlib.contextmanager
    def _timed(self, part: str) -> Iterator[None]:
        """Add the time the block takes to the current window's ``part`` (``eval_s`` / ``save_s``)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            win = self.state.window
            setattr(win, part, getattr(win, part) + time.perf_counter() - t0)

    def _optimizer_step(self) -> torch.Tensor:
        """Unscale, clip, and step unless the loss or gradient is NaN/Inf (then skip and count), without a host
        sync where the optimizer can skip on the device (``step.skips_on_device``). Returns the gradient norm
        (a device tensor)."""
        st = self.state
        st.row_grads.densify()
        st.scaler.unscale_(st.opt)
        norm = S.grad_norm(S.params_of(st.opt), self.tc.grad_clip)  # same on every rank (reduced grads)
        if st.scaler.is_enabled():  # fp16: the scaler skips overflow steps itself (fused: on the device)
            st.scaler.step(st.opt)
            st.found_inf = S.scaler_found_inf(st.scaler, st.opt)
            st.scaler.update()
            stepped: Optional[bool] = True
        else:
            st.found_inf = S.nonfinite(norm)
            on_device = not self._host_steps and S.skips_on_device(st.opt)
            undo = None if self._host_steps else st.undo
            stepped = S.step_unless(st.opt, st.found_inf, on_device, undo)
            st.faults.add(st.found_inf)
        st.opt.zero_grad(set_to_none=True)
        st.row_grads.released(st.found_inf)
        st.sched.step()
        st.step, st.grad_norm = st.step + 1, norm
        st.window.steps += 1  # counted before on_step_end: a callback's log_train covers this step
        for cb in self.callbacks:  # they see the new step count and found_inf; stepped None: decided on the device
            if stepped is not False or getattr(cb, "every_step", False):
                cb.on_step_end(self)
        return norm

    def _check_faults(self) -> None:
        """At log, evaluation and checkpoint steps (one sync): log the non-finite steps skipped since the last
        check; stop when a run of ``train.max_bad_steps`` consecutive ones happened, saving the last good state
        (skipped steps changed no weights)."""
        st = self.state
        since, worst, total = st.faults.read()
        if since:
            st.logger.log(st.step, "fault", {"nonfinite_steps_skipped": since, "nonfinite_steps_total": total})
        if worst >= self.tc.max_bad_steps:
            st.opt.zero_grad(set_to_none=True)
            path = self.save_checkpoint(wait=True)
            raise NonFiniteError(f"{worst} consecutive steps had a NaN/Inf loss or gradient "
                                 f"(train.max_bad_steps={self.tc.max_bad_steps}); the last good state "
                                 f"is saved in {path or self.run_dir / 'checkpoints'}")

    def _eval_and_save(self) -> None:
        """Evaluate, track the best metric, checkpoint (callbacks see the results first: early stopping)."""
        st = self.state
        self._check_faults()
        t0 = time.time()
        with self._timed("eval_s"):
            ev = self._evaluate()
            st.clock.add_eval(time.time() - t0)
            if ev.counts:  # a streamed eval split's skips (the same at every evaluation)
                st.logger.log(st.step, "data", {f"eval_{k}": v for k, v in ev.counts.items()})
            st.last_eval_step, st.last_results, st.last_artifacts = st.step, ev.results, ev.artifacts
            st.artifacts_written = False
            if ev.results:
                st.logger.log(st.step, "eval", ev.results)
            self._call("on_evaluate", ev.results)
        value = ev.results.get(self.metric)
        if value is not None:
            better = st.best_value is None or (value > st.best_value if self.greater else value < st.best_value)
            if better:
                st.best_value, st.best_step = value, st.step
        if st.step >= st.total or self.should_stop:  # the final evaluation: the report draws while the checkpoint
            self._write_artifacts()  # is written
            self._start_report()
        st.last_eval_checkpoint = self.save_checkpoint()

    def _write_artifacts(self) -> None:
        """The last evaluation's non-scalar results as ``<name>.json`` (main rank; once per evaluation)."""
        st = self.state
        if self.dist.is_main and not st.artifacts_written:
            for stem, value in st.last_artifacts.items():
                (self.run_dir / f"{stem}.json").write_text(json.dumps(value))
            st.artifacts_written = True

    def _start_report(self) -> None:
        """``report.md`` (``train.report``) in a child process from now on (``report.ReportProcess``; main rank)."""
        st = self.state
        if self.dist.is_main and self.tc.report and st.report is None:
            from mm_ptft.train.report import ReportProcess

            st.report = ReportProcess(self.run_dir)

    def plain_model(self) -> Optional[nn.Module]:
        """The trained task as one plain module on the main process, None elsewhere (under FSDP a collective:
        every rank calls it; the shards are gathered into an unsharded CPU copy)."""
        plain = self._unwrapped()
        if P.is_fsdp(self.model):
            weights = P.full_model_state(plain)
            plain = self._export(weights) if self._export is not None else None
        return plain if self.dist.is_main else None

    def weights_checkpoint(self) -> Optional[Path]:
        """The checkpoint that holds exactly the weights the model holds now (main rank): the last one this fit
        wrote, when no optimizer step was taken since (a fused optimizer bumps no version counter) and no parameter
        or buffer was replaced or changed in place (their storages and version counters: no bytes compared), and
        it is still kept; else None. Exporting from it needs no reload. (A callback that rewrites weights through
        ``.data`` after the last checkpoint goes unseen: that checkpoint would not hold its change either.)"""
        st = self.state
        if st is None or st.saved is None or not self.dist.is_main:
            return None
        self._wait_saves()
        path, step, fingerprint = st.saved
        same = step == st.step and fingerprint == _fingerprint(self._unwrapped())
        return path if same and path.is_dir() else None

    def write_timing(self) -> dict[str, float]:
        """Log where this run's wall time went (``phases.PhaseClock``): a ``timing`` event appended to
        ``metrics.jsonl`` and the ``timing`` entry of ``final_metrics.json`` (main rank); returns the split."""
        st = self.state
        self.join_report()
        split = st.clock.phases()
        if self.dist.is_main:
            rundir.write_timing(self.run_dir, st.step, split)
            log.info("[timing] " + " ".join(f"{k}={v:.2f}" for k, v in split.items()))
        return split

    def _finish(self, results: dict[str, float], write_timing: bool = True) -> None:
        st = self.state
        if self.dist.is_main:
            rundir.write_final(self.run_dir, results, st.last_eval_step, st.last_eval_checkpoint)
            self._write_artifacts()
        self._call("on_train_end", results)
        st.logger.close(results)
        self._start_report()  # started at the final evaluation unless the run ended otherwise
        if st.report is not None:  # it writes report.md (its plots redrawn if on_train_end logged more rows)
            st.report.release()  # while the caller writes the encoder directories
        D.barrier()
        if write_timing:
            self.write_timing()

    def join_report(self) -> None:
        """Wait for ``report.md`` (rendered in a child process since the final evaluation); its error, if any,
        raises here. ``fit`` joins it itself unless called with ``write_timing=False`` (then ``write_timing`` does)."""
        st = self.state
        if st is not None and st.report is not None:
            report, st.report = st.report, None
            report.join()


def _fingerprint(model: nn.Module) -> tuple[tuple[int, int], ...]:
    """Each parameter's and buffer's storage address and version counter (bumped by every in-place change: an
    optimizer step, ``load_state_dict``, a callback's ``copy_``): equal fingerprints mean the same weights. Under
    FSDP these are this rank's shards; no collective."""
    return tuple((t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers()))


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
