"""``tools/benchmark.py train``: images/s and peak memory of training steps, per precision and layout.

A self-contained step (random model and data, main + 0.4 × auxiliary cross-entropy, SGD, a
``GradScaler`` for float16) per variant: ``fp32``, ``bf16`` / ``fp16`` autocast, each ``+cl`` for
channels-last. Reported: median step time, images/s, speed-up over the first float32 variant and the
step's peak memory after warm-up (optimiser state included). Defaults: CCNet-R101 at 769×769, batch 2.

    python tools/benchmark.py train --config ccnet_tiny --size 256 --batch 4 --threads 2
"""

from __future__ import annotations

import argparse
import logging
from typing import Any, Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F

from ccnet.apps.benchmarks.common import (
    add_device_arguments,
    apply_threads,
    check_machine_load,
    describe_machine,
    format_table,
    machine_info,
    memory_method,
    peak_memory,
    resolve_device,
    size_hw,
    time_call,
)
from ccnet.apps.benchmarks.model import compose_model_config, config_paths
from ccnet.errors import ConfigError
from ccnet.models import build_model

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
VARIANTS = tuple(f"{p}{cl}" for p in PRECISIONS for cl in ("", "+cl"))
IGNORE_INDEX = 255
AUX_WEIGHT = 0.4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``train`` benchmark."""
    parser.add_argument("--config", default="ccnet_r101", help="model config name or .yaml path (default ccnet_r101)")
    parser.add_argument(
        "--size", type=int, nargs="+", default=[769], metavar="H [W]", help="crop size, H [W] (default 769: 769x769)"
    )
    parser.add_argument("--batch", type=int, default=2, help="images per step (default 2)")
    parser.add_argument("--num-classes", type=int, default=19, help="classes (default 19)")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        default=None,
        help="precision[+cl] variants (default: all on CUDA; fp32, fp32+cl, bf16, bf16+cl on CPU)",
    )
    add_device_arguments(parser, warmup=2, repeats=5)


def training_step(
    cfg: Dict[str, Any],
    device: torch.device,
    variant: str,
    size: Tuple[int, int],
    batch: int,
    num_classes: int,
    compile: bool = False,
) -> Tuple[Callable[[], torch.Tensor], Callable[[], None]]:
    """One SGD step of a randomly initialised model on random images, as closures.

    Args:
        cfg: a model config (``compose_model_config``).
        variant: ``fp32``, ``bf16`` or ``fp16``, with ``+cl`` for channels-last (see :data:`VARIANTS`).
        size: (height, width) of the images.
        num_classes: classes of the random labels.
        compile: ``torch.compile`` the model.

    Returns:
        ``(step, drop_gradients)``: ``step()`` runs forward, backward and the optimiser step and returns the
        loss; ``drop_gradients()`` is the step's zero_grad, run outside the measured call.
    """
    precision, channels_last = variant.split("+")[0], variant.endswith("+cl")
    dtype = PRECISIONS[precision]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model = build_model(cfg, pretrained=False).train().to(device=device).to(memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    forward = torch.compile(model) if compile else model
    height, width = size
    images = torch.randn(batch, 3, height, width, device=device).contiguous(memory_format=memory_format)
    labels = torch.randint(0, num_classes, (batch, height, width), device=device)
    labels[:, : max(1, height // 10)] = IGNORE_INDEX  # an ignored band, as in real annotations

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            outputs = forward(images)
            loss = F.cross_entropy(outputs["out"], labels, ignore_index=IGNORE_INDEX)
            if "aux" in outputs:
                loss = loss + AUX_WEIGHT * F.cross_entropy(outputs["aux"], labels, ignore_index=IGNORE_INDEX)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.detach()

    def drop_gradients() -> None:  # the step's zero_grad, outside the measured call
        optimizer.zero_grad(set_to_none=True)

    return step, drop_gradients


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Run the benchmark, print its table and return the JSON-able result."""
    device = resolve_device(args.device, key="--device")
    load = check_machine_load(device, args.force)
    apply_threads(args.threads)
    if args.batch < 1:
        raise ConfigError(f"--batch must be >= 1, got {args.batch}")
    path = config_paths([args.config])[0]
    cfg = compose_model_config(path, args.num_classes)
    variants = args.variants or (list(VARIANTS) if device.type == "cuda" else ["fp32", "fp32+cl", "bf16", "bf16+cl"])
    rows: List[Dict[str, Any]] = []
    for variant in variants:
        step, drop_gradients = training_step(cfg, device, variant, size_hw(args.size), args.batch, args.num_classes)
        timing = time_call(step, device, args.warmup, args.repeats, setup=drop_gradients)
        peak, _ = peak_memory(step, device, setup=drop_gradients)
        row = {
            "variant": variant,
            "step_ms": timing["median_ms"],
            "images_per_s": args.batch / timing["median_ms"] * 1e3,
            "peak_mb": peak / 2**20,
        }
        log.info("train %s: %s", variant, row)
        rows.append(row)
        del step, drop_gradients
    reference = next((r for r in rows if r["variant"].startswith("fp32")), None)
    for row in rows:
        row["speedup_vs_fp32"] = reference["step_ms"] / row["step_ms"] if reference else None
    config = {
        "config": path.stem,
        "size": list(size_hw(args.size)),
        "batch": args.batch,
        "num_classes": args.num_classes,
        "warmup": args.warmup,
        "repeats": args.repeats,
    }
    result = {
        "benchmark": "train",
        "config": config,
        "machine": machine_info(device, load),
        "memory_method": memory_method(device),
        "results": rows,
    }
    _print(result)
    return result


def _print(result: Dict[str, Any]) -> None:
    c = result["config"]
    print(
        f"training steps of {c['config']} at {c['size'][0]}x{c['size'][1]}, batch {c['batch']} "
        f"(CE + {AUX_WEIGHT} aux CE, SGD momentum 0.9)"
    )
    print(f"machine: {describe_machine(result['machine'])}")
    print(
        format_table(
            result["results"],
            [
                ("variant", "variant", "{}"),
                ("step_ms", "step ms", "{:.0f}"),
                ("images_per_s", "images/s", "{:.2f}"),
                ("speedup_vs_fp32", "speed-up vs fp32", "{:.2f}x"),
                ("peak_mb", "peak MB", "{:.0f}"),
            ],
        )
    )
    print(f"time: median of {c['repeats']} steps after {c['warmup']} warm-up; memory: {result['memory_method']}")
