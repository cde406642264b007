"""Iteration-based training of CCNet (arXiv 1811.11721, Sec. 4.1): SGD + poly learning rate, main and
auxiliary cross-entropy, periodic validation, exact resume, single process or torchrun (DDP).

``train(cfg)`` is the whole program of ``tools/train.py``; tests call it directly. The loop is one
function read top to bottom: fetch a batch, forward under autocast, backward, agree across ranks on
whether the loss was finite, step, log, validate, checkpoint.
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ccnet import dist
from ccnet.data import build_dataset, seed_worker
from ccnet.data.samplers import InfiniteSampler, SeededDataset
from ccnet.checkpoint import CheckpointError, load_checkpoint, model_state_from
from ccnet.engine.checkpoint_manager import CheckpointManager, load_weights, resolve_resume
from ccnet.engine.losses import build_criterion
from ccnet.engine.optim import build_optimizer, build_scheduler
from ccnet.engine.recorder import Recorder, validation_record
from ccnet.engine.rng import get_rng_state, seed_everything, set_rng_state
from ccnet.evaluation.evaluator import evaluate
from ccnet.models import build_model
from ccnet.utils.visualize import colorize, denormalize
from ccnet.models.attention_maps import attention_panel

log = logging.getLogger(__name__)

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
TRAINING_STATE = ("model", "optimizer", "scheduler", "scaler", "rng", "sampler", "iteration")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite (and ``train.skip_nonfinite`` is false)."""


def resolve_device(name: str) -> torch.device:
    """``train.device``: ``auto`` (CUDA when available), ``cpu`` or ``cuda`` (this process's GPU)."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"train.device must be auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device=cuda but no CUDA device is visible; use train.device=cpu (or auto)")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", dist.get_local_rank())


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
    """
    device = resolve_device(str(cfg.train.device))
    created_group = not dist.is_distributed() and dist.init_distributed(device.type)
    package_log = logging.getLogger("ccnet")
    level, threads = package_log.level, torch.get_num_threads()
    if not dist.is_main_process():
        package_log.setLevel(logging.WARNING)  # one copy of every info line: rank 0's
    if cfg.train.get("cpu_threads"):
        torch.set_num_threads(int(cfg.train.cpu_threads))
    try:
        return _train(cfg, device)
    finally:
        package_log.setLevel(level)
        torch.set_num_threads(threads)
        if created_group:
            dist.destroy_distributed()


def _attach_file_log(path: Path) -> Optional[logging.Handler]:
    """Log to ``work_dir/train.log`` when nobody does yet (Hydra's job logging already does under
    ``tools/train.py``; a direct ``train(cfg)`` call has no file handler)."""
    root = logging.getLogger()
    if any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path for h in root.handlers):
        return None
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    return handler


def _all_gather(obj: Any) -> List[Any]:
    if not dist.is_distributed():
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    torch_dist.all_gather_object(out, obj)
    return out


def _train(cfg: DictConfig, device: torch.device) -> Dict[str, Any]:
    tcfg = cfg.train
    rank, world, main = dist.get_rank(), dist.get_world_size(), dist.is_main_process()
    # Every rank must use rank 0's directory (a `${now:...}` in work_dir may resolve differently).
    work_dir = Path(dist.broadcast_object(str(Path(cfg.work_dir).resolve())))
    seed, batch_size, max_iters = int(tcfg.seed), int(tcfg.batch_size), int(tcfg.max_iters)
    amp = str(tcfg.amp)
    if amp not in AMP_DTYPES:
        raise ValueError(f"train.amp must be one of {sorted(AMP_DTYPES)}, got {amp!r}")
    if batch_size < 1 or max_iters < 1:
        raise ValueError(f"train.batch_size and train.max_iters must be >= 1, got {batch_size} and {max_iters}")

    resume_path = resolve_resume(cfg.get("resume"), work_dir)
    if resume_path is not None and cfg.get("load_from"):
        raise ValueError("set either resume (continue a run) or load_from (initialise weights), not both")
    resumed = load_checkpoint(resume_path) if resume_path is not None else None
    if resumed is not None and any(k not in resumed for k in TRAINING_STATE):
        raise CheckpointError(f"checkpoint {resume_path} lacks training state (has {sorted(resumed)}); "
                              f"use load_from={resume_path} to start a new run from its weights")

    # Datasets first: a wrong dataset.root fails in seconds, before a ResNet-101 is built.
    train_set = build_dataset(cfg.dataset, "train", crop_size=tcfg.get("crop_size"))
    val_set = build_dataset(cfg.dataset, "val")

    if main:
        work_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, work_dir / "config.yaml", resolve=True)
    file_log = _attach_file_log(work_dir / "train.log") if main else None
    ckpts = CheckpointManager(work_dir / "checkpoints", keep=int(tcfg.keep_checkpoints), enabled=main)
    if main and resumed is None and ckpts.last.is_file():
        log.warning("%s holds checkpoints of an earlier run; this new run overwrites them (resume=true "
                    "continues it instead)", ckpts.directory)

    seed_everything(seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
    # A resumed or fine-tuned run takes every weight from its checkpoint: no ImageNet file is read.
    model = build_model(cfg.model, pretrained=resumed is None and not cfg.get("load_from"))
    if cfg.get("load_from"):
        load_weights(model, model_state_from(load_checkpoint(cfg.load_from), cfg.load_from), cfg.load_from)
    if world > 1 and (tcfg.sync_bn or cfg.model.get("norm") == "syncbn"):
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            log.warning("SyncBatchNorm runs on GPUs only; this CPU run keeps per-process BatchNorm")
    model.to(device)
    if tcfg.channels_last:
        model.to(memory_format=torch.channels_last)
    torch.backends.cudnn.benchmark = bool(tcfg.cudnn_benchmark)

    criterion = build_criterion(tcfg, model.num_classes, int(cfg.dataset.ignore_index)).to(device)
    terms: List[str] = []  # loss terms besides the total ("main", "aux", ...) as the first step returns them
    optimizer = build_optimizer(model, tcfg)
    scheduler = build_scheduler(optimizer, tcfg)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    start_iter, best_miou, train_time, stream_start = 0, float("-inf"), 0.0, 0
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        scaler.load_state_dict(resumed["scaler"])
        start_iter = int(resumed["iteration"])
        best_miou = float(resumed.get("best_miou", float("-inf")))
        train_time = float(resumed.get("train_time_s", 0.0))
        stream_start = InfiniteSampler.start_from_state(resumed["sampler"], len(train_set), seed)
        if start_iter >= max_iters:
            raise ValueError(f"checkpoint {resume_path} is at iteration {start_iter}, train.max_iters={max_iters}: "
                             "nothing left to train; raise train.max_iters to train longer")
        log.info("resumed from %s at iteration %d", resume_path, start_iter)

    train_model: nn.Module = model
    if world > 1:
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if tcfg.compile:
        train_model = torch.compile(train_model)

    sampler = InfiniteSampler(len(train_set), rank, world, seed=seed, start=stream_start, yield_seeds=True)
    num_workers = int(tcfg.num_workers)
    loader = DataLoader(SeededDataset(train_set), batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        pin_memory=device.type == "cuda", drop_last=True, worker_init_fn=seed_worker,
                        # Own generator: creating the loader must not consume the global torch stream.
                        generator=torch.Generator().manual_seed(seed + rank), persistent_workers=num_workers > 0)
    batches = iter(loader)
    if resumed is not None:
        rng = resumed["rng"]
        if len(rng) == world:
            set_rng_state(rng[rank])
        else:
            log.warning("checkpoint saved by %d processes, resuming on %d: random streams (dropout) are "
                        "re-seeded; the sample order continues exactly", len(rng), world)
            seed_everything(seed + rank + 1_000_003 * start_iter)
    else:
        seed_everything(seed + rank)  # per-rank dropout streams

    recorder = Recorder(work_dir, start_iter) if main else None
    autocast = (torch.autocast(device.type, dtype=AMP_DTYPES[amp]) if amp != "none" else nullcontext())
    log_interval, eval_interval = int(tcfg.log_interval), int(tcfg.eval_interval)
    ckpt_interval = int(tcfg.checkpoint_interval)
    grad_clip = tcfg.get("grad_clip")
    class_names = list(getattr(val_set, "classes", [str(i) for i in range(model.num_classes)]))
    skipped, window, window_steps, window_time, metrics, last_loss = 0, [], 0, 0.0, {}, float("nan")
    # Bars only on rank 0 and only on a terminal; log files (slurm, CI) get the plain log lines.
    show_bar = main and sys.stderr.isatty()
    log.info("training %s on %s: %d iterations, batch %d per process x %d processes, device %s, amp %s",
             cfg.model.get("name"), cfg.dataset.get("name"), max_iters, batch_size, world, device, amp)

    show_attention = bool(tcfg.get("vis_attention", True)) and getattr(getattr(model, "head", None), "cca", None) \
        is not None and getattr(model.head, "recurrence", 0) > 0

    def validate(iteration: int) -> Dict[str, Any]:
        nonlocal best_miou
        panels: List[Any] = []
        keep = int(tcfg.get("vis_images", 0))
        result = evaluate(model, val_set, cfg.eval, device, amp=amp, progress=show_bar, desc=f"val@{iteration}",
                          on_prediction=lambda i, x, y, p: panels.append((x, y, p)) if len(panels) < keep else None)
        record = validation_record(iteration, result, class_names, train_time)
        per_class = "  ".join(f"{n} {v:.3f}" for n, v in zip(class_names, result["IoU"]))
        log.info("val @ %d: mIoU %.4f  mAcc %.4f  aAcc %.4f%s", iteration, result["mIoU"], result["mAcc"],
                 result["aAcc"], f" | {per_class}" if len(class_names) <= 40 else " (per class: metrics.jsonl)")
        if main:
            recorder.validation(record)
            for j, (image, label, pred) in enumerate(panels):
                panel = [denormalize(image, val_set.mean, val_set.std),
                         colorize(label.numpy(), val_set.palette, val_set.ignore_index),
                         colorize(pred.numpy(), val_set.palette, val_set.ignore_index)]
                recorder.image(f"val/panel_{j}", np.concatenate(panel, axis=1), iteration)
                if show_attention:  # the image centre's attention, loop by loop (paper, Fig. 1)
                    recorder.image(f"val/attention_{j}", attention_panel(model, image.to(device), mean=val_set.mean,
                                                                         std=val_set.std), iteration)
        if result["mIoU"] > best_miou:
            best_miou = float(result["mIoU"])
            ckpts.save_best({"model": model.state_dict(), "config": _plain(cfg), "iteration": iteration,
                             "best_miou": best_miou})
        return record

    bar = tqdm(total=max_iters, initial=start_iter, desc="train", dynamic_ncols=True, disable=not show_bar)
    try:
        with logging_redirect_tqdm() if show_bar else nullcontext():  # log lines above the bar
            for it in range(start_iter + 1, max_iters + 1):
                tic = time.perf_counter()
                images, targets = next(batches)
                images = images.to(device, non_blocking=True)
                if tcfg.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                targets = targets.to(device, non_blocking=True)
                with autocast:
                    losses = criterion(train_model(images), targets)
                terms = terms or [k for k in losses if k != "loss"]
                scaler.scale(losses["loss"]).backward()
                # One all-reduce per step: the loss terms for logging, and whether any rank's loss was
                # non-finite, so that all ranks skip or stop together.
                total = losses["loss"].detach().float()
                stats = torch.stack([total, *(losses[k].detach().float() for k in terms),
                                     (~torch.isfinite(total)).float()])
                *values, nonfinite = (dist.all_reduce_sum(stats) / world).tolist()
                if nonfinite > 0:
                    optimizer.zero_grad(set_to_none=True)
                    if not tcfg.skip_nonfinite:
                        raise NonFiniteLossError(
                            f"non-finite loss ({values[0]}) at iteration {it}; weights were not updated. Last "
                            f"checkpoint: {ckpts.last if ckpts.last.is_file() else 'none'}. Lower train.lr, set "
                            "train.grad_clip, use train.amp=bf16 instead of fp16, or set train.skip_nonfinite=true")
                    skipped += 1
                    log.warning("non-finite loss at iteration %d: step skipped (%d so far)", it, skipped)
                else:
                    if grad_clip:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), float(grad_clip))
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    window.append(values)
                scheduler.step()
                step_time = time.perf_counter() - tic  # includes data loading; the .tolist() above synced
                train_time += step_time
                window_time += step_time
                window_steps += 1
                bar.update(1)
                lr = optimizer.param_groups[0]["lr"]
                if it % log_interval == 0 or it == max_iters:
                    means = np.mean(window, axis=0) if window else np.full(len(terms) + 1, np.nan)
                    last_loss = float(means[0])
                    scalars = {"train/loss": last_loss,
                               **{f"train/loss_{k}": float(v) for k, v in zip(terms, means[1:])}, "train/lr": lr,
                               "train/img_per_s": window_steps * batch_size * world / max(window_time, 1e-9),
                               "train/skipped_nonfinite": skipped}
                    if device.type == "cuda":
                        scalars["train/peak_mem_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
                    bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.2e}", img_s=f"{scalars['train/img_per_s']:.1f}")
                    log.info("iter %d/%d  loss %.4f (%s)  lr %.3e  %.1f img/s%s", it, max_iters, last_loss,
                             " ".join(f"{k} {v:.4f}" for k, v in zip(terms, means[1:])), lr,
                             scalars["train/img_per_s"], f"  skipped {skipped}" if skipped else "")
                    if main:
                        recorder.scalars(scalars, it)
                    window, window_steps, window_time = [], 0, 0.0
                if (eval_interval > 0 and it % eval_interval == 0) or it == max_iters:
                    metrics = validate(it)
                if (ckpt_interval > 0 and it % ckpt_interval == 0) or it == max_iters:
                    rng_states = _all_gather(get_rng_state())
                    ckpts.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                                "rng": rng_states, "sampler": sampler.state_at((it - start_iter) * batch_size * world),
                                "iteration": it, "best_miou": best_miou, "train_time_s": train_time,
                                "config": _plain(cfg)}, it)
    finally:
        bar.close()
        if recorder is not None:
            recorder.close()
        if file_log is not None:
            logging.getLogger().removeHandler(file_log)
            file_log.close()

    result = {**metrics, "best/mIoU": best_miou, "train/loss": last_loss, "skipped_nonfinite": skipped,
              "train_time_s": train_time, "work_dir": str(work_dir), "checkpoint": str(ckpts.last),
              "best_checkpoint": str(ckpts.best)}
    if main and metrics:
        log.info("done: %d iterations in %.0f s of training; val mIoU %.4f (best %.4f)\n"
                 "  checkpoints: %s (last), %s (best)\n  log: %s\n  metrics: %s\n  TensorBoard: tensorboard "
                 "--logdir %s", max_iters, train_time, metrics["val/mIoU"], best_miou, ckpts.last, ckpts.best,
                 work_dir / "train.log", work_dir / "metrics.jsonl", work_dir / "tb")
    return result


def _plain(cfg: DictConfig) -> Dict[str, Any]:
    """The config as a resolved plain dict (checkpoints hold no OmegaConf objects)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


