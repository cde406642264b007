"""``tools/benchmark.py data``: images/s of the training input pipeline per DataLoader worker count.

Writes Cityscapes-sized pairs in the Cityscapes layout to a temporary folder (or ``--data-dir``), builds
the training split with ``configs/dataset/cityscapes.yaml`` and times a ``DataLoader``; a per-stage
breakdown in the main process shows where the time goes (docs/datasets.md#data-loading-speed).

    python tools/benchmark.py data --workers 0 2 4 --batch-size 8 --crop-size 769
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import cv2
import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, RandomSampler

from ccnet.apps.benchmarks import TOOL
from ccnet.apps.benchmarks.common import check_machine_load
from ccnet.apps.layouts import cityscapes_layout_files, write_cityscapes_layout
from ccnet.data import build_dataset, seed_worker
from ccnet.data.base import map_label, read_image, read_label
from ccnet.data.transforms import to_hw
from ccnet.errors import ConfigError
from ccnet.utils.manifest import OutputManifest
from ccnet.utils.paths import CONFIGS_DIR

log = logging.getLogger(__name__)

DEFAULT_CONFIG = CONFIGS_DIR / "dataset" / "cityscapes.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``data`` benchmark."""
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts to time (default: 0 2)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="images per batch (default: 8)")
    parser.add_argument(
        "--num-batches", type=int, default=10, help="timed batches per worker count, after the warm-up (default: 10)"
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed batches first: worker start-up and first reads (default: 1)"
    )
    parser.add_argument(
        "--crop-size",
        type=int,
        nargs="+",
        default=None,
        help="training crop, H [W] (default: the dataset config's, 769 769)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        default=[1024, 2048],
        metavar=("H", "W"),
        help="generated image size (default: 1024 2048, Cityscapes)",
    )
    parser.add_argument("--num-images", type=int, default=8, help="generated image/label pairs (default: 8)")
    parser.add_argument(
        "--dataset-config",
        type=Path,
        default=DEFAULT_CONFIG,
        help=f"dataset config whose pipeline is timed (default: {DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="write the generated files here and keep them (default: a temporary folder); never "
        "over a file that no earlier benchmark wrote",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data and the augmentation")
    parser.add_argument(
        "--force", action="store_true", help="time even when the CPUs are busy (the result records the load)"
    )


CITY = "bench"  # the city folder of the generated images


def generate_cityscapes_like(
    root: Path, num_images: int, height: int, width: int, seed: int = 0, record: Optional[Callable[[Path], None]] = None
) -> float:
    """Write ``num_images`` street-like pairs (:func:`ccnet.apps.layouts.street_scene`, compressing like photos)
    as ``root/{leftImg8bit,gtFine}/train/bench/*``; ``record`` is called with each file written.

    Returns:
        Mean image file size in MB.
    """
    images = write_cityscapes_layout(root, {"train": num_images}, (height, width), seed=seed, city=CITY, record=record)
    sizes = [p.stat().st_size / 2**20 for p in images]
    return float(np.mean(sizes))


def _stage_times(dataset, samples: int) -> Dict[str, float]:
    """Milliseconds per image of each stage, in this process."""
    totals = {"decode_image": 0.0, "decode_and_map_label": 0.0, "transform": 0.0}
    for i in range(samples):
        index = i % len(dataset)
        t0 = time.perf_counter()
        image = read_image(dataset.image_paths[index])
        t1 = time.perf_counter()
        label = map_label(
            read_label(dataset.label_paths[index]),
            dataset.label_lut,
            dataset.label_paths[index],
            dataset.num_classes,
            dataset.ignore_index,
        )
        t2 = time.perf_counter()
        dataset.transform(image=image, mask=label)
        t3 = time.perf_counter()
        totals["decode_image"] += t1 - t0
        totals["decode_and_map_label"] += t2 - t1
        totals["transform"] += t3 - t2
    return {k: 1000.0 * v / samples for k, v in totals.items()}


def _time_loader(dataset, workers: int, batch_size: int, warmup: int, num_batches: int, seed: int) -> float:
    """Images per second over ``num_batches`` batches after ``warmup`` batches."""
    generator = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(
        dataset, replacement=True, num_samples=(warmup + num_batches) * batch_size, generator=generator
    )
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        worker_init_fn=seed_worker,
        generator=generator,
        drop_last=True,
    )
    iterator = iter(loader)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    count = 0
    for images, _ in iterator:
        count += images.shape[0]
    return count / (time.perf_counter() - start)


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Generate the images, time the pipeline per worker count, print a table.

    Returns:
        JSON-able result: settings, environment, per-stage ms/image and images/s per worker count.

    Raises:
        OutputConflictError: a generated file's path in ``--data-dir`` holds a file that no earlier
            benchmark wrote there (its ``manifest.txt``); nothing is written.
    """
    if not Path(args.dataset_config).is_file():
        raise FileNotFoundError(
            f"Dataset config {args.dataset_config} not found; pass --dataset-config "
            "path/to/configs/dataset/cityscapes.yaml"
        )
    if args.num_batches < 1 or args.batch_size < 1 or args.warmup < 0 or min(args.workers) < 0:
        raise ConfigError("--num-batches and --batch-size must be >= 1, --warmup and --workers >= 0")
    record = None
    if args.data_dir is not None:  # before waiting for the load to fall
        manifest = OutputManifest(args.data_dir, TOOL)
        manifest.claim(
            [
                p
                for pair in cityscapes_layout_files(Path(args.data_dir), {"train": args.num_images}, CITY)
                for p in pair
            ],
            key="--data-dir",
        )
        record = manifest.record
    check_machine_load(torch.device("cpu"), args.force)
    height, width = args.image_size
    with tempfile.TemporaryDirectory(prefix="ccnet_data_bench_") as tmp:
        root = Path(args.data_dir) if args.data_dir is not None else Path(tmp)
        t0 = time.perf_counter()
        mean_mb = generate_cityscapes_like(root, args.num_images, height, width, args.seed, record)
        generate_s = time.perf_counter() - t0
        cfg: Any = OmegaConf.load(args.dataset_config)
        cfg.root = str(root)
        cfg.train_split = "train"
        crop = to_hw(
            args.crop_size[0] if args.crop_size and len(args.crop_size) == 1 else args.crop_size or list(cfg.crop_size),
            "--crop-size",
        )
        torch.manual_seed(args.seed)
        dataset = build_dataset(cfg, "train", crop_size=crop)
        stages = _stage_times(dataset, min(args.num_images, 8))
        rows: List[Dict[str, Any]] = []
        for workers in args.workers:
            ips = _time_loader(dataset, workers, args.batch_size, args.warmup, args.num_batches, args.seed)
            rows.append({"workers": workers, "images_per_s": ips, "ms_per_image": 1000.0 / ips})
    result = {
        "benchmark": "data",
        "dataset_config": str(args.dataset_config),
        "image_size": [height, width],
        "mean_image_file_mb": mean_mb,
        "num_images": args.num_images,
        "crop_size": list(crop),
        "batch_size": args.batch_size,
        "num_batches": args.num_batches,
        "generate_s": generate_s,
        "stage_ms_per_image": stages,
        "results": rows,
        "cpu_count": os.cpu_count(),
        "cv2_threads": cv2.getNumThreads(),
        "torch_threads": torch.get_num_threads(),
    }
    _print_table(result)
    return result


def _print_table(result: Dict[str, Any]) -> None:
    h, w = result["image_size"]
    ch, cw = result["crop_size"]
    print(
        f"Training pipeline on {result['num_images']} generated {w}x{h} PNGs "
        f"({result['mean_image_file_mb']:.1f} MB each), crop {cw}x{ch}, batch {result['batch_size']}, "
        f"{result['cpu_count']} CPUs"
    )
    stages = result["stage_ms_per_image"]
    print("per image, one process: " + ", ".join(f"{k} {v:.1f} ms" for k, v in stages.items()))
    print(f"{'workers':>8} | {'images/s':>9} | {'ms/image':>9}")
    print(f"{'-' * 8}-+-{'-' * 9}-+-{'-' * 9}")
    for row in result["results"]:
        print(f"{row['workers']:>8} | {row['images_per_s']:>9.2f} | {row['ms_per_image']:>9.1f}")
