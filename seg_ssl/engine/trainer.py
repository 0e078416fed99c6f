"""The one trainer every method runs on: iterations, devices, DDP, AMP, checkpoints, logs, eval.

A method supplies ``model`` (an nn.Module), ``training_step(model, labeled, unlabeled, it)`` that
returns a dict of losses with the total under ``"loss"``, and ``predictor(model)`` for evaluation.
Everything else (the loop, streams, optimizer, schedule, I/O) lives here.
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
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from seg_ssl.collectives import all_reduce_sum
from seg_ssl.config import MAY_CHANGE_ON_RESUME, resume_conflicts
from seg_ssl.data.dataset import build_split, check_disjoint, resolve_list, unreadable
from seg_ssl.data.streams import make_stream
from seg_ssl.data.transforms import train_pipeline, val_pipeline
from seg_ssl.engine import dist as du
from seg_ssl.engine import tb
from seg_ssl.engine.checkpoint import load_checkpoint, model_state, save_atomic
from seg_ssl.engine.logbook import LossWindow
from seg_ssl.engine.optim import build_optimizer, set_lr
from seg_ssl.engine.rng import rng_state, seed_everything, set_rng_state
from seg_ssl.errors import ConfigError, DataError, SaveError, one_line
from seg_ssl.engine.threads import apply_threads
from seg_ssl.engine.workdir import lock_work_dir, remove_stale_temp_files, unlock_work_dir
from seg_ssl.evaluation.evaluator import evaluate, predict_kwargs
from seg_ssl.evaluation.metrics import evaluation_record, format_table, to_json
from seg_ssl.methods import METHODS, build_method
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
    """Test hook, off unless ``SEG_SSL_TEST_KILL=RANK:ITERATION`` is set: that rank SIGKILLs itself
    right after finishing ITERATION, on torchrun's first attempt only (TORCHELASTIC_RESTART_COUNT 0
    or unset), so that the restarted workers run on. It makes the elastic-restart test kill a worker
    at a known step instead of racing a kill from outside."""
    spec = os.environ.get(FAULT_ENV)
    if not spec or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return
    target_rank, target_it = (int(v) for v in spec.split(":"))
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
        t = cfg.train
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
        self._resume_path, self._resume_ckpt = self._checkpoint_to_resume()
        if self.info.is_main:  # only now: a refused resume leaves the run's record as it was
            cfg.dump(os.path.join(self.work_dir, "config.yaml"))
        LOG.info("config (resolved):\n%s", yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip())
        seed_everything(cfg.seed + self.info.rank)

        self.method = build_method(cfg, self.info.world_size)
        model = self.method.model.to(self.device)
        if cfg.load_from:
            try:
                load_strict(model, model_state(load_checkpoint(cfg.load_from)))
            except ValueError as e:
                raise ConfigError(f"load_from {cfg.load_from}: {e}") from None
        if self.info.distributed and t.sync_bn:
            model = convert_sync_batchnorm(model, self.device)
        self.model = model
        self.method.model = model
        self.ddp = (DistributedDataParallel(model, device_ids=[self.info.local_rank] if self.device.type == "cuda"
                                            else None, find_unused_parameters=
                                            self.method.find_unused_parameters)
                    if self.info.distributed else model)
        self.optimizer = build_optimizer(cfg, model)
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[t.amp]
        if self.amp_dtype is not None and self.device.type != "cuda":
            LOG.warning("train.amp=%s needs CUDA; training in float32 on %s", t.amp, self.device)
            self.amp_dtype = None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype is torch.float16)

        d = cfg.data
        self.labeled = build_split(d, "labeled", train_pipeline(d, labeled=True))
        self.unlabeled = None
        if self.method.uses_unlabeled:
            if not d.unlabeled_list:
                raise ConfigError(f"method {cfg.method!r} needs data.unlabeled_list")
            # with data.unlabeled_truth the labels come along, for pseudo-label accuracy in the log only
            self.unlabeled = build_split(d, "unlabeled", self.method.unlabeled_pipeline(d),
                                         with_labels=d.unlabeled_truth)
            check_disjoint(self.labeled, self.unlabeled, d.allow_overlap, "data")
        self.val = build_split(d, "val", val_pipeline(d))
        self._check_val_decodes()

        self.iteration = 0
        self.best = {"mIoU": -1.0, "iteration": 0}
        self.skipped = 0
        self.eval_pending = False  # latest.pth was saved just before an evaluation that did not finish
        self._maybe_resume()

    def _check_val_decodes(self) -> None:
        """Decode every val image and label now (each rank its evaluation shard), not only check
        that they exist: a truncated val image otherwise stops the run at its first evaluation.
        Training files are only checked to exist: a bad one met mid-run saves latest.pth first,
        and decoding a whole train set would delay every start (VOC's 10,582 train_aug images,
        at the ~4 ms per image and label measured for val, take ~40 s)."""
        from seg_ssl.data.streams import shard_indices
        problems = unreadable(self.val, shard_indices(len(self.val), self.info.rank, self.info.world_size))
        if self.info.distributed:  # every rank stops with the same line, none waits for the others
            import torch.distributed as dist
            every = [None] * self.info.world_size
            with du.waiting_for("checking the val files", self.info):
                dist.all_gather_object(every, problems)
            problems = [p for rank_problems in every for p in rank_problems]
        if problems:
            path = resolve_list(self.cfg.data.root, self.cfg.data.val_list)
            raise DataError(f"data.val_list {path}: {len(problems)} val file(s) cannot be used, e.g. {problems[0]}; "
                            f"run tools/check_dataset.py CONFIG for every problem")

    # ------------------------------------------------------------------------------------------
    def _ckpt_path(self, name: str) -> str:
        return os.path.join(self.work_dir, name)

    def _checkpoint_to_resume(self):
        """``(path, checkpoint)`` to continue from, or ``(None, None)``. A checkpoint trained with
        other settings than those that may change on resume is refused, naming the keys."""
        r = self.cfg.resume
        path = self._ckpt_path("latest.pth") if r == "auto" else r
        if not path or not os.path.isfile(path):
            if r not in (None, "auto"):
                raise ConfigError(f"resume: checkpoint not found: {r}")
            return None, None
        try:
            ckpt = load_checkpoint(path)
        except ValueError as e:
            raise ConfigError(f"resume: cannot continue from {path} ({e}); set resume=null to start over or "
                              f"work_dir to a new folder") from None
        changed = resume_conflicts(ckpt["config"], self.cfg.to_dict()) if isinstance(ckpt.get("config"), dict) else []
        if changed:
            raise ConfigError(f"resume: {path} was trained with other settings: {'; '.join(changed)}. Only "
                              f"{', '.join(MAY_CHANGE_ON_RESUME)}* may change when a run continues: restore "
                              f"them, or set resume=null to start over or work_dir to a new folder")
        return path, ckpt

    def _maybe_resume(self) -> None:
        path, ckpt = self._resume_path, self._resume_ckpt
        self._resume_ckpt = None  # the trainer holds its own state from here on
        if ckpt is None:
            return
        try:
            load_strict(self.model, model_state(ckpt))
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, RuntimeError, KeyError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"resume: cannot continue from {path} ({first}); it was written by another "
                              f"config or is damaged: set resume=null to start over or work_dir to a new "
                              f"folder") from None
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.method.load_state_dict(ckpt.get("method", {}))
        self.iteration = int(ckpt["iteration"])
        self.best = ckpt.get("best", self.best)
        self.skipped = ckpt.get("skipped", 0)
        # latest.pth is written just before an evaluation; whether that evaluation finished is what
        # metrics.json says (rank 0 reads it, every rank follows, so all evaluate or none)
        pending = bool(ckpt.get("eval_pending", False)) and not self._evaluated_at(self.iteration)
        self.eval_pending = all_reduce_sum(torch.tensor(float(pending and self.info.is_main),
                                                        device=self.device)).item() > 0
        per_rank = ckpt.get("rng_per_rank")
        if per_rank and len(per_rank) == self.info.world_size:
            # every rank continues its own stream (dropout masks, CAC's negative sampling): with
            # only rank 0's state the others would reseed, and a 2-process resume would differ
            # from the uninterrupted run
            set_rng_state(per_rank[self.info.rank])
        elif self.info.rank == 0 and ckpt.get("rng"):
            set_rng_state(ckpt["rng"])
        else:  # other world sizes reseed deterministically from the position
            seed_everything(self.cfg.seed + self.info.rank + 1000003 * self.iteration)
        LOG.info("resumed from %s at iteration %d", path, self.iteration)

    def close(self) -> None:
        """Release the work dir, so that another process may continue this run (the lock is
        otherwise held until this process exits)."""
        if self.info.is_main:
            unlock_work_dir(self.work_dir)

    def gather_rng(self) -> list | None:
        """Every rank's RNG state, on rank 0 (None elsewhere). A collective: all ranks call it at
        the same step. The methods' own state (CPS/UniMatch box generators, CPS's class
        distributions, CAC's bank of gathered negatives) is the same on every rank, so rank 0's
        copy of it is enough; the global RNGs are not."""
        if not self.info.distributed:
            return [rng_state()]
        import torch.distributed as dist
        states = [None] * self.info.world_size if self.info.is_main else None
        with du.waiting_for("gathering RNG states for latest.pth", self.info, self.iteration):
            dist.gather_object(rng_state(), states, dst=0)
        return states

    def _evaluated_at(self, iteration: int) -> bool:
        """Whether this work dir's last finished evaluation (metrics.json) is at ``iteration``."""
        try:
            with open(os.path.join(self.work_dir, "metrics.json")) as f:
                return json.load(f).get("iteration") == iteration
        except (OSError, ValueError):
            return False

    def save(self, name: str, rng_per_rank: list | None = None, eval_pending: bool = False) -> None:
        """Rank 0 writes ``name``. ``rng_per_rank`` (from :meth:`gather_rng`) lets every rank
        continue its own random stream on resume; without it (best.pth, a save that only rank 0
        reaches) the other ranks reseed from the position."""
        if not self.info.is_main:
            return
        state = {
            "iteration": self.iteration,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "method": self.method.state_dict(),
            "rng": rng_state(),
            "rng_per_rank": rng_per_rank,
            "best": self.best,
            "skipped": self.skipped,
            "eval_pending": eval_pending,
            "config": self.cfg.to_dict(),
        }
        try:
            save_atomic(state, self._ckpt_path(name))
        except SaveError as e:
            LOG.error("%s", e)  # in train.log too, where a user looks first
            raise

    # ------------------------------------------------------------------------------------------
    def set_lr(self) -> float:
        return set_lr(self.optimizer, self.cfg.train, self.iteration)

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
            writer = SummaryWriter(self._tb_dir, purge_step=None if new else self.iteration + 1)
            if new:
                tb.log_config(writer, self.cfg.to_dict())
            LOG.info("TensorBoard events: %s (%s)", self._tb_dir, "continued" if not new else
                     f"a new run; {earlier} earlier run(s) in tb/ stay apart, train.log keeps their lines above"
                     if earlier else "a new run")
            return writer
        return SummaryWriter(self._tb_dir, purge_step=self.iteration + 1)

    def _streams(self):
        d, seed = self.cfg.data, self.cfg.seed
        pin = self.device.type == "cuda"
        lab = make_stream(self.labeled, d.batch_size, self.info.rank, self.info.world_size, seed, 0,
                          self.iteration, d.num_workers, pin)
        per_step = self.method.unlabeled_draws(self.cfg)  # CutMix mixes pairs of images
        unl = (make_stream(self.unlabeled, d.unlabeled_batch_size * per_step, self.info.rank, self.info.world_size,
                           seed, 1, self.iteration, d.num_workers, pin) if self.unlabeled is not None else None)
        return lab, unl

    def train(self, max_steps: int | None = None) -> TrainResult:
        """Train to ``train.iters``. ``max_steps`` stops earlier, as a pre-emption would: the run
        saves ``latest.pth`` and a later ``train()`` continues from it."""
        t = self.cfg.train
        stop_at = t.iters if max_steps is None else min(t.iters, self.iteration + max_steps)
        writer = self._tb_writer() if self.info.is_main else None
        self._log_start()
        last = None
        if self.iteration >= t.iters:
            LOG.info("already trained to iteration %d", self.iteration)
        else:
            lab_stream, unl_stream = self._streams()
            self.model.train()
            window = LossWindow(self.device)
            bar = tqdm(total=t.iters, initial=self.iteration, disable=not (self.info.is_main and sys.stderr.isatty()),
                       dynamic_ncols=True)
            last = self._evaluate_pending(writer)
            # on a terminal the bar (stderr) and the log lines (stdout) share the screen: tqdm's redirect
            # clears the bar, writes the line and redraws the bar below it, so they never run into each
            # other; without a terminal there is no bar and the log lines (with their ETA) are all there is
            with StopRequested() as stop, logging_redirect_tqdm(loggers=[LOG], tqdm_class=tqdm), bar:
                while self.iteration < t.iters:
                    lr = self.set_lr()
                    labeled, unlabeled, data_time = self._next_batches(lab_stream, unl_stream)
                    with du.waiting_for("training step (gradient all-reduce)", self.info, self.iteration + 1):
                        losses = self.step(labeled, unlabeled)
                    self.iteration += 1
                    _fault_injection(self.info.rank, self.iteration)
                    bar.update(1)
                    window.add(losses, data_time)
                    if self.iteration % t.log_interval == 0 or self.iteration == t.iters:
                        self._log_window(window, lr, writer, bar)
                    saved, evaluated = self._save_and_evaluate(writer)
                    last = evaluated or last
                    reason = self._stop_reason(stop, stop_at)
                    if reason:
                        if not saved:
                            self.save("latest.pth", self.gather_rng())
                        LOG.warning("stopped (%s) at iteration %d; latest.pth saved, run the same command to "
                                    "continue", reason, self.iteration)
                        if writer:
                            writer.close()
                        return TrainResult(self.iteration, stopped=True, is_main=self.info.is_main)
        if last is None:
            with du.waiting_for(f"evaluating at iteration {self.iteration}", self.info):
                last = self._eval_and_log(writer)
        if writer:
            writer.close()
        return last

    def _evaluate_pending(self, writer) -> TrainResult | None:
        """The evaluation that latest.pth was saved for, when it did not finish (run it first)."""
        if not self.eval_pending:
            return None
        LOG.info("evaluating at iteration %d first: latest.pth was saved just before this evaluation", self.iteration)
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
        except DataError:
            self.save("latest.pth")
            LOG.warning("bad data at iteration %d; latest.pth saved: fix the file and run the same command to "
                        "continue", self.iteration)
            raise
        return labeled, unlabeled, time.time() - start

    def _log_window(self, window: LossWindow, lr: float, writer, bar) -> None:
        avg = window.averages()
        LOG.info("%s", window.line(avg, self.iteration, self.cfg.train.iters, lr, self.cfg.train.log_interval))
        if writer:
            for k, v in avg.items():
                writer.add_scalar(f"train/{tb.class_tag(k, self.cfg.data.class_names)}", v, self.iteration)
            writer.add_scalar("train/lr", lr, self.iteration)
        bar.set_postfix(loss=f"{avg.get('loss', 0):.3f}")
        window.reset()

    def _save_and_evaluate(self, writer) -> tuple[bool, TrainResult | None]:
        """At a checkpoint or evaluation iteration, save latest.pth, then evaluate: an evaluation
        that fails (a bad val image) loses nothing. Returns whether it saved, and the evaluation."""
        t = self.cfg.train
        evaluate_now = bool(t.eval_interval and self.iteration % t.eval_interval == 0) or self.iteration == t.iters
        saved = evaluate_now or self.iteration % t.ckpt_interval == 0
        if saved:
            self.save("latest.pth", self.gather_rng(), eval_pending=evaluate_now)
        return saved, self._evaluate_after_save(writer) if evaluate_now else None

    def _stop_reason(self, stop: StopRequested, stop_at: int) -> str | None:
        """Why to stop before train.iters, agreed by every rank (or collectives would hang): a signal
        here or on another rank, or ``max_steps``; None to go on."""
        signalled = stop.signal is not None
        if self.info.distributed:
            flag = torch.tensor(float(signalled), device=self.device)
            with du.waiting_for("agreeing on a stop signal", self.info, self.iteration):
                signalled = all_reduce_sum(flag).item() > 0
        if signalled:
            return f"signal {stop.signal}" if stop.signal else "signal on another rank"
        return "max_steps" if self.iteration == stop_at < self.cfg.train.iters else None

    def step(self, labeled, unlabeled) -> dict:
        t = self.cfg.train
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            losses = self.method.training_step(self.ddp, labeled, unlabeled, self.iteration)
        loss = losses["loss"]
        bad = torch.tensor(0.0 if torch.isfinite(loss) else 1.0, device=self.device)
        all_reduce_sum(bad)
        if bad.item() > 0:
            terms = [k for k, v in losses.items() if not torch.isfinite(torch.as_tensor(v)).all()]
            if t.skip_nonfinite:
                self.skipped += 1
                self.optimizer.zero_grad(set_to_none=True)
                LOG.warning("iteration %d: non-finite loss (%s); step skipped (%d so far)",
                            self.iteration, ", ".join(terms) or "other rank", self.skipped)
                return {"skipped": 1.0}
            latest = self._ckpt_path("latest.pth")
            saved = (f"the last good checkpoint is {latest}" if os.path.isfile(latest)
                     else "no checkpoint was written yet")
            raise FloatingPointError(
                f"non-finite loss at iteration {self.iteration} in term(s) {', '.join(terms) or 'on another rank'}; "
                f"{saved} (set train.skip_nonfinite=true to skip such steps)")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if t.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {k: v.detach() if torch.is_tensor(v) else v for k, v in losses.items()}

    def _evaluate_after_save(self, writer) -> dict:
        """Evaluate at an iteration whose latest.pth is already written. A failure says that the
        checkpoint is kept and that the same command continues (evaluating again first)."""
        hint = (f"evaluation at iteration {self.iteration} failed; latest.pth (iteration {self.iteration}) is "
                f"saved: fix the cause and run the same command to continue (it evaluates again first)")
        try:
            with du.waiting_for(f"evaluating at iteration {self.iteration}", self.info):
                res = self._eval_and_log(writer)
        except DataError as e:  # an unreadable or wrong val file: the user's to fix, one line
            LOG.error("%s; %s", one_line(e), hint)
            raise DataError(f"{one_line(e)}; {hint}") from None
        except Exception:  # anything else keeps its traceback, with what was kept said first
            LOG.error("%s", hint)
            raise
        self.eval_pending = False
        return res

    def _eval_and_log(self, writer) -> dict:
        res = self.evaluate()
        miou = res["mIoU"]
        LOG.info("eval at iteration %d: mIoU %.2f aAcc %.2f mAcc %.2f", self.iteration, 100 * miou,
                 100 * res["aAcc"], 100 * res["mAcc"])
        if writer:
            for k in ("mIoU", "aAcc", "mAcc"):
                writer.add_scalar(f"val/{k}", res[k], self.iteration)
            tb.log_eval(writer, res, self.cfg.data.class_names, self.iteration, self._val_panels())
        if self.info.is_main and not math.isnan(miou) and miou > self.best["mIoU"]:
            self.best = {"mIoU": miou, "iteration": self.iteration}
            self.save("best.pth")
        if self.info.is_main:
            with open(os.path.join(self.work_dir, "metrics.json"), "w") as f:  # the last evaluation
                json.dump({"iteration": self.iteration, **to_json(res)}, f, indent=1)
            with open(os.path.join(self.work_dir, "metrics.jsonl"), "a") as f:  # every evaluation, one line each
                f.write(json.dumps(evaluation_record(res, self.iteration, self.cfg.data.class_names)) + "\n")
        return TrainResult(self.iteration, metrics=res, table=format_table(res, self.cfg.data.class_names),
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
