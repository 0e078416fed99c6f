"""The one trainer every method runs on: iterations, devices, DDP, AMP, checkpoints, logs, eval.

A method supplies ``model`` (an nn.Module), ``training_step(model, labeled, unlabeled, it)`` that
returns a dict of losses with the total under ``"loss"``, and ``predictor(model)`` for evaluation.
Everything else (the loop, streams, optimizer, schedule, I/O) lives here or beside it: what
latest.pth holds and how a run resumes in ``run_state.py``, AMP, channels_last and torch.compile in
``execution.py``, the optimizer's parameter groups in ``optim.py``, the log window in ``logbook.py``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from seg_ssl.collectives import all_reduce_sum
from seg_ssl.data.dataset import build_split, check_disjoint, resolve_list, unreadable
from seg_ssl.data.streams import make_stream, shard_indices
from seg_ssl.data.transforms import train_pipeline, val_pipeline
from seg_ssl.engine import dist as du
from seg_ssl.engine import tb
from seg_ssl.engine.checkpoint import load_checkpoint, model_state
from seg_ssl.engine.execution import AMP_DTYPES, autocast, channels_last_batch, compile_module, grad_scaler
from seg_ssl.engine.execution import is_compile_failure
from seg_ssl.engine.logbook import LossWindow
from seg_ssl.engine.optim import build_optimizer, set_lr
from seg_ssl.engine.rng import seed_everything
from seg_ssl.engine.run_state import Progress, RunState, find_checkpoint
from seg_ssl.engine.threads import apply_threads
from seg_ssl.engine.workdir import lock_work_dir, remove_stale_temp_files, unlock_work_dir
from seg_ssl.errors import ConfigError, DataError, one_line
from seg_ssl.evaluation.evaluator import evaluate, predict_kwargs
from seg_ssl.evaluation.metrics import evaluation_record, format_table, to_json
from seg_ssl.methods import METHODS, build_method
from seg_ssl.models.segmentor import has_unused_parameters
from seg_ssl.models.weights import load_strict
from seg_ssl.models.sync_bn import convert_sync_batchnorm

LOG = logging.getLogger("seg_ssl")


def setup_logging(work_dir: str | None, is_main: bool) -> None:
    LOG.setLevel(logging.INFO if is_main else logging.WARNING)
    LOG.propagate = False
    for h in list(LOG.handlers):
        LOG.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(fmt)
    LOG.addHandler(console)
    if work_dir and is_main:
        fh = logging.FileHandler(os.path.join(work_dir, "train.log"))
        fh.setFormatter(fmt)
        LOG.addHandler(fh)


def to_device(batch, device):
    if batch is None:
        return None
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


class StopRequested:
    """SIGTERM/SIGINT set a flag; the loop finishes the step, saves ``latest.pth`` and exits."""

    def __init__(self):
        self.signal = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (e.g. inside some test runners)
                pass
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


FAULT_ENV = "SEG_SSL_TEST_KILL"


def _fault_injection(rank: int, iteration: int) -> None:
    """Test hook, off unless ``SEG_SSL_TEST_KILL=RANK:ITERATION[,RANK:ITERATION ...]`` is set: the
    k-th pair applies to torchrun's attempt k (TORCHELASTIC_RESTART_COUNT k, unset: 0), whose RANK
    SIGKILLs itself right after finishing ITERATION; attempts past the list run on. It makes the
    elastic-restart test kill a worker at a known step instead of racing a kill from outside."""
    spec = os.environ.get(FAULT_ENV)
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if not spec or attempt >= len(spec.split(",")):
        return
    target_rank, target_it = (int(v) for v in spec.split(",")[attempt].split(":"))
    if rank == target_rank and iteration == target_it:
        os.kill(os.getpid(), signal.SIGKILL)


def derived_sizes(cfg, world_size: int) -> dict:
    """Per-process sizes computed from the global config (shown by ``--dry-run``)."""
    d = cfg.data
    for key, g in (("data.batch_size", d.batch_size), ("data.unlabeled_batch_size", d.unlabeled_batch_size)):
        if g % world_size:
            raise ConfigError(f"{key} = {g} is the global batch and must be divisible by the world "
                              f"size {world_size}")
    per_l, per_u = d.batch_size // world_size, d.unlabeled_batch_size // world_size
    sizes = {"world_size": world_size, "labeled_per_process": per_l, "unlabeled_per_process": per_u}
    method = METHODS[cfg.method]
    draws = method.unlabeled_draws(cfg)
    if draws > 1:  # CutMix: each mixed image is made of two drawn images
        sizes["unlabeled_drawn_per_process"] = draws * per_u
    sizes.update(method.dry_run_sizes(cfg, world_size, per_u))
    return sizes


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
        self.cfg = cfg
        self.info = info or du.init_distributed(timeout_s=cfg.dist.timeout_s)
        self.device = self.info.device
        threads_line = apply_threads(cfg)  # logged once the log is set up
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        self.sizes = derived_sizes(cfg, self.info.world_size)
        self.work_dir = cfg.work_dir
        if self.info.is_main:
            os.makedirs(self.work_dir, exist_ok=True)
            lock_work_dir(self.work_dir, cfg.work_dir_wait_s)  # before anything is written: one run per work dir
            remove_stale_temp_files(self.work_dir)
        with du.waiting_for("waiting for rank 0 to take the work dir", self.info):
            du.barrier()
        setup_logging(self.work_dir, self.info.is_main)
        LOG.info("%s", threads_line)
        self._resume_path, resume_ckpt = find_checkpoint(cfg)
        if self.info.is_main:  # only now: a refused resume leaves the run's record as it was
            cfg.dump(os.path.join(self.work_dir, "config.yaml"))
        LOG.info("config (resolved):\n%s", yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip())
        seed_everything(cfg.seed + self.info.rank)

        self.method, self.model, self.ddp = self._build_model()
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

    def _build_model(self):
        """The method, its model on the device (``load_from`` weights, SyncBN) and the DDP wrapper."""
        cfg = self.cfg
        method = build_method(cfg, self.info.world_size)
        model = method.model.to(self.device)
        if cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if cfg.load_from:
            try:
                load_strict(model, model_state(load_checkpoint(cfg.load_from)))
            except ValueError as e:
                raise ConfigError(f"load_from {cfg.load_from}: {e}") from None
        if self.info.distributed and cfg.train.sync_bn:
            model = convert_sync_batchnorm(model, self.device)
        method.model = model
        ddp = (DistributedDataParallel(model, device_ids=[self.info.local_rank] if self.device.type == "cuda" else None,
                                       find_unused_parameters=method.find_unused_parameters
                                       or has_unused_parameters(model))
               if self.info.distributed else model)
        return method, model, ddp

    def _build_data(self):
        """The labeled, unlabeled (None for labeled-only) and val datasets, checked."""
        d = self.cfg.data
        labeled = build_split(d, "labeled", train_pipeline(d, labeled=True))
        unlabeled = None
        if self.method.uses_unlabeled:
            if not d.unlabeled_list:
                raise ConfigError(f"method {self.cfg.method!r} needs data.unlabeled_list")
            # with data.unlabeled_truth the labels come along, for pseudo-label accuracy in the log only
            unlabeled = build_split(d, "unlabeled", self.method.unlabeled_pipeline(d), with_labels=d.unlabeled_truth)
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
            raise DataError(f"data.val_list {path}: {len(problems)} val file(s) cannot be used, e.g. {problems[0]}; "
                            f"run tools/check_dataset.py CONFIG for every problem")

    def _ckpt_path(self, name: str) -> str:
        return os.path.join(self.work_dir, name)

    def close(self) -> None:
        """Release the work dir, so that another process may continue this run (the lock is
        otherwise held until this process exits)."""
        if self.info.is_main:
            unlock_work_dir(self.work_dir)

    def save(self, name: str, rng_per_rank: list | None = None, eval_pending: bool = False) -> None:
        """Rank 0 writes the work dir's ``name`` (see :meth:`RunState.save`)."""
        self.run_state.save(self._ckpt_path(name), self.progress, rng_per_rank, eval_pending)

    def gather_rng(self) -> list | None:
        return self.run_state.gather_rng(self.progress.iteration)

    # ------------------------------------------------------------------------------------------
    def set_lr(self) -> float:
        return set_lr(self.optimizer, self.cfg.train, self.progress.iteration)

    def evaluate(self) -> dict:
        self.model.eval()
        # the val DataLoader draws its base seed from torch's global generator: without the fork, an
        # evaluation would shift every later dropout mask and sample, so a run's weights would depend
        # on train.eval_interval
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            res = evaluate(self.method.predictor(self.model), self.val, self.cfg.data.num_classes,
                           self.cfg.data.ignore_index, self.method.size_divisor(self.model), self.device,
                           self.info.rank, self.info.world_size, self.cfg.data.val_batch_size,
                           **predict_kwargs(self.cfg))
        self.model.train()
        return res

    def _val_panels(self) -> list:
        """The fixed val images with truth and prediction, for TensorBoard (main process only)."""
        self.model.eval()
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=cuda):  # as evaluate(): no effect on later draws
                return tb.val_panels(self.method.predictor(self.model), self.val, self.cfg,
                                     self.method.size_divisor(self.model), self.device)
        finally:
            self.model.train()

    def _tb_writer(self) -> SummaryWriter:
        """A fresh run gets its own event folder (tb/<start time>) with the config as text and
        hparams; a resumed run (or a second train() call) continues its folder, dropping events
        past the checkpoint's iteration. train.log, by contrast, is appended to by every run."""
        if getattr(self, "_tb_dir", None) is None:
            self._tb_dir, new, earlier = tb.event_dir(self.work_dir, self._resume_path is not None)
            # events at the checkpoint's iteration were written before it was saved: keep them
            writer = SummaryWriter(self._tb_dir, purge_step=None if new else self.progress.iteration + 1)
            if new:
                tb.log_config(writer, self.cfg.to_dict())
            LOG.info("TensorBoard events: %s (%s)", self._tb_dir, "continued" if not new else
                     f"a new run; {earlier} earlier run(s) in tb/ stay apart, train.log keeps their lines above"
                     if earlier else "a new run")
            return writer
        return SummaryWriter(self._tb_dir, purge_step=self.progress.iteration + 1)

    def _streams(self):
        d, seed = self.cfg.data, self.cfg.seed
        pin = self.device.type == "cuda"
        rank, world, start = self.info.rank, self.info.world_size, self.progress.iteration
        lab = make_stream(self.labeled, d.batch_size, rank, world, seed, 0, start, d.num_workers, pin)
        per_step = self.method.unlabeled_draws(self.cfg)  # CutMix mixes pairs of images
        unl = (make_stream(self.unlabeled, d.unlabeled_batch_size * per_step, rank, world, seed, 1, start,
                           d.num_workers, pin) if self.unlabeled is not None else None)
        return lab, unl

    def train(self, max_steps: int | None = None) -> TrainResult:
        """Train to ``train.iters``. ``max_steps`` stops earlier, as a pre-emption would: the run
        saves ``latest.pth`` and a later ``train()`` continues from it."""
        t, p = self.cfg.train, self.progress
        stop_at = t.iters if max_steps is None else min(t.iters, p.iteration + max_steps)
        writer = self._tb_writer() if self.info.is_main else None
        self._log_start()
        last = None
        if p.iteration >= t.iters:
            LOG.info("already trained to iteration %d", p.iteration)
        else:
            lab_stream, unl_stream = self._streams()
            self.model.train()
            window = LossWindow(self.device)
            bar = tqdm(total=t.iters, initial=p.iteration, dynamic_ncols=True,
                       disable=not (self.info.is_main and sys.stderr.isatty()))
            last = self._evaluate_pending(writer)
            # on a terminal the bar (stderr) and the log lines (stdout) share the screen: tqdm's redirect
            # clears the bar, writes the line and redraws the bar below it, so they never run into each
            # other; without a terminal there is no bar and the log lines (with their ETA) are all there is
            with StopRequested() as stop, logging_redirect_tqdm(loggers=[LOG], tqdm_class=tqdm), bar:
                while p.iteration < t.iters:
                    lr = self.set_lr()
                    labeled, unlabeled, data_time = self._next_batches(lab_stream, unl_stream)
                    with du.waiting_for("training step (gradient all-reduce)", self.info, p.iteration + 1):
                        losses = self.step(labeled, unlabeled)
                    p.iteration += 1
                    _fault_injection(self.info.rank, p.iteration)
                    bar.update(1)
                    window.add(losses, data_time)
                    if p.iteration % t.log_interval == 0 or p.iteration == t.iters:
                        self._log_window(window, lr, writer, bar)
                    saved, evaluated = self._save_and_evaluate(writer)
                    last = evaluated or last
                    reason = self._stop_reason(stop, stop_at)
                    if reason:
                        if not saved:
                            self.save("latest.pth", self.gather_rng())
                        LOG.warning("stopped (%s) at iteration %d; latest.pth saved, run the same command to "
                                    "continue", reason, p.iteration)
                        if writer:
                            writer.close()
                        return TrainResult(p.iteration, stopped=True, is_main=self.info.is_main)
        if last is None:
            with du.waiting_for(f"evaluating at iteration {p.iteration}", self.info):
                last = self._eval_and_log(writer)
        if writer:
            writer.close()
        return last

    def _evaluate_pending(self, writer) -> TrainResult | None:
        """The evaluation that latest.pth was saved for, when it did not finish (run it first)."""
        if not self.progress.eval_pending:
            return None
        LOG.info("evaluating at iteration %d first: latest.pth was saved just before this evaluation",
                 self.progress.iteration)
        return self._evaluate_after_save(writer)

    def _log_start(self) -> None:
        drawn = self.sizes.get("unlabeled_drawn_per_process")
        LOG.info("method %s | %d labeled, %s unlabeled, %d val | world %d | per-process batch %d+%d%s | %s",
                 self.cfg.method, len(self.labeled), len(self.unlabeled) if self.unlabeled else 0,
                 len(self.val), self.info.world_size, self.sizes["labeled_per_process"],
                 self.sizes["unlabeled_per_process"] if self.unlabeled else 0,
                 f" ({drawn} unlabeled drawn, mixed in pairs)" if drawn else "", self.device)
        if self.method.loss_scale_note:  # why its loss is not on labeled-only's scale, e.g. in a warm-up
            LOG.info("loss scale (%s): %s", self.cfg.method, self.method.loss_scale_note)

    def _next_batches(self, lab_stream, unl_stream):
        """The next labeled and unlabeled batches on the device, and the time spent waiting for them.
        A bad file met mid-run keeps the work done so far (latest.pth), as SIGTERM does."""
        start = time.time()
        try:
            labeled = to_device(next(lab_stream), self.device)
            unlabeled = to_device(next(unl_stream), self.device) if unl_stream is not None else None
            if self.cfg.train.channels_last:
                labeled = channels_last_batch(labeled)
                unlabeled = channels_last_batch(unlabeled) if unlabeled is not None else None
        except DataError:
            self.save("latest.pth")
            LOG.warning("bad data at iteration %d; latest.pth saved: fix the file and run the same command to "
                        "continue", self.progress.iteration)
            raise
        return labeled, unlabeled, time.time() - start

    def _log_window(self, window: LossWindow, lr: float, writer, bar) -> None:
        avg, it = window.averages(), self.progress.iteration
        LOG.info("%s", window.line(avg, it, self.cfg.train.iters, lr, self.cfg.train.log_interval))
        if self.info.is_main:  # for programs (benchmarks, tests): no parsing of the log line
            with open(self._ckpt_path("train.jsonl"), "a") as f:
                f.write(json.dumps(window.record(avg, it, lr)) + "\n")
        if writer:
            for k, v in avg.items():
                writer.add_scalar(f"train/{tb.class_tag(k, self.cfg.data.class_names)}", v, it)
            writer.add_scalar("train/lr", lr, it)
        bar.set_postfix(loss=f"{avg.get('loss', 0):.3f}")
        window.reset()

    def _save_and_evaluate(self, writer) -> tuple[bool, TrainResult | None]:
        """At a checkpoint or evaluation iteration, save latest.pth, then evaluate: an evaluation
        that fails (a bad val image) loses nothing. Returns whether it saved, and the evaluation."""
        t = self.cfg.train
        it = self.progress.iteration
        evaluate_now = bool(t.eval_interval and it % t.eval_interval == 0) or it == t.iters
        saved = evaluate_now or it % t.ckpt_interval == 0
        if saved:
            self.save("latest.pth", self.gather_rng(), eval_pending=evaluate_now)
        return saved, self._evaluate_after_save(writer) if evaluate_now else None

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

    def step(self, labeled, unlabeled) -> dict:
        t = self.cfg.train
        losses = self._forward(labeled, unlabeled)
        loss = losses["loss"]
        bad = torch.tensor(0.0 if torch.isfinite(loss) else 1.0, device=self.device)
        all_reduce_sum(bad)
        if bad.item() > 0:
            terms = [k for k, v in losses.items() if not torch.isfinite(torch.as_tensor(v)).all()]
            if t.skip_nonfinite:
                self.progress.skipped += 1
                self.optimizer.zero_grad(set_to_none=True)
                LOG.warning("iteration %d: non-finite loss (%s); step skipped (%d so far)",
                            self.progress.iteration, ", ".join(terms) or "other rank", self.progress.skipped)
                return {"skipped": 1.0}
            latest = self._ckpt_path("latest.pth")
            saved = (f"the last good checkpoint is {latest}" if os.path.isfile(latest)
                     else "no checkpoint was written yet")
            raise FloatingPointError(
                f"non-finite loss at iteration {self.progress.iteration} in term(s) "
                f"{', '.join(terms) or 'on another rank'}; "
                f"{saved} (set train.skip_nonfinite=true to skip such steps)")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if t.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {k: v.detach() if torch.is_tensor(v) else v for k, v in losses.items()}

    def _forward(self, labeled, unlabeled) -> dict:
        """The method's losses, under autocast; a torch.compile that fails falls back to eager once."""
        try:
            with autocast(self.device, self.amp_dtype):
                return self.method.training_step(self.train_model, labeled, unlabeled, self.progress.iteration)
        except Exception as e:
            if self.train_model is self.ddp or not is_compile_failure(e):
                raise
            LOG.warning("train.compile=%s (backend %s) failed at iteration %d (%s); training eager from here",
                        self.cfg.train.compile, self.cfg.train.compile_backend, self.progress.iteration + 1,
                        one_line(e))
            self.train_model = self.ddp
            return self._forward(labeled, unlabeled)  # eager now: a second failure is raised

    def _evaluate_after_save(self, writer) -> dict:
        """Evaluate at an iteration whose latest.pth is already written. A failure says that the
        checkpoint is kept and that the same command continues (evaluating again first)."""
        it = self.progress.iteration
        hint = (f"evaluation at iteration {it} failed; latest.pth (iteration {it}) is saved"
                f": fix the cause and run the same command to continue (it evaluates again first)")
        try:
            with du.waiting_for(f"evaluating at iteration {self.progress.iteration}", self.info):
                res = self._eval_and_log(writer)
        except DataError as e:  # an unreadable or wrong val file: the user's to fix, one line
            LOG.error("%s; %s", one_line(e), hint)
            raise DataError(f"{one_line(e)}; {hint}") from None
        except Exception:  # anything else keeps its traceback, with what was kept said first
            LOG.error("%s", hint)
            raise
        self.progress.eval_pending = False
        return res

    def _eval_and_log(self, writer) -> dict:
        res = self.evaluate()
        miou = res["mIoU"]
        LOG.info("eval at iteration %d: mIoU %.2f aAcc %.2f mAcc %.2f", self.progress.iteration, 100 * miou,
                 100 * res["aAcc"], 100 * res["mAcc"])
        if writer:
            for k in ("mIoU", "aAcc", "mAcc"):
                writer.add_scalar(f"val/{k}", res[k], self.progress.iteration)
            tb.log_eval(writer, res, self.cfg.data.class_names, self.progress.iteration, self._val_panels())
        if self.info.is_main and not math.isnan(miou) and miou > self.progress.best["mIoU"]:
            self.progress.best = {"mIoU": miou, "iteration": self.progress.iteration}
            self.save("best.pth")
        if self.info.is_main:
            with open(os.path.join(self.work_dir, "metrics.json"), "w") as f:  # the last evaluation
                json.dump({"iteration": self.progress.iteration, **to_json(res)}, f, indent=1)
            with open(os.path.join(self.work_dir, "metrics.jsonl"), "a") as f:  # every evaluation, one line each
                f.write(json.dumps(evaluation_record(res, self.progress.iteration, self.cfg.data.class_names)) + "\n")
        return TrainResult(self.progress.iteration, metrics=res, table=format_table(res, self.cfg.data.class_names),
                           is_main=self.info.is_main)


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
