"""Iteration-based training of CCNet (arXiv 1811.11721, Sec. 4.1): SGD + poly learning rate, main and
auxiliary cross-entropy, periodic validation, exact resume, single process or torchrun (DDP).

``train(cfg)`` is ``tools/train.py``'s whole program: :func:`setup` builds the run, :func:`loop` runs
:func:`train_step` with logging, validation and checkpoints when due, and returns the final metrics.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager, Dict, List, Optional, Tuple, cast

import numpy as np
import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ccnet import dist
from ccnet.checkpoint import load_checkpoint, model_state_from, non_finite_tensors
from ccnet.data import (
    SegmentationDataset,
    build_dataset,
    crop_cost_warning,
    seed_worker,
    train_input_size,
)
from ccnet.data.base import SegmentationData, check_labelled_split
from ccnet.data.samplers import InfiniteSampler, SeededDataset
from ccnet.engine import resume
from ccnet.engine.checkpoint_manager import CheckpointManager, load_weights
from ccnet.engine.losses import build_criterion
from ccnet.engine.optim import build_optimizer, build_scheduler
from ccnet.engine.recorder import Recorder, validation_record
from ccnet.engine.rng import get_rng_state, seed_everything
from ccnet.engine.run_dir import check_new_run_dir, hold_work_dir
from ccnet.engine.settings import check_train_config
from ccnet.engine.signals import StopRequest, TrainingStopped
from ccnet.errors import ConfigError, UserError, user_message
from ccnet.evaluation.evaluator import evaluate
from ccnet.models import CCNet, build_model
from ccnet.models.attention_maps import attention_panel
from ccnet.utils.outputs import FolderLock
from ccnet.utils.paths import REPO_ROOT
from ccnet.utils.visualize import add_headings, add_legend, colorize, denormalize

log = logging.getLogger(__name__)

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf (with ``train.skip_nonfinite`` false), or the model's state did and cannot be saved."""


class DistributedTimeout(UserError, RuntimeError):
    """A collective waited longer than ``train.dist_timeout_s`` for the other processes."""


def train(cfg: DictConfig) -> Dict[str, Any]:
    """Train the model of ``cfg.model`` on ``cfg.dataset`` as configured in ``cfg.train``.

    Launched by ``torchrun`` (``RANK``/``WORLD_SIZE`` set), it joins the process group (NCCL on GPU,
    gloo on CPU) unless one exists, and leaves it again at the end if it created it.

    Args:
        cfg: the composed ``configs/train.yaml`` (``model``, ``dataset``, ``train``, ``eval``,
            ``work_dir``, ``resume``, ``load_from``).

    Returns:
        Final metrics on every rank: ``iteration``, ``val/mIoU``, ``val/mAcc``, ``val/aAcc``,
        ``val/IoU/<class>``, ``best/mIoU``, ``train/loss`` (mean of the last logging window),
        ``skipped_nonfinite``, ``train_time_s``, and the paths ``work_dir``, ``checkpoint``,
        ``best_checkpoint``.

    Raises:
        NonFiniteLossError: the loss became NaN/inf at some iteration (message names it).
        CheckpointError: ``resume``/``load_from`` names a missing or corrupt file.
        TrainingStopped: SIGTERM, SIGINT or SIGUSR1 stopped the run after writing ``last.pth``.
        ccnet.errors.UserError: a setting, a file or the run directory is wrong (message says how).
    """
    check_train_config(cfg)
    device = dist.resolve_device(str(cfg.train.device), key="train.device")
    created_group = not dist.is_distributed() and dist.init_distributed(
        device.type, float(cfg.train.get("dist_timeout_s", 600))
    )
    package_log = logging.getLogger("ccnet")
    level, threads = package_log.level, torch.get_num_threads()
    if not dist.is_main_process():
        package_log.setLevel(logging.WARNING)  # one copy of every info line: rank 0's
    if cfg.train.get("cpu_threads"):
        torch.set_num_threads(int(cfg.train.cpu_threads))
    run = None
    try:
        with hold_work_dir(Path(cfg.work_dir).resolve()) as lock, StopRequest() as stop:
            try:
                run = setup(cfg, device, lock)
                return loop(run, stop)
            finally:
                if run is not None:
                    run.close()
    except resume.RunFinished as finished:
        log.info("resume=auto: %s; nothing to train", finished)
        return finished_summary(Path(cfg.work_dir), finished)
    except RuntimeError as exc:
        if not dist.is_timeout(exc):
            raise
        raise DistributedTimeout(
            f"rank {dist.get_rank()} of {dist.get_world_size()}: a collective waited more than "
            f"train.dist_timeout_s={cfg.train.get('dist_timeout_s')} s for the other processes (one of them stopped, "
            f"hung or died; its own log says which). Underlying error: {str(exc).splitlines()[0][:300]}"
        ) from exc
    finally:
        package_log.setLevel(level)
        torch.set_num_threads(threads)
        if created_group:
            dist.destroy_distributed()


@dataclass
class Run:
    """Everything one training run holds: built by :func:`setup`, advanced by :func:`loop`."""

    cfg: DictConfig
    device: torch.device
    work_dir: Path
    model: CCNet  # the bare model: its state dict is what checkpoints hold
    train_model: Any  # what the step calls: the model, wrapped by DDP and/or torch.compile
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    autocast: ContextManager
    val_set: SegmentationData
    sampler: InfiniteSampler
    batches: Any  # iterator over the training DataLoader
    ckpts: CheckpointManager
    recorder: Optional[Recorder]  # rank 0 only
    file_log: Optional[logging.Handler]
    start_iter: int = 0
    best_miou: float = float("-inf")
    train_time: float = 0.0
    skipped: int = 0
    terms: List[str] = field(default_factory=list)  # loss terms besides the total, as the first step returns them

    @property
    def max_iters(self) -> int:
        return int(self.cfg.train.max_iters)

    @property
    def images_per_step(self) -> int:
        return int(self.cfg.train.batch_size) * dist.get_world_size()

    def close(self) -> None:
        if self.recorder is not None:
            self.recorder.close()
        if self.file_log is not None:
            logging.getLogger().removeHandler(self.file_log)
            self.file_log.close()


def setup(cfg: DictConfig, device: torch.device, lock: Optional[FolderLock] = None) -> Run:
    """Check the settings, build data, model and optimiser, and restore a checkpoint's state.

    Datasets come first, so a wrong ``dataset.root`` fails before a ResNet-101 is built. ``lock`` is rank 0's
    hold on ``work_dir`` (:func:`ccnet.engine.run_dir.hold_work_dir`).
    """
    tcfg = cfg.train
    main = dist.is_main_process()
    # Every rank must use rank 0's directory (a `${now:...}` in work_dir may resolve differently).
    work_dir = Path(dist.broadcast_object(str(Path(cfg.work_dir).resolve())))
    # Rank 0 decides which checkpoint continues the run (every rank agrees, or fails together).
    loaded: Dict[str, Any] = {}
    resume_path = dist.run_on_main(_choose_resume, cfg, work_dir, loaded, lock)
    resumed = loaded.get("checkpoint") or (load_checkpoint(resume_path) if resume_path is not None else None)
    if resumed is not None and resume_path is not None:
        resume.check_resume_config(resumed, resume_path, _plain(cfg))

    train_set = build_dataset(cfg.dataset, "train", crop_size=tcfg.get("crop_size"))
    if isinstance(train_set, SegmentationDataset) and main:
        warning = crop_cost_warning(train_set.image_paths, train_input_size(cfg.dataset, tcfg.get("crop_size")))
        if warning:
            log.warning("%s", warning)
    val_set = build_dataset(cfg.dataset, "val")
    check_labelled_split(val_set, str(cfg.dataset.get("val_split", "val")))
    if main:
        work_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, work_dir / "config.yaml", resolve=True)
    file_log = _attach_file_log(work_dir / "train.log") if main else None
    try:
        return _build_run(cfg, device, work_dir, train_set, val_set, resumed, resume_path, file_log)
    except BaseException:
        if file_log is not None:  # the run never started: Run.close() will not detach it
            logging.getLogger().removeHandler(file_log)
            file_log.close()
        raise


def _build_run(
    cfg: DictConfig,
    device: torch.device,
    work_dir: Path,
    train_set: SegmentationData,
    val_set: SegmentationData,
    resumed: Optional[Dict[str, Any]],
    resume_path: Optional[Path],
    file_log: Optional[logging.Handler],
) -> Run:
    tcfg = cfg.train
    rank, world, main = dist.get_rank(), dist.get_world_size(), dist.is_main_process()
    seed, batch_size, max_iters = int(tcfg.seed), int(tcfg.batch_size), int(tcfg.max_iters)
    ckpts = CheckpointManager(work_dir / "checkpoints", keep=int(tcfg.keep_checkpoints), enabled=main)
    ckpts.remove_stale_temporaries()

    model = _build_model(cfg, device, from_checkpoint=resumed is not None)
    optimizer = build_optimizer(model, tcfg)
    amp = str(tcfg.amp)
    run = Run(
        cfg=cfg,
        device=device,
        work_dir=work_dir,
        model=model,
        train_model=model,
        criterion=build_criterion(tcfg, model.num_classes, int(cfg.dataset.ignore_index)).to(device),
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, tcfg),
        scaler=torch.amp.GradScaler(device.type, enabled=amp == "fp16"),
        autocast=torch.autocast(device.type, dtype=AMP_DTYPES[amp]) if amp != "none" else nullcontext(),
        val_set=val_set,
        sampler=None,  # type: ignore[arg-type]  # set below, once the state is restored
        batches=None,
        ckpts=ckpts,
        recorder=None,
        file_log=file_log,
    )
    progress = resume.Progress()
    if resumed is not None and resume_path is not None:
        progress = resume.restore(
            resumed, resume_path, model, optimizer, run.scheduler, run.scaler, cfg, len(train_set)
        )
    run.start_iter, run.best_miou = progress.iteration, progress.best_miou
    run.train_time, run.skipped = progress.train_time, progress.skipped
    if world > 1:
        run.train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if tcfg.compile:
        run.train_model = torch.compile(run.train_model)

    run.sampler = InfiniteSampler(len(train_set), rank, world, seed=seed, start=progress.stream_start, yield_seeds=True)
    num_workers = int(tcfg.num_workers)
    loader = DataLoader(
        SeededDataset(train_set),
        batch_size=batch_size,
        sampler=run.sampler,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        worker_init_fn=seed_worker,
        # Own generator: creating the loader must not consume the global torch stream.
        generator=torch.Generator().manual_seed(seed + rank),
        persistent_workers=num_workers > 0,
    )
    run.batches = iter(loader)
    if resumed is not None:
        resume.restore_rng(resumed["rng"], seed, run.start_iter)
    else:
        seed_everything(seed + rank)  # per-rank dropout streams
    run.recorder = Recorder(work_dir, run.start_iter) if main else None
    log.info(
        "training %s on %s: %d iterations, batch %d per process x %d processes, device %s, amp %s",
        cfg.model.get("name"),
        cfg.dataset.get("name"),
        max_iters,
        batch_size,
        world,
        device,
        amp,
    )
    return run


def _choose_resume(
    cfg: DictConfig, work_dir: Path, loaded: Dict[str, Any], lock: Optional[FolderLock]
) -> Optional[Path]:
    """The checkpoint this run continues (None: a new run), also stored in ``loaded["checkpoint"]``; refuses to
    start over another run or files no run wrote.
    """
    setting = cfg.get("resume")
    path = resume.resume_path(setting, work_dir)
    if path is not None and cfg.get("load_from"):
        raise ConfigError("set either resume (continue a run) or load_from (initialise weights), not both")
    if path is not None:
        loaded["checkpoint"], path = resume.load_resume_checkpoint(path, setting, work_dir)
        return path
    check_new_run_dir(work_dir, lock)
    return None


def _build_model(cfg: DictConfig, device: torch.device, from_checkpoint: bool) -> CCNet:
    """The model with its initial weights (seeded, ImageNet or ``load_from``), SyncBN, on ``device``."""
    tcfg = cfg.train
    seed_everything(int(tcfg.seed))  # identical initial weights on every rank (DDP also broadcasts rank 0's)
    # A resumed or fine-tuned run takes every weight from its checkpoint: no ImageNet file is read.
    model = build_model(cfg.model, pretrained=not from_checkpoint and not cfg.get("load_from"))
    if cfg.get("load_from"):
        load_weights(
            model,
            model_state_from(load_checkpoint(cfg.load_from), cfg.load_from),
            cfg.load_from,
            partial=bool(cfg.get("load_from_partial", False)),
        )
    if dist.get_world_size() > 1 and (tcfg.sync_bn or cfg.model.get("norm") == "syncbn"):
        if device.type == "cuda":
            model = cast(CCNet, nn.SyncBatchNorm.convert_sync_batchnorm(model))
        else:
            log.warning("SyncBatchNorm runs on GPUs only; this CPU run keeps per-process BatchNorm")
    model.to(device)
    if tcfg.channels_last:
        model.to(memory_format=torch.channels_last)
    torch.backends.cudnn.benchmark = bool(tcfg.cudnn_benchmark)
    return model


def loop(run: Run, stop: StopRequest) -> Dict[str, Any]:
    """Train from ``run.start_iter`` to ``train.max_iters``; returns the final metrics (see :func:`train`).

    Raises:
        TrainingStopped: a stop signal arrived (on any rank): the step finished and ``last.pth``
            was written.
    """
    tcfg = run.cfg.train
    log_interval, eval_interval = int(tcfg.log_interval), int(tcfg.eval_interval)
    ckpt_interval = int(tcfg.checkpoint_interval)
    show_bar = dist.is_main_process() and sys.stderr.isatty()  # log files (slurm, CI) get the plain lines
    window = LogWindow()
    metrics: Dict[str, Any] = {}
    bar = tqdm(total=run.max_iters, initial=run.start_iter, desc="train", dynamic_ncols=True, disable=not show_bar)
    with bar, logging_redirect_tqdm() if show_bar else nullcontext():  # log lines above the bar
        for it in range(run.start_iter + 1, run.max_iters + 1):
            tic = time.perf_counter()
            values, stop_any = train_step(run, it, stop.requested)
            run.scheduler.step()
            step_time = time.perf_counter() - tic  # includes data loading; train_step's .tolist() synced
            run.train_time += step_time
            window.add(values, step_time)
            bar.update(1)
            # the first step, then every log_interval steps or LOG_EVERY_S seconds: a slow start is never silent
            if it % log_interval == 0 or it == run.max_iters or it == run.start_iter + 1 or window.overdue():
                scalars = window.flush(run, it)
                bar.set_postfix(
                    loss=f"{scalars['train/loss']:.4f}",
                    lr=f"{scalars['train/lr']:.2e}",
                    img_s=f"{scalars['train/img_per_s']:.1f}",
                )
            if (eval_interval > 0 and it % eval_interval == 0) or it == run.max_iters:
                try:
                    metrics = validate(run, it, progress=show_bar)
                except Exception as exc:
                    failure = validation_failed(run, it, exc)
                    if failure is exc:
                        raise
                    raise failure from exc
            if (ckpt_interval > 0 and it % ckpt_interval == 0) or it == run.max_iters or stop_any:
                save(run, it)
            if stop_any:
                raise TrainingStopped(stop.signal_name or "a signal to another process", it, str(run.ckpts.last))
    return summary(run, metrics, window.last_loss)


def train_step(run: Run, it: int, stop_requested: bool = False) -> Tuple[Optional[List[float]], bool]:
    """One optimisation step.

    Returns:
        ``([total, *terms] averaged over ranks, or None when the loss was non-finite on some rank and
        the step was skipped (train.skip_nonfinite), whether any rank asked to stop)``.
    """
    tcfg = run.cfg.train
    images, targets = next(run.batches)
    images = images.to(run.device, non_blocking=True)
    if tcfg.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    targets = targets.to(run.device, non_blocking=True)
    # The forward pass updates BatchNorm's running statistics: a skipped step must undo that too.
    buffers = [b.detach().clone() for b in run.model.buffers()] if tcfg.skip_nonfinite else None
    with run.autocast:
        losses = run.criterion(run.train_model(images), targets)
    run.terms = run.terms or [k for k in losses if k != "loss"]
    run.scaler.scale(losses["loss"]).backward()
    # One all-reduce per step: the loss terms for logging, whether any rank's loss was non-finite (so
    # that all ranks skip or stop together) and whether any rank was asked to stop.
    total = losses["loss"].detach().float()
    stats = torch.stack(
        [
            total,
            *(losses[k].detach().float() for k in run.terms),
            (~torch.isfinite(total)).float(),
            torch.tensor(float(stop_requested), device=total.device),
        ]
    )
    *values, nonfinite, stop_any = (dist.all_reduce_sum(stats) / dist.get_world_size()).tolist()
    if nonfinite > 0:
        run.optimizer.zero_grad(set_to_none=True)
        if not tcfg.skip_nonfinite:
            last = run.ckpts.last if run.ckpts.last.is_file() else "none"
            raise NonFiniteLossError(
                f"non-finite loss ({values[0]}) at iteration {it}; weights were not updated. Last checkpoint: "
                f"{last}. Lower train.lr, set train.grad_clip, use train.amp=bf16 instead of fp16, or set "
                "train.skip_nonfinite=true"
            )
        with torch.no_grad():
            for buffer, before in zip(run.model.buffers(), buffers or []):
                buffer.copy_(before)
        run.skipped += 1
        log.warning("non-finite loss at iteration %d: step skipped (%d so far)", it, run.skipped)
        return None, stop_any > 0
    if tcfg.grad_clip:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), float(tcfg.grad_clip))
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    return values, stop_any > 0


LOG_EVERY_S = 30.0  # longest silence between two log lines while training


class LogWindow:
    """Loss values and step times since the last log line."""

    def __init__(self) -> None:
        self.values: List[List[float]] = []
        self.steps, self.seconds, self.last_loss = 0, 0.0, float("nan")
        self.started = time.monotonic()  # of this window

    def overdue(self) -> bool:
        """Whether the last log line is more than :data:`LOG_EVERY_S` old."""
        return time.monotonic() - self.started >= LOG_EVERY_S

    def add(self, values: Optional[List[float]], seconds: float) -> None:
        if values is not None:  # a skipped step has no finite loss to average
            self.values.append(values)
        self.steps += 1
        self.seconds += seconds

    def flush(self, run: Run, it: int) -> Dict[str, float]:
        """Log the window's means (console, TensorBoard) and start a new window; returns the scalars."""
        means = np.mean(self.values, axis=0) if self.values else np.full(len(run.terms) + 1, np.nan)
        self.last_loss = float(means[0])
        lr = run.optimizer.param_groups[0]["lr"]
        scalars = {
            "train/loss": self.last_loss,
            **{f"train/loss_{k}": float(v) for k, v in zip(run.terms, means[1:])},
            "train/lr": lr,
            "train/img_per_s": self.steps * run.images_per_step / max(self.seconds, 1e-9),
            "train/skipped_nonfinite": run.skipped,
        }
        if run.device.type == "cuda":
            scalars["train/peak_mem_mib"] = torch.cuda.max_memory_allocated(run.device) / 2**20
        # training steps only: validations and checkpoints come on top
        eta = (run.max_iters - it) * self.seconds / max(self.steps, 1)
        log.info(
            "iter %d/%d  loss %.4f (%s)  lr %.3e  %.3g img/s  %.3g s/iter  eta %s%s",
            it,
            run.max_iters,
            self.last_loss,
            " ".join(f"{k} {v:.4f}" for k, v in zip(run.terms, means[1:])),
            lr,
            scalars["train/img_per_s"],
            self.seconds / max(self.steps, 1),
            format_duration(eta),
            f"  skipped {run.skipped}" if run.skipped else "",
        )
        if run.recorder is not None:
            run.recorder.scalars(scalars, it)
        self.values, self.steps, self.seconds = [], 0, 0.0
        self.started = time.monotonic()
        return scalars


def format_duration(seconds: float) -> str:
    """``1:02:03`` for 3723 s, ``4:05`` for 245 s."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def validate(run: Run, it: int, progress: bool = False) -> Dict[str, Any]:
    """Evaluate on the validation split, log and record the result, keep the best checkpoint."""
    tcfg, val_set = run.cfg.train, run.val_set
    panels: List[Any] = []
    keep = int(tcfg.get("vis_images", 0))
    started = time.perf_counter()
    result = evaluate(
        run.model,
        val_set,
        run.cfg.eval,
        run.device,
        amp=str(tcfg.amp),
        progress=progress,
        desc=f"val@{it}",
        on_prediction=lambda i, x, y, p: panels.append((x, y, p)) if len(panels) < keep else None,
    )
    class_names = list(val_set.classes)
    record = validation_record(
        it, result, class_names, run.train_time, run.skipped, val_time_s=time.perf_counter() - started
    )
    per_class = "  ".join(f"{n} {'—' if math.isnan(v) else f'{v:.3f}'}" for n, v in zip(class_names, result["IoU"]))
    if any(math.isnan(v) for v in result["IoU"]):
        per_class += "  (—: the class is in neither the ground truth nor the predictions; null in metrics.jsonl)"
    log.info(
        "val @ %d: mIoU %.4f  mAcc %.4f  aAcc %.4f%s",
        it,
        result["mIoU"],
        result["mAcc"],
        result["aAcc"],
        f" | {per_class}" if len(class_names) <= 40 else " (per class: metrics.jsonl)",
    )
    if run.recorder is not None:
        run.recorder.validation(record)
        _record_panels(run, panels, it)
        from ccnet.utils.plots import plot_confusion_matrix, plot_per_class_iou  # loads matplotlib on rank 0 only

        run.recorder.image("val/per_class_iou", plot_per_class_iou(result["IoU"], class_names, result["mIoU"]), it)
        run.recorder.image("val/confusion_matrix", plot_confusion_matrix(result["confusion"], class_names), it)
    if result["mIoU"] > run.best_miou:
        run.best_miou = float(result["mIoU"])
        run.ckpts.save_best(
            {
                "model": _finite_model_state(run, it),
                "config": _plain(run.cfg),
                "iteration": it,
                "best_miou": run.best_miou,
            }
        )
    return record


class ValidationFailed(UserError, RuntimeError):
    """A validation failed on a user's data or settings; the training state was saved first."""


def validation_failed(run: Run, it: int, exc: Exception) -> Exception:
    """Save iteration ``it``'s state after its validation raised ``exc`` on every rank, so the steps are kept.

    Returns:
        The exception to raise: :class:`ValidationFailed` with ``exc``'s message for a user's error, ``exc``
        itself for a bug or a timed-out collective (nothing can be saved together then).
    """
    if dist.is_timeout(exc):
        return exc
    save(run, it)
    then = (
        f"evaluate it with tools/eval.py checkpoint={run.ckpts.last}"
        if it == run.max_iters
        else "continue with resume=true (the next validation runs at the next eval_interval)"
    )
    note = (
        f"validation at iteration {it} failed; the training state was saved first ({run.ckpts.last}): fix "
        f"the cause and {then}"
    )
    if isinstance(exc, UserError):
        return ValidationFailed(f"{user_message(exc)}\n{note}")
    log.error("%s", note)
    return exc


def _record_panels(run: Run, panels: List[Any], it: int) -> None:
    """TensorBoard images: input | ground truth | prediction with a legend of the classes in either map, and
    the attention of the image centre loop by loop (paper, Fig. 1) when the model has it.
    """
    val_set, head = run.val_set, getattr(run.model, "head", None)
    show_attention = bool(run.cfg.train.get("vis_attention", True)) and getattr(head, "shows_attention", False)
    recorder = run.recorder
    assert recorder is not None  # rank 0 only
    for j, (image, label, pred) in enumerate(panels):
        maps = [label.numpy(), pred.numpy()]
        panel = np.concatenate(
            [
                denormalize(image, val_set.mean, val_set.std),
                *(colorize(m, val_set.palette, val_set.ignore_index) for m in maps),
            ],
            axis=1,
        )
        panel = add_legend(panel, val_set.palette, val_set.classes, maps, val_set.ignore_index)
        panel = add_headings(panel, ["image", "ground truth", f"prediction (iteration {it})"])
        recorder.image(f"val/panel_{j}", panel, it)
        if show_attention:
            recorder.image(
                f"val/attention_{j}",
                attention_panel(run.model, image.to(run.device), mean=val_set.mean, std=val_set.std),
                it,
            )


def save(run: Run, it: int) -> None:
    """Write ``iter_<it>.pth`` and ``last.pth``: everything an exact resume needs."""
    rng_states = dist.all_gather_object(get_rng_state())
    consumed = (it - run.start_iter) * run.images_per_step
    run.ckpts.save(
        {
            "model": _finite_model_state(run, it),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict(),
            "rng": rng_states,
            "sampler": run.sampler.state_at(consumed),
            "iteration": it,
            "best_miou": run.best_miou,
            "train_time_s": run.train_time,
            "skipped_nonfinite": run.skipped,
            "config": _plain(run.cfg),
        },
        it,
    )


def _finite_model_state(run: Run, it: int) -> Dict[str, torch.Tensor]:
    """The model's state dict; a checkpoint with NaN/inf weights or statistics is never written.

    Raises:
        NonFiniteLossError: naming the tensors and the last good checkpoint.
    """
    state = run.model.state_dict()
    bad = non_finite_tensors(state)
    if bad:
        last = run.ckpts.last if run.ckpts.last.is_file() else "none"
        raise NonFiniteLossError(
            f"the model holds non-finite values at iteration {it} ({len(bad)} tensors, e.g. "
            f"{bad[:3]}); nothing was saved. Last good checkpoint: {last}"
        )
    return state


def summary(run: Run, metrics: Dict[str, Any], last_loss: float) -> Dict[str, Any]:
    """The final metrics and file paths; rank 0 logs where everything is."""
    result = {
        **metrics,
        "best/mIoU": run.best_miou,
        "train/loss": last_loss,
        "skipped_nonfinite": run.skipped,
        "train_time_s": run.train_time,
        "work_dir": str(run.work_dir),
        "checkpoint": str(run.ckpts.last),
        "best_checkpoint": str(run.ckpts.best),
    }
    if dist.is_main_process() and metrics:
        work_dir = run.work_dir
        skipped = f"; {run.skipped} steps skipped (non-finite loss)" if run.skipped else ""
        chosen = run.ckpts.best if run.ckpts.best.is_file() else run.ckpts.last
        log.info(
            "done: %d iterations in %.0f s of training; val mIoU %.4f (best %.4f)%s\n"
            "  checkpoints: %s (last), %s (best)\n  log: %s\n  metrics: %s\n"
            "next, ready to paste:\n%s",
            run.max_iters,
            run.train_time,
            metrics["val/mIoU"],
            run.best_miou,
            skipped,
            run.ckpts.last,
            run.ckpts.best,
            work_dir / "train.log",
            work_dir / "metrics.jsonl",
            "\n".join(f"  {line}" for line in next_commands(chosen, work_dir / "tb")),
        )
    return result


def next_commands(checkpoint: Path, tb_dir: Path) -> List[str]:
    """Shell commands that evaluate, segment with and export ``checkpoint`` and show the run in
    TensorBoard, each argument quoted for the shell where it needs it (tools paths relative to here)."""
    tools = {name: _shortest(REPO_ROOT / "tools" / f"{name}.py") for name in ("eval", "infer", "export")}
    return [
        shlex.join(["python", tools["eval"], f"checkpoint={checkpoint}"]),
        shlex.join(["python", tools["infer"], f"checkpoint={checkpoint}"]) + " input=YOUR_IMAGES",
        shlex.join(["python", tools["export"], str(checkpoint)]),
        shlex.join(["tensorboard", "--logdir", str(tb_dir)]),
    ]


def _shortest(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it, else absolute."""
    relative = os.path.relpath(path)
    return str(path) if relative.startswith("..") else relative


def finished_summary(work_dir: Path, finished: "resume.RunFinished") -> Dict[str, Any]:
    """What :func:`summary` returned for an already finished run: its last ``metrics.jsonl`` record and files."""
    metrics: Dict[str, Any] = {}
    records = work_dir / "metrics.jsonl"
    if records.is_file():
        lines = [line for line in records.read_text().splitlines() if line.strip()]
        if lines:
            metrics = json.loads(lines[-1])
    checkpoints = work_dir / "checkpoints"
    return {
        **metrics,
        "iteration": finished.iteration,
        "checkpoint": str(finished.path),
        "best_checkpoint": str(checkpoints / "best.pth"),
        "work_dir": str(work_dir),
    }


def _attach_file_log(path: Path) -> Optional[logging.Handler]:
    """Log to ``work_dir/train.log`` unless a handler already does (Hydra's under ``tools/train.py``)."""
    root = logging.getLogger()
    if any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path for h in root.handlers):
        return None
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    return handler


def _plain(cfg: DictConfig) -> Dict[str, Any]:
    """The config as a resolved plain dict (checkpoints hold no OmegaConf objects)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
