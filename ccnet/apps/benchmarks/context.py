"""``tools/benchmark.py context``: the paper's efficiency comparison of context modules (arXiv 1811.11721:
on ResNet-50 at 769×769, non-local 108 GFLOPs / 1411 MB, RCCA R = 2 16.5 GFLOPs / 127 MB).

Measured is what each variant adds between ``conva`` and ``convb`` on the 512-channel map: the criss-cross
module applied R times with shared weights, or one non-local block (256 inter channels); the whole head
(``head.features``) in GFLOPs only. GFLOPs from ``FlopCounterMode`` on the meta device (a multiply-add is
2); memory the peak of a training step and of an inference forward of the block.

    python tools/benchmark.py context --threads 2
"""

from __future__ import annotations

import argparse
import logging
from typing import Any, Dict, List, Optional, cast

import torch
from torch import Tensor, nn

from ccnet.apps.benchmarks.common import (
    DTYPES,
    add_device_arguments,
    apply_threads,
    check_machine_load,
    count_flops,
    describe_machine,
    format_table,
    machine_info,
    memory_method,
    peak_memory,
    resolve_device,
    time_call,
)
from ccnet.models.cca import select_implementation
from ccnet.models.heads import NonLocalHead, RCCAHead

log = logging.getLogger(__name__)

CONTEXTS = ("none", "rcca1", "rcca2", "rcca3", "nonlocal")
# The paper's additions over the no-context baseline (ResNet-50, 769×769; TPAMI version, Table 3).
PAPER = {"rcca2": {"gflops": 16.5, "memory_mb": 127.0}, "nonlocal": {"gflops": 108.0, "memory_mb": 1411.0}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``context`` benchmark."""
    parser.add_argument("--in-channels", type=int, default=2048, help="head input channels (default 2048)")
    parser.add_argument("--height", type=int, default=97, help="map height (default 97: 769 px at stride 8)")
    parser.add_argument("--width", type=int, default=97, help="map width (default 97)")
    parser.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    parser.add_argument(
        "--contexts",
        nargs="+",
        choices=CONTEXTS,
        default=list(CONTEXTS),
        help="variants to measure (rcca<R>: criss-cross attention applied R times)",
    )
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="parameter/input dtype")
    add_device_arguments(parser, warmup=1, repeats=3)


def _head(context: str, in_channels: int) -> RCCAHead:
    if context == "nonlocal":
        return NonLocalHead(in_channels, num_classes=19)
    recurrence = 0 if context == "none" else int(context[len("rcca") :])
    return RCCAHead(in_channels, num_classes=19, recurrence=recurrence)


def _block(head: RCCAHead, context: str) -> Optional[nn.Module]:
    """The part of the head the variant adds (None for the no-context baseline)."""
    if context == "nonlocal":
        return cast(nn.Module, head.nonlocal_block)
    if context == "none":
        return None
    assert head.cca is not None  # recurrence >= 1 here
    return _Recurrent(head.cca, head.recurrence)


class _Recurrent(nn.Module):
    """A module applied ``times`` times with shared weights (the RCCA loop)."""

    def __init__(self, module: nn.Module, times: int) -> None:
        super().__init__()
        self.module = module
        self.times = times

    def forward(self, x: Tensor) -> Tensor:
        for _ in range(self.times):
            x = self.module(x)
        return x


def _flops(args: argparse.Namespace, context: str) -> Dict[str, float]:
    """Block and whole-head forward GFLOPs, counted on the meta device."""
    with torch.device("meta"):
        head = _head(context, args.in_channels).eval()
        block = _block(head, context)
        x = torch.empty(args.batch, args.in_channels, args.height, args.width)
        inner = torch.empty(args.batch, head.inter_channels, args.height, args.width)
    with torch.no_grad():
        head_flops = count_flops(lambda: head.features(x))
        block_flops = count_flops(lambda: block(inner)) if block is not None else 0
    return {"block_gflops": block_flops / 1e9, "head_gflops": head_flops / 1e9}


def _measure(args: argparse.Namespace, context: str, device: torch.device, dtype: torch.dtype) -> Dict[str, Any]:
    """Peak memory (inference forward; training forward+backward) and time of the block."""
    head = _head(context, args.in_channels)
    block = _block(head, context)
    if block is None:
        return {"block_fwd_mb": 0.0, "block_train_mb": 0.0, "block_fwd_ms": 0.0, "block_train_ms": 0.0}
    block = block.to(device=device, dtype=dtype).train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, head.inter_channels, args.height, args.width, generator=g)
    x = x.to(device=device, dtype=dtype).requires_grad_()
    grad = torch.randn(x.shape, generator=g).to(device=device, dtype=dtype)

    def forward() -> Tensor:
        with torch.no_grad():
            return block(x)

    def train_step() -> None:
        block(x).backward(grad)

    def drop_gradients() -> None:
        block.zero_grad(set_to_none=True)
        x.grad = None

    fwd_bytes, _ = peak_memory(forward, device)
    train_bytes, _ = peak_memory(train_step, device, setup=drop_gradients)
    return {
        "block_fwd_mb": fwd_bytes / 2**20,
        "block_train_mb": train_bytes / 2**20,
        "block_fwd_ms": time_call(forward, device, args.warmup, args.repeats)["median_ms"],
        "block_train_ms": time_call(train_step, device, args.warmup, args.repeats, drop_gradients)["median_ms"],
    }


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Run the benchmark, print its table and return the JSON-able result."""
    device = resolve_device(args.device, key="--device")
    load = check_machine_load(device, args.force)
    apply_threads(args.threads)
    dtype = DTYPES[args.dtype]
    rows: List[Dict[str, Any]] = []
    for context in args.contexts:
        row: Dict[str, Any] = {"context": context, **_flops(args, context), **_measure(args, context, device, dtype)}
        paper = PAPER.get(context, {})
        row["paper_gflops"] = paper.get("gflops")
        row["paper_memory_mb"] = paper.get("memory_mb")
        log.info("context %s: %s", context, row)
        rows.append(row)
    by_name = {r["context"]: r for r in rows}
    comparison = {}
    if "rcca2" in by_name and "nonlocal" in by_name:
        rcca, nl = by_name["rcca2"], by_name["nonlocal"]
        comparison = {
            "rcca2_flops_reduction_vs_nonlocal": 1 - rcca["block_gflops"] / nl["block_gflops"],
            "nonlocal_over_rcca2_train_memory": nl["block_train_mb"] / rcca["block_train_mb"],
            "paper_flops_reduction": 1 - 16.5 / 108.0,
            "paper_memory_ratio": 1411.0 / 127.0,
        }
    config = {k: getattr(args, k) for k in ("in_channels", "height", "width", "batch", "dtype", "warmup", "repeats")}
    result = {
        "benchmark": "context",
        "config": config,
        "machine": machine_info(device, load),
        "criss_cross_implementation": select_implementation(None, device),
        "memory_method": memory_method(device),
        "results": rows,
        "comparison": comparison,
    }
    _print(result)
    return result


def _print(result: Dict[str, Any]) -> None:
    c = result["config"]
    print(
        f"context modules on a {c['batch']}x{c['in_channels']}x{c['height']}x{c['width']} map (block = what the "
        f"variant adds after conva's {c['in_channels'] // 4} channels; head = conva .. bottleneck), {c['dtype']}, "
        f"criss-cross implementation: {result['criss_cross_implementation']}"
    )
    print(f"machine: {describe_machine(result['machine'])}")
    print(
        format_table(
            result["results"],
            [
                ("context", "context", "{}"),
                ("block_gflops", "block GFLOPs", "{:.2f}"),
                ("paper_gflops", "paper GFLOPs", "{:.1f}"),
                ("block_train_mb", "block train MB", "{:.0f}"),
                ("paper_memory_mb", "paper MB", "{:.0f}"),
                ("block_fwd_mb", "block infer MB", "{:.0f}"),
                ("block_train_ms", "block train ms", "{:.0f}"),
                ("block_fwd_ms", "block infer ms", "{:.0f}"),
                ("head_gflops", "head GFLOPs", "{:.1f}"),
            ],
        )
    )
    cmp = result["comparison"]
    if cmp:
        print(
            f"RCCA R=2 vs non-local: {100 * cmp['rcca2_flops_reduction_vs_nonlocal']:.1f}% fewer FLOPs "
            f"(paper {100 * cmp['paper_flops_reduction']:.1f}%), {cmp['nonlocal_over_rcca2_train_memory']:.1f}x "
            f"less training memory (paper {cmp['paper_memory_ratio']:.1f}x)"
        )
    print(f"time: median of {c['repeats']} after {c['warmup']} warm-up; memory: {result['memory_method']}")
