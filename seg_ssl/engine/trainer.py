"""The one trainer every method runs on: iterations, devices, DDP, AMP, checkpoints, logs, eval.

A method supplies ``build_model()``, ``training_step(model, labeled, unlabeled, it)`` (a dict of
losses with the total under ``"loss"``), ``after_step(model, it)`` and ``predictor(model)`` for
evaluation (the contract: ``seg_ssl/methods/base.py``). Everything else lives here or beside it:
the files of a run in ``workdir.py`` (``RunFiles``), what latest.pth holds and how a run resumes
in ``run_state.py``, AMP, channels_last and torch.compile in ``execution.py``, the optimizer in
``optim.py``, the log in ``logbook.py``, signals in ``interrupts.py``, TensorBoard in ``tb.py``.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel

from seg_ssl.collectives import all_reduce_sum
from seg_ssl.data.dataset import build_split, check_disjoint, resolve_list, unreadable
from seg_ssl.data.streams import make_stream, shard_indices
from seg_ssl.data.transforms import train_pipeline, val_pipeline
from seg_ssl.engine import dist as du, tb
from seg_ssl.engine.checkpoint import load_checkpoint, model_state
from seg_ssl.engine.dry_run import derived_sizes
from seg_ssl.engine.execution import (
    AMP_DTYPES,
    autocast,
    channels_last_batch,
    compile_module,
    grad_scaler,
    is_compile_failure,
)
from seg_ssl.engine.interrupts import StopRequested, fault_injection
from seg_ssl.engine.logbook import LossWindow, progress_bar, setup_logging
from seg_ssl.engine.optim import build_optimizer, set_lr
from seg_ssl.engine.rng import seed_everything
from seg_ssl.engine.run_state import Progress, RunState, find_checkpoint
from seg_ssl.engine.threads import apply_threads
from seg_ssl.engine.workdir import RunFiles
from seg_ssl.errors import ConfigError, DataError, one_line
from seg_ssl.evaluation.evaluator import evaluate, predict_kwargs
from seg_ssl.evaluation.metrics import format_table
from seg_ssl.methods import METHODS, build_method
from seg_ssl.models.segmentor import has_unused_parameters
from seg_ssl.models.sync_bn import convert_sync_batchnorm
from seg_ssl.models.weights import load_strict

LOG = logging.getLogger("seg_ssl")


def to_device(batch, device):
    if batch is None:
        return None
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


@dataclass
class TrainResult:
    """What ``Trainer.train()`` returns: the iteration reached, whether the run stopped before
    ``train.iters`` (a signal or ``max_steps``; latest.pth holds its state), and the last evaluation
    (``metrics``: aAcc, mIoU, mAcc, per-class IoU/Acc, confusion; ``table``: the per-class table)."""
    iteration: int
    stopped: bool = False
    metrics: dict | None = None
    table: str = ""
    is_main: bool = True


class Trainer:
    def __init__(self, cfg, info: du.DistInfo | None = None):
        """Builds a run, in this order: the process group, threads and sizes; the work dir (its lock,
        then the log); the checkpoint to continue from; the config record; the method, its model,
        optimizer and scaler; the data; and the state restored from the checkpoint."""
        self.cfg = cfg
        self.info = info or du.init_distributed(timeout_s=cfg.dist.timeout_s)
        self.device = self.info.device
        threads_line = apply_threads(cfg)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        self.sizes = derived_sizes(cfg, self.info.world_size)
        self.files = RunFiles(cfg.work_dir, self.info.is_main)
        self.files.take(cfg.work_dir_wait_s)  # before anything is written: one run per work dir
        with du.waiting_for("waiting for rank 0 to take the work dir", self.info):
            du.barrier()
        setup_logging(self.files.log_file, self.info.is_main)
        LOG.info("%s", threads_line)
        self._resume_path, resume_ckpt = find_checkpoint(cfg)
        self.files.write_config(cfg)  # only now: a refused resume leaves the run's record as it was
        LOG.info("config (resolved; config.yaml has every method's section):\n%s", config_in_use(cfg))
        seed_everything(cfg.seed + self.info.rank)
        self.method = build_method(cfg, self.info.world_size)
        self.model, self.ddp = self._build_model()
        self.method.setup(self.model)
        self.optimizer = build_optimizer(cfg, self.model)
        self.amp_dtype = AMP_DTYPES[cfg.train.amp]
        self.scaler = grad_scaler(self.device, self.amp_dtype)
        # what the methods call in training; evaluation and checkpoints use the plain self.model
        self.train_model = (compile_module(self.ddp, cfg.train.compile, cfg.train.compile_backend)
                            if cfg.train.compile != "none" else self.ddp)
        self.labeled, self.unlabeled, self.val = self._build_data()
        self.run_state = RunState(cfg, self.info, self.model, self.optimizer, self.scaler, self.method)
        self.progress = (self.run_state.restore(self._resume_path, resume_ckpt) if resume_ckpt is not None
                         else Progress())
        # called after every step with (iteration, losses): tests, smoke runs and benchmarks watch here
        self.on_step = [f for f in (fault_injection(self.info.rank),) if f is not None]

    # -- the loop ------------------------------------------------------------------------------
    def train(self, max_steps: int | None = None) -> TrainResult:
        """Train to ``train.iters``. ``max_steps`` stops earlier, as a pre-emption would: the run
        saves ``latest.pth`` and a later ``train()`` continues from it."""
        t, p = self.cfg.train, self.progress
        stop_at = t.iters if max_steps is None else min(t.iters, p.iteration + max_steps)
        result = None
        self._log_start()
        board = self.files.tensorboard(self.cfg.to_dict(), self._resume_path is not None, p.iteration)
        with board, StopRequested() as stop, progress_bar(t.iters, p.iteration, self.info.is_main) as bar:
            if p.eval_pending:  # latest.pth was saved for an evaluation that did not finish: run it first
                LOG.info("evaluating at iteration %d first: latest.pth was saved just before it", p.iteration)
                result = self.record(self.evaluate_saved(), board)
            streams = self.batch_streams() if p.iteration < t.iters else None
            window = LossWindow(self.device)
            while p.iteration < t.iters:
                lr = self.set_lr()
                labeled, unlabeled, data_time = self.next_batches(*streams)
                losses = self.step(labeled, unlabeled)  # forward, backward, update, method.after_step
                p.iteration += 1
                for callback in self.on_step:
                    callback(p.iteration, losses)
                window.add(losses, data_time)
                bar.update(1)
                if p.iteration % t.log_interval == 0 or p.iteration == t.iters:
                    self.log_window(window, lr, board, bar)  # the log line, train.jsonl, TensorBoard
                evaluate_now = (bool(t.eval_interval and p.iteration % t.eval_interval == 0)
                                or p.iteration == t.iters)
                saved = evaluate_now or p.iteration % t.ckpt_interval == 0
                if saved:  # before the evaluation: one that fails loses no training
                    p.eval_pending = evaluate_now  # latest.pth says whether it was saved for an evaluation
                    self.save_latest()
                if evaluate_now:
                    metrics = self.evaluate_saved()
                    result = self.record(metrics, board)  # best.pth, metrics.json(l), TensorBoard
                reason = self._stop_reason(stop, stop_at)
                if reason:
                    if not saved:
                        self.save_latest()
                    LOG.warning("stopped (%s) at iteration %d; latest.pth saved, run the same command to "
                                "continue", reason, p.iteration)
                    return TrainResult(p.iteration, stopped=True, is_main=self.info.is_main)
            if result is None:  # already trained to train.iters: evaluate what there is
                LOG.info("already trained to iteration %d", p.iteration)
                result = self.record(self.evaluate_saved(), board)
        return result

    def step(self, labeled, unlabeled) -> dict:
        """One iteration: the method's losses, backward, the optimizer's update, then the method's
        ``after_step``. A non-finite loss is an error or (``train.skip_nonfinite``) a skipped step."""
        t = self.cfg.train
        with du.waiting_for("training step (gradient all-reduce)", self.info, self.progress.iteration + 1):
            losses = self._forward(labeled, unlabeled)
            if not self._finite(losses):
                return {"skipped": 1.0}
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(losses["loss"]).backward()
            if t.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.method.after_step(self.model, self.progress.iteration)
        return {k: v.detach() if torch.is_tensor(v) else v for k, v in losses.items()}

    def save_latest(self) -> None:
        """latest.pth with every rank's RNG state (a collective: every rank calls it)."""
        rng = self.run_state.gather_rng(self.progress.iteration)
        self.files.save_checkpoint("latest.pth", self.run_state.checkpoint(self.progress, rng))

    def evaluate_saved(self) -> dict:
        """Evaluate at an iteration whose latest.pth is written. A failure says that the checkpoint
        is kept and that the same command continues (evaluating again first)."""
        it = self.progress.iteration
        hint = (f"evaluation at iteration {it} failed; latest.pth (iteration {it}) is saved: fix the cause "
                f"and run the same command to continue (it evaluates again first)")
        try:
            with du.waiting_for(f"evaluating at iteration {it}", self.info):
                metrics = self.evaluate()
        except DataError as e:  # an unreadable or wrong val file: the user's to fix, one line
            LOG.error("%s; %s", one_line(e), hint)
            raise DataError(f"{one_line(e)}; {hint}") from None
        except Exception:  # anything else keeps its traceback, with what was kept said first
            LOG.error("%s", hint)
            raise
        self.progress.eval_pending = False
        return metrics

    def record(self, res: dict, board: tb.Board) -> TrainResult:
        """What an evaluation leaves: its log line, ``best.pth`` when its mIoU is the best so far,
        metrics.json and metrics.jsonl, and TensorBoard's scalars and panels."""
        p, names = self.progress, self.cfg.data.class_names
        LOG.info("eval at iteration %d: mIoU %.2f aAcc %.2f mAcc %.2f%s", p.iteration, 100 * res["mIoU"],
                 100 * res["aAcc"], 100 * res["mAcc"],
                 " (the EMA teacher)" if self.cfg.eval.model == "ema" else "")
        if not math.isnan(res["mIoU"]) and res["mIoU"] > p.best["mIoU"]:
            p.best = {"mIoU": res["mIoU"], "iteration": p.iteration}
            self.files.save_checkpoint("best.pth", self.run_state.checkpoint(p))
        self.files.write_metrics(p.iteration, res, names, self.cfg.eval.model)
        board.evaluation(res, names, p.iteration, self._val_panels)
        return TrainResult(p.iteration, metrics=res, table=format_table(res, names),
                           is_main=self.info.is_main)

    # -- what the loop calls -------------------------------------------------------------------
    def set_lr(self) -> float:
        return set_lr(self.optimizer, self.cfg.train, self.progress.iteration)

    def batch_streams(self):
        """The labeled and unlabeled (None for labeled-only) batch iterators, from this iteration."""
        d, seed = self.cfg.data, self.cfg.seed
        pin = self.device.type == "cuda"
        rank, world, start = self.info.rank, self.info.world_size, self.progress.iteration
        lab = make_stream(self.labeled, d.batch_size, rank, world, seed, 0, start, d.num_workers, pin)
        per_step = self.method.unlabeled_draws(self.cfg)  # CutMix mixes pairs of images
        first = max(start, self.method.first_unlabeled_iteration())  # none drawn in the warm-up
        unl = (make_stream(self.unlabeled, d.unlabeled_batch_size * per_step, rank, world, seed, 1, first,
                           d.num_workers, pin) if self.unlabeled is not None else None)
        return lab, unl

    def next_batches(self, lab_stream, unl_stream):
        """The next labeled and unlabeled batches on the device, and the time spent waiting for them.
        A bad file met mid-run keeps the work done so far (latest.pth), as SIGTERM does."""
        start = time.time()
        try:
            labeled = to_device(next(lab_stream), self.device)
            unlabeled = (to_device(next(unl_stream), self.device) if unl_stream is not None
                         and self.progress.iteration >= self.method.first_unlabeled_iteration() else None)
            if self.cfg.train.channels_last:
                labeled = channels_last_batch(labeled)
                unlabeled = channels_last_batch(unlabeled) if unlabeled is not None else None
        except DataError:
            self.files.save_checkpoint("latest.pth", self.run_state.checkpoint(self.progress))
            LOG.warning("bad data at iteration %d; latest.pth saved: fix the file and run the same command "
                        "to continue", self.progress.iteration)
            raise
        return labeled, unlabeled, time.time() - start

    def log_window(self, window: LossWindow, lr: float, board: tb.Board, bar) -> None:
        avg, it = window.averages(), self.progress.iteration
        LOG.info("%s", window.line(avg, it, self.cfg.train.iters, lr, self.cfg.train.log_interval))
        self.files.append_train_record(window.record(avg, it, lr))
        board.train_window(avg, lr, it, self.cfg.data.class_names)
        bar.set_postfix(loss=f"{avg.get('loss', 0):.3f}")
        window.reset()

    def evaluate(self) -> dict:
        self.model.eval()
        # the val DataLoader draws its base seed from torch's global generator: without the fork, an
        # evaluation would shift every later dropout mask and sample, so a run's weights would depend
        # on train.eval_interval
        with torch.random.fork_rng(devices=self._cuda_devices()):
            res = evaluate(self.method.predictor(self.method.evaluated(self.model)), self.val,
                           self.cfg.data.num_classes, self.cfg.data.ignore_index,
                           self.method.size_divisor(self.model), self.device, rank=self.info.rank,
                           world_size=self.info.world_size, batch_size=self.cfg.data.val_batch_size,
                           **predict_kwargs(self.cfg))
        self.model.train()
        return res

    def _val_panels(self) -> list:
        """The fixed val images with truth and prediction, for TensorBoard (main process only)."""
        self.model.eval()
        try:
            # as evaluate(): no effect on later draws
            with torch.random.fork_rng(devices=self._cuda_devices()):
                return tb.val_panels(self.method.predictor(self.method.evaluated(self.model)), self.val,
                                     self.cfg, self.method.size_divisor(self.model), self.device)
        finally:
            self.model.train()

    def _cuda_devices(self) -> list[int]:
        return [self.device.index or 0] if self.device.type == "cuda" else []

    def _forward(self, labeled, unlabeled) -> dict:
        """The method's losses, under autocast; a torch.compile that fails falls back to eager once."""
        try:
            with autocast(self.device, self.amp_dtype):
                return self.method.training_step(self.train_model, labeled, unlabeled,
                                                 self.progress.iteration)
        except Exception as e:
            if self.train_model is self.ddp or not is_compile_failure(e):
                raise
            LOG.warning("train.compile=%s (backend %s) failed at iteration %d (%s); training eager from here",
                        self.cfg.train.compile, self.cfg.train.compile_backend, self.progress.iteration + 1,
                        one_line(e))
            self.train_model = self.ddp
            return self._forward(labeled, unlabeled)  # eager now: a second failure is raised

    def _finite(self, losses: dict) -> bool:
        """Whether every rank's loss is finite; a non-finite one is an error naming its terms, or a
        skipped step (``train.skip_nonfinite``), on every rank alike."""
        p = self.progress
        bad = torch.tensor(0.0 if torch.isfinite(losses["loss"]) else 1.0, device=self.device)
        if all_reduce_sum(bad).item() == 0:
            return True
        terms = ", ".join(k for k, v in losses.items() if not torch.isfinite(torch.as_tensor(v)).all())
        if self.cfg.train.skip_nonfinite:
            p.skipped += 1
            self.optimizer.zero_grad(set_to_none=True)
            LOG.warning("iteration %d: non-finite loss (%s); step skipped (%d so far)", p.iteration,
                        terms or "other rank", p.skipped)
            return False
        latest = self.files.path("latest.pth")
        saved = (f"the last good checkpoint is {latest}" if self.files.exists("latest.pth")
                 else "no checkpoint was written yet")
        raise FloatingPointError(f"non-finite loss at iteration {p.iteration} in term(s) "
                                 f"{terms or 'on another rank'}; {saved} (set train.skip_nonfinite=true to "
                                 f"skip such steps)")

    def _stop_reason(self, stop: StopRequested, stop_at: int) -> str | None:
        """Why to stop before train.iters, agreed by every rank (or collectives would hang): a signal
        here or on another rank, or ``max_steps``; None to go on."""
        signalled = stop.signal is not None
        if self.info.distributed:
            flag = torch.tensor(float(signalled), device=self.device)
            with du.waiting_for("agreeing on a stop signal", self.info, self.progress.iteration):
                signalled = all_reduce_sum(flag).item() > 0
        if signalled:
            return f"signal {stop.signal}" if stop.signal else "signal on another rank"
        return "max_steps" if self.progress.iteration == stop_at < self.cfg.train.iters else None

    def _log_start(self) -> None:
        drawn = self.sizes.get("unlabeled_drawn_per_process")
        LOG.info("method %s | %d labeled, %s unlabeled, %d val | world %d | per-process batch %d+%d%s | %s",
                 self.cfg.method, len(self.labeled), len(self.unlabeled) if self.unlabeled else 0,
                 len(self.val), self.info.world_size, self.sizes["labeled_per_process"],
                 self.sizes["unlabeled_per_process"] if self.unlabeled else 0,
                 f" ({drawn} unlabeled drawn, mixed in pairs)" if drawn else "", self.device)
        if self.method.loss_scale_note:  # why its loss is not on labeled-only's scale, e.g. in a warm-up
            LOG.info("loss scale (%s): %s", self.cfg.method, self.method.loss_scale_note)

    # -- building a run --------------------------------------------------------------------------
    def _build_model(self):
        """The method's model on the device (``load_from`` weights, SyncBN) and its DDP wrapper."""
        cfg = self.cfg
        model = self.method.build_model().to(self.device)
        if cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if cfg.load_from:
            try:
                load_strict(model, model_state(load_checkpoint(cfg.load_from)))
            except ValueError as e:
                raise ConfigError(f"load_from {cfg.load_from}: {e}") from None
        if self.info.distributed and cfg.train.sync_bn:
            model = convert_sync_batchnorm(model, self.device)
        if not self.info.distributed:
            return model, model
        unused = self.method.find_unused_parameters or has_unused_parameters(model)
        device_ids = [self.info.local_rank] if self.device.type == "cuda" else None
        return model, DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=unused)

    def _build_data(self):
        """The labeled, unlabeled (None for labeled-only) and val datasets, checked."""
        d = self.cfg.data
        labeled = build_split(d, "labeled", train_pipeline(d, labeled=True))
        unlabeled = None
        if self.method.uses_unlabeled:
            if not d.unlabeled_list:
                raise ConfigError(f"method {self.cfg.method!r} needs data.unlabeled_list")
            # with data.unlabeled_truth the labels come along, for pseudo-label accuracy in the log only
            unlabeled = build_split(d, "unlabeled", self.method.unlabeled_pipeline(d),
                                    with_labels=d.unlabeled_truth)
            check_disjoint(labeled, unlabeled, d.allow_overlap, "data")
        val = build_split(d, "val", val_pipeline(d))
        self._check_val_decodes(val)
        return labeled, unlabeled, val

    def _check_val_decodes(self, val) -> None:
        """Decode every val image and label now (each rank its evaluation shard), not only check
        that they exist: a truncated val image otherwise stops the run at its first evaluation.
        Training files are only checked to exist: a bad one met mid-run saves latest.pth first,
        and decoding a whole train set would delay every start (VOC's 10,582 train_aug images,
        at the ~4 ms per image and label measured for val, take ~40 s)."""
        problems = unreadable(val, shard_indices(len(val), self.info.rank, self.info.world_size))
        if self.info.distributed:  # every rank stops with the same line, none waits for the others
            every = [None] * self.info.world_size
            with du.waiting_for("checking the val files", self.info):
                dist.all_gather_object(every, problems)
            problems = [p for rank_problems in every for p in rank_problems]
        if problems:
            path = resolve_list(self.cfg.data.root, self.cfg.data.val_list)
            raise DataError(f"data.val_list {path}: {len(problems)} val file(s) cannot be used, e.g. "
                            f"{problems[0]}; run tools/check_dataset.py CONFIG for every problem")

    def close(self) -> None:
        """Release the work dir, so that another process may continue this run (the lock is
        otherwise held until this process exits)."""
        self.files.release()


def config_in_use(cfg) -> str:
    """The resolved config as YAML with only the method section in use (the others' defaults
    would fill a screen and say nothing about this run)."""
    return yaml.safe_dump({k: v for k, v in cfg.to_dict().items() if k not in METHODS or k == cfg.method},
                          sort_keys=False).rstrip()


def train(cfg) -> TrainResult:
    trainer = Trainer(cfg)
    try:
        res = trainer.train()
        with du.waiting_for("waiting for the other ranks to finish", trainer.info):
            du.barrier()  # no rank closes its connections while another may still be sending
        return res
    finally:
        trainer.close()
        du.cleanup()
