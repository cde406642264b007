"""``tools/benchmark.py cca``: our criss-cross attention implementations (``reference``, ``lean``, ``triton``
on CUDA) against the widely copied formulation (:mod:`ccnet.apps.benchmarks.baseline_cca`), on identical
weights in one run. Default shape: the paper's head map, 1×512×97×97, R = 2.

Scopes: ``module`` (default), ``CrissCrossAttention`` applied R times as in the RCCA head; ``operator``,
the attention alone on precomputed q, k, v. Per implementation: forward and forward+backward median time
and peak memory, speed-up and memory against the baseline, and the largest output difference from it.

    python tools/benchmark.py cca --device cuda --dtype bfloat16 --channels-last
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from typing import Any, Callable, ContextManager, Dict, List

import torch
from torch import Tensor

from ccnet.apps.benchmarks.baseline_cca import BaselineCrissCrossAttention, baseline_criss_cross_attention
from ccnet.apps.benchmarks.common import (
    DTYPES,
    add_device_arguments,
    apply_threads,
    check_machine_load,
    describe_machine,
    format_table,
    gemm_throughput,
    machine_info,
    memory_method,
    peak_memory,
    resolve_device,
    time_interleaved,
)
from ccnet.errors import ConfigError
from ccnet.models.cca import TRITON_INSTALLED, CrissCrossAttention, criss_cross_attention, use_implementation

log = logging.getLogger(__name__)

IMPLS = ("baseline", "reference", "lean", "triton")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``cca`` benchmark."""
    parser.add_argument("--batch", type=int, default=1, help="B (default 1)")
    parser.add_argument("--channels", type=int, default=512, help="C of the attended map (default 512)")
    parser.add_argument("--height", type=int, default=97, help="H (default 97: 769 px at output stride 8)")
    parser.add_argument("--width", type=int, default=97, help="W (default 97)")
    parser.add_argument("--recurrence", type=int, default=2, help="R, module applications (default 2)")
    parser.add_argument("--reduction", type=int, default=8, help="C' = C / reduction (default 8)")
    parser.add_argument(
        "--scope",
        choices=("module", "operator"),
        default="module",
        help="module: CrissCrossAttention x R incl. 1x1 convs; operator: attention on q, k, v",
    )
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="input/parameter dtype")
    parser.add_argument("--channels-last", action="store_true", help="channels_last inputs (and weights)")
    parser.add_argument(
        "--impls",
        nargs="+",
        choices=IMPLS,
        default=list(IMPLS),
        help="what to run; the baseline is always included (triton: CUDA only)",
    )
    add_device_arguments(parser, warmup=1, repeats=5)


def _implementation(name: str) -> ContextManager[None]:
    """Our implementation ``name`` selected inside the block (the baseline is a separate module)."""
    return contextlib.nullcontext() if name == "baseline" else use_implementation(name)


def _forced(impl: str, fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` run with our implementation ``impl`` selected."""

    def call() -> Any:
        with _implementation(impl):
            return fn()

    return call


def _module_case(
    args: argparse.Namespace, device: torch.device, dtype: torch.dtype, state: Dict[str, Tensor], impl: str
):
    """Closures for forward and forward+backward of the module applied R times."""
    cls = BaselineCrissCrossAttention if impl == "baseline" else CrissCrossAttention
    module: Any = cls(args.channels, args.reduction)
    module.load_state_dict(state)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    module = module.to(device=device, dtype=dtype, memory_format=memory_format)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.channels, args.height, args.width, generator=g)
    x = x.to(device=device, dtype=dtype).contiguous(memory_format=memory_format).requires_grad_()
    # the incoming gradient in the activations' layout, as a following layer would produce it
    grad = torch.randn(x.shape, generator=g).to(device=device, dtype=dtype).contiguous(memory_format=memory_format)

    def apply(inp: Tensor) -> Tensor:
        for _ in range(args.recurrence):
            inp = module(inp)
        return inp

    def forward() -> Tensor:
        with torch.no_grad():
            return apply(x)

    def forward_backward() -> None:
        apply(x).backward(grad)

    def drop_gradients() -> None:
        module.zero_grad(set_to_none=True)
        x.grad = None

    return forward, forward_backward, drop_gradients


def _operator_case(args: argparse.Namespace, device: torch.device, dtype: torch.dtype, impl: str):
    """Closures for forward and forward+backward of the attention alone on q, k, v."""
    g = torch.Generator().manual_seed(0)
    inner = args.channels // args.reduction
    shapes = [(args.batch, inner, args.height, args.width)] * 2 + [(args.batch, args.channels, args.height, args.width)]
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    q, k, v = (
        torch.randn(s, generator=g)
        .to(device=device, dtype=dtype)
        .contiguous(memory_format=memory_format)
        .requires_grad_()
        for s in shapes
    )
    grad = torch.randn(v.shape, generator=g).to(device=device, dtype=dtype).contiguous(memory_format=memory_format)
    op: Callable[..., Tensor] = baseline_criss_cross_attention if impl == "baseline" else criss_cross_attention

    def forward() -> Tensor:
        with torch.no_grad():
            return op(q, k, v)

    def forward_backward() -> None:
        op(q, k, v).backward(grad)

    def drop_gradients() -> None:
        for t in (q, k, v):
            t.grad = None

    return forward, forward_backward, drop_gradients


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Run the benchmark, print its table and return the JSON-able result."""
    device = resolve_device(args.device, key="--device")
    if args.recurrence < 1:  # option errors first, not after waiting for the machine's load to fall
        raise ConfigError(f"--recurrence must be >= 1, got {args.recurrence}")
    if args.channels // args.reduction < 1:
        raise ConfigError(f"--channels {args.channels} // --reduction {args.reduction} leaves no query/key channels")
    load = check_machine_load(device, args.force)
    apply_threads(args.threads)
    dtype = DTYPES[args.dtype]
    impls: List[str] = ["baseline"] + [i for i in args.impls if i != "baseline"]
    skipped: Dict[str, str] = {}
    if "triton" in impls and not (device.type == "cuda" and TRITON_INSTALLED):
        impls.remove("triton")
        skipped["triton"] = "needs a CUDA device and Triton" if TRITON_INSTALLED else "Triton is not installed"
    state = BaselineCrissCrossAttention(args.channels, args.reduction).state_dict()
    state["gamma"] = torch.ones(1)  # γ = 1 so the attention shows in the outputs that are compared

    cases = {}
    for impl in impls:
        with _implementation(impl):
            if args.scope == "module":
                cases[impl] = _module_case(args, device, dtype, state, impl)
            else:
                cases[impl] = _operator_case(args, device, dtype, impl)
    rows: List[Dict[str, Any]] = []
    baseline_out = None
    for impl, (forward, forward_backward, drop_gradients) in cases.items():
        with _implementation(impl):
            out = forward().float()
            baseline_out = out if baseline_out is None else baseline_out
            fwd_bytes, _ = peak_memory(forward, device)
            fwd_bwd_bytes, _ = peak_memory(forward_backward, device, setup=drop_gradients)
        rows.append(
            {
                "impl": impl,
                "max_abs_diff_vs_baseline": (out - baseline_out).abs().max().item(),
                "fwd_peak_mb": fwd_bytes / 2**20,
                "fwd_bwd_peak_mb": fwd_bwd_bytes / 2**20,
            }
        )
        del out
    # implementations take turns in every timing round: a load change on shared CPUs hits all alike
    for key, pick in (("fwd_ms", 0), ("fwd_bwd_ms", 1)):
        calls = {impl: (_forced(impl, case[pick]), case[2] if pick else None) for impl, case in cases.items()}
        timings = time_interleaved(calls, device, args.warmup, args.repeats)
        for row in rows:
            timing = timings[row["impl"]]
            row[key] = timing["median_ms"]
            row[key.replace("_ms", "_range_ms")] = [timing["min_ms"], timing["max_ms"]]
    for row in rows:
        log.info("cca %s: %s", row["impl"], row)
    base = rows[0]
    for row in rows:
        row["fwd_speedup"] = base["fwd_ms"] / row["fwd_ms"]
        row["fwd_bwd_speedup"] = base["fwd_bwd_ms"] / row["fwd_bwd_ms"]
        row["fwd_memory_ratio"] = row["fwd_peak_mb"] / base["fwd_peak_mb"] if base["fwd_peak_mb"] else None
        row["fwd_bwd_memory_ratio"] = row["fwd_bwd_peak_mb"] / base["fwd_bwd_peak_mb"]

    config = {
        k: getattr(args, k)
        for k in (
            "batch",
            "channels",
            "height",
            "width",
            "recurrence",
            "reduction",
            "scope",
            "dtype",
            "channels_last",
            "warmup",
            "repeats",
        )
    }
    bound = roofline(args, gemm_throughput(device, dtype))
    for row in rows:
        row["fraction_of_bound"] = bound["bound_ms"] / row["fwd_bwd_ms"]
    result = {
        "benchmark": "cca",
        "config": config,
        "machine": machine_info(device, load),
        "memory_method": memory_method(device),
        "skipped": skipped,
        "roofline": bound,
        "results": rows,
    }
    _print(result)
    return result


def roofline(args: argparse.Namespace, gemm_gflops: float) -> Dict[str, float]:
    """The matrix-product work of one forward+backward and the least time it needs at ``gemm_gflops``.

    Per application on (B, C, H, W) with C' = C / reduction, multiply-adds x 2: projections (module scope)
    ``2·B·HW·C·(2C'+C)``; attention ``2·B·HW·(H+W)·C'`` + ``2·B·HW·(H+W)·C``. Backward = 2x forward, so
    forward+backward is 3x; times R. Element-wise work is left out, so the bound is a floor.
    """
    b, c, h, w = args.batch, args.channels, args.height, args.width
    inner, hw, applications = c // args.reduction, h * w, args.recurrence if args.scope == "module" else 1
    projections = 2 * b * hw * c * (2 * inner + c) if args.scope == "module" else 0
    attention = 2 * b * hw * (h + w) * inner + 2 * b * hw * (h + w) * c
    total = 3 * applications * (projections + attention)
    return {
        "projection_gflop": 3 * applications * projections / 1e9,
        "attention_gflop": 3 * applications * attention / 1e9,
        "gemm_gflops_per_s": gemm_gflops,
        "bound_ms": total / (gemm_gflops * 1e9) * 1e3,
    }


def _print(result: Dict[str, Any]) -> None:
    c = result["config"]
    scope = f"CrissCrossAttention x R={c['recurrence']}" if c["scope"] == "module" else "attention operator on q, k, v"
    print(
        f"criss-cross attention, {scope}: B={c['batch']} C={c['channels']} H={c['height']} W={c['width']} "
        f"C'=C/{c['reduction']} {c['dtype']}{' channels_last' if c['channels_last'] else ''}"
    )
    print(f"machine: {describe_machine(result['machine'])}")
    print(
        format_table(
            result["results"],
            [
                ("impl", "impl", "{}"),
                ("fwd_ms", "fwd ms", "{:.1f}"),
                ("fwd_bwd_ms", "fwd+bwd ms", "{:.1f}"),
                ("fwd_bwd_range_ms", "fwd+bwd range", "{0[0]:.1f}-{0[1]:.1f}"),
                ("fwd_bwd_speedup", "fwd+bwd speed-up", "{:.2f}x"),
                ("fwd_peak_mb", "fwd peak MB", "{:.1f}"),
                ("fwd_bwd_peak_mb", "fwd+bwd peak MB", "{:.1f}"),
                ("fwd_bwd_memory_ratio", "fwd+bwd mem / baseline", "{:.2f}"),
                ("fwd_speedup", "fwd speed-up", "{:.2f}x"),
                ("max_abs_diff_vs_baseline", "max |out - baseline|", "{:.1e}"),
                ("fraction_of_bound", "of bound", "{:.0%}"),
            ],
        )
    )
    print(
        f"time: median (range) of {c['repeats']} after {c['warmup']} warm-up, implementations interleaved; peak "
        f"memory: {result['memory_method']}"
    )
    r = result["roofline"]
    print(
        f"roofline: {r['projection_gflop']:.1f} GFLOP of projections + {r['attention_gflop']:.1f} of attention per "
        f"forward+backward; this machine's {c['dtype']} matrix product runs at {r['gemm_gflops_per_s']:.0f} "
        f"GFLOP/s, so no implementation can take less than {r['bound_ms']:.1f} ms ('of bound': that floor / the "
        "measured time)"
    )
    for impl, reason in result["skipped"].items():
        print(f"skipped {impl}: {reason}")
