"""Does this install work on this machine (``python tools/selfcheck.py``): the attention implementations
against the reference on odd shapes, training steps in every precision and under ``torch.compile``,
SyncBatchNorm, a sliding-window evaluation and the attention benchmark, each as a ``pass`` / ``fail`` /
``skip`` row; on CUDA also the performance targets as ``met`` / ``missed`` rows (a miss is not a failure).
``ccnet_r101_official`` at 769x769 on a GPU, ``ccnet_tiny`` at small sizes on a CPU (docs/performance.md).
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch
from torch import nn

from ccnet.apps.benchmarks.common import format_table, machine_info, peak_memory, time_call
from ccnet.apps.benchmarks.model import compose_model_config, config_paths
from ccnet.apps.benchmarks.train import training_step
from ccnet.evaluation.inference import InferenceSettings, predict_logits
from ccnet.models import build_model
from ccnet.models.cca import TRITON_INSTALLED, criss_cross_attention
from ccnet.utils.manifest import OutputFiles

# (batch, channels, height, width): H = 1, W = 1, H != W, batch > 1, channels not a multiple of 16
ODD_SHAPES = ((1, 24, 1, 7), (2, 40, 6, 1), (2, 40, 7, 5), (3, 72, 9, 13))
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 1e-2}  # relative to the largest value
TARGETS = {"triton_speedup": 3.0, "triton_memory": 0.3, "bf16_cl_speedup": 1.8, "fp32_peak_gb": 10.7}
TOOL = "selfcheck"  # the name its reports are recorded under in the manifest.txt of their folder


@dataclass
class Row:
    """One line of the report."""

    check: str
    status: str  # pass | fail | skip | met | missed
    detail: str = ""
    seconds: float = 0.0
    values: Dict[str, Any] = field(default_factory=dict)


class Report:
    """Runs checks, keeps their rows; a check that raises is a failure with the error's first line."""

    def __init__(self, printer: Callable[[str], None] = print) -> None:
        self.rows: List[Row] = []
        self.printer = printer

    def run(self, name: str, fn: Callable[[], Row]) -> None:
        start = time.perf_counter()
        try:
            row = fn()
        except Exception as exc:  # a failing check must not stop the others
            detail = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            row = Row(name, "fail", detail, values={"traceback": traceback.format_exc()[-2000:]})
        row.check, row.seconds = name, round(time.perf_counter() - start, 2)
        self.rows.append(row)
        self.printer(f"[{row.status:>6}] {name}: {row.detail} ({row.seconds:.1f} s)")

    @property
    def failed(self) -> List[Row]:
        return [r for r in self.rows if r.status == "fail"]


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def check_attention(device: torch.device, implementation: str, dtype: torch.dtype) -> Row:
    """Output and q/k/v/gamma/x gradients of ``implementation`` against the reference in float32 (float64 on the
    CPU), on every odd shape.
    """
    ref_dtype = torch.float64 if device.type == "cpu" else torch.float32
    worst = 0.0
    for b, c, h, w in ODD_SHAPES:
        g = torch.Generator().manual_seed(b * 1000 + c + h + w)
        tensors = [torch.randn(*s, generator=g) for s in ((b, c // 8, h, w), (b, c // 8, h, w), (b, c, h, w))]
        tensors += [torch.tensor([0.7]), torch.randn(b, c, h, w, generator=g)]
        grad = torch.randn(b, c, h, w, generator=g)
        results = []
        for impl, dt in ((implementation, dtype), ("reference", ref_dtype)):
            inputs = [t.to(device=device, dtype=dt).requires_grad_() for t in tensors]
            q, k, v, gamma, residual = inputs
            out = criss_cross_attention(q, k, v, gamma, residual, implementation=impl)
            grads = torch.autograd.grad(out, inputs, grad.to(device=device, dtype=dt))
            results.append([out, *grads])
        errors = [_relative_error(mine, theirs) for mine, theirs in zip(*results)]
        worst = max(worst, *errors)
    ok = worst <= TOLERANCE[dtype]
    return Row(
        "",
        "pass" if ok else "fail",
        f"largest relative error {worst:.1e} over {len(ODD_SHAPES)} shapes "
        f"(output and 5 gradients; tolerance {TOLERANCE[dtype]:.0e})",
        values={"max_rel_error": worst},
    )


def check_training(
    device: torch.device,
    cfg: Dict[str, Any],
    variant: str,
    size: tuple,
    batch: int,
    compile: bool = False,
    repeats: int = 3,
) -> Row:
    """Steps of ``variant``: finite losses, weights that moved, seconds per step and peak memory."""
    step, drop = training_step(cfg, device, variant, size, batch, num_classes=19, compile=compile)
    first = step()  # compiles, autotunes, allocates
    drop()
    timing = time_call(step, device, warmup=1, repeats=repeats, setup=drop)
    peak, _ = peak_memory(step, device, setup=drop)
    last = step()
    drop()
    ok = bool(torch.isfinite(first)) and bool(torch.isfinite(last))
    seconds = timing["median_ms"] / 1e3
    return Row(
        "",
        "pass" if ok else "fail",
        f"{seconds:.3f} s/step, peak {peak / 2**20:.0f} MiB, loss {float(first):.3f} -> {float(last):.3f}",
        values={"step_s": seconds, "peak_gib": peak / 2**30, "first_loss": float(first), "loss": float(last)},
    )


def check_sync_batchnorm(device: torch.device, cfg: Dict[str, Any], size: tuple) -> Row:
    """SyncBatchNorm conversion on a one-process group; a training step on GPUs (the only place it runs), an
    evaluation forward elsewhere.
    """
    import torch.distributed as dist

    created = not dist.is_initialized()
    if created:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(29400 + os.getpid() % 1000))
        if device.type == "cuda":
            dist.init_process_group(
                "nccl",
                rank=0,
                world_size=1,
                device_id=torch.device("cuda", device.index or torch.cuda.current_device()),
            )
        else:
            dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(build_model(cfg, pretrained=False)).to(device)
        converted = sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
        x = torch.randn(2, 3, *size, device=device)
        if device.type == "cuda":
            out = model.train()(x)
            loss = out["out"].float().logsumexp(1).mean() + out["aux"].float().logsumexp(1).mean()
            loss.backward()
            detail = f"{converted} layers converted; training step on a one-process {dist.get_backend()} group"
        else:
            with torch.no_grad():
                loss = model.eval()(x)["out"].float().mean()
            detail = f"{converted} layers converted; evaluation forward (SyncBatchNorm trains on GPUs only)"
        ok = converted > 0 and bool(torch.isfinite(loss))
        return Row("", "pass" if ok else "fail", detail, values={"converted": converted})
    finally:
        if created:
            dist.destroy_process_group()


def check_slide_evaluation(device: torch.device, cfg: Dict[str, Any], image: tuple, window: int, stride: int) -> Row:
    """Sliding windows over a whole image: finite logits of the image's size, time and peak memory."""
    model = build_model(cfg, pretrained=False).to(device).eval()
    settings = InferenceSettings(mode="slide", crop_size=(window, window), stride=(stride, stride))
    x = torch.randn(1, 3, *image, device=device)
    with torch.no_grad():
        logits = predict_logits(model, x, settings)
        timing = time_call(lambda: predict_logits(model, x, settings), device, warmup=0, repeats=1)
        peak, _ = peak_memory(lambda: predict_logits(model, x, settings), device)
    ok = logits.shape[-2:] == x.shape[-2:] and bool(torch.isfinite(logits).all())
    return Row(
        "",
        "pass" if ok else "fail",
        f"{image[0]}x{image[1]} in {window}x{window} windows (stride {stride}): "
        f"{timing['median_ms'] / 1e3:.2f} s, peak {peak / 2**20:.0f} MiB",
        values={"seconds": timing["median_ms"] / 1e3, "peak_gib": peak / 2**30},
    )


def check_attention_benchmark(device: torch.device, shape: tuple, dtype: str, impls: List[str]) -> Row:
    """``tools/benchmark.py cca`` on this device: each implementation's speed-up and memory ratio against the
    widely copied formulation.
    """
    import argparse

    from ccnet.apps.benchmarks import cca

    parser = argparse.ArgumentParser()
    cca.add_arguments(parser)
    b, c, h, w = shape
    args = parser.parse_args(
        [
            "--device",
            str(device),
            "--batch",
            str(b),
            "--channels",
            str(c),
            "--height",
            str(h),
            "--width",
            str(w),
            "--dtype",
            dtype,
            "--channels-last",
            "--repeats",
            "5",
            "--force",
            "--impls",
            *impls,
        ]
    )
    result = cca.run(args)
    rows = {r["impl"]: r for r in result["results"]}
    detail = ", ".join(
        f"{name} {r['fwd_bwd_speedup']:.2f}x speed / {r['fwd_bwd_memory_ratio']:.2f}x memory"
        for name, r in rows.items()
        if name != "baseline"
    )
    return Row("", "pass", detail, values={"results": result["results"], "roofline": result["roofline"]})


def run_selfcheck(device: torch.device, compile_on_cpu: bool = False, printer: Callable[[str], None] = print) -> Report:
    """All checks for ``device``; a failing check does not stop the others."""
    report = Report(printer)
    cuda = device.type == "cuda"
    name = "ccnet_r101_official" if cuda else "ccnet_tiny"
    cfg = compose_model_config(config_paths([name])[0], num_classes=19)
    if not cuda:  # seconds on a CPU: the narrow tiny model of the tests
        cfg.update(tiny_widths=[8, 16, 32], head_channels=16, bottleneck_channels=16, aux_channels=8)
    size, batch = ((769, 769), 2) if cuda else ((64, 64), 2)

    impls = ["reference", "lean"] + (["triton"] if cuda and TRITON_INSTALLED else [])
    dtypes = [torch.float32, torch.bfloat16, torch.float16] if cuda else [torch.float32]
    for impl in impls:
        for dtype in dtypes if impl != "reference" else [torch.float32]:
            report.run(f"attention {impl} {str(dtype)[6:]}", functools.partial(check_attention, device, impl, dtype))
    if cuda and not TRITON_INSTALLED:
        report.rows.append(Row("attention triton", "skip", "Triton is not installed"))

    for variant in ("fp32", "bf16", "bf16+cl", "fp16"):
        report.run(
            f"train {name} {size[0]}x{size[1]} b{batch} {variant}",
            functools.partial(check_training, device, cfg, variant, size, batch),
        )
    if cuda or compile_on_cpu:
        report.run(
            f"train {name} {size[0]}x{size[1]} b{batch} bf16+cl torch.compile",
            lambda: check_training(device, cfg, "bf16+cl", size, batch, compile=True),
        )
    else:
        report.rows.append(Row("train torch.compile", "skip", "CPU: pass --compile (a minute of compilation)"))
    report.run("SyncBatchNorm, one-process group", lambda: check_sync_batchnorm(device, cfg, (65, 65)))
    image, window, stride = ((1024, 2048), 769, 513) if cuda else ((96, 160), 64, 48)
    report.run("slide evaluation", lambda: check_slide_evaluation(device, cfg, image, window, stride))
    bench_shape = (2, 512, 97, 97) if cuda else (1, 64, 17, 13)
    report.run(
        "attention benchmark",
        lambda: check_attention_benchmark(device, bench_shape, "bfloat16" if cuda else "float32", impls),
    )
    if cuda:
        _targets(report)
    return report


def _targets(report: Report) -> None:
    """The performance targets of docs/performance.md, from the rows just measured."""
    rows = {r.check: r for r in report.rows}
    bench = rows.get("attention benchmark")
    if bench and bench.status == "pass":
        triton = next((r for r in bench.values["results"] if r["impl"] == "triton"), None)
        if triton:
            met = (
                triton["fwd_bwd_speedup"] >= TARGETS["triton_speedup"]
                and triton["fwd_bwd_memory_ratio"] <= TARGETS["triton_memory"]
            )
            report.rows.append(
                Row(
                    "target: Triton attention >= 3x faster, <= 0.3x memory",
                    "met" if met else "missed",
                    f"{triton['fwd_bwd_speedup']:.2f}x, {triton['fwd_bwd_memory_ratio']:.2f}x memory",
                )
            )
    fp32 = next((r for k, r in rows.items() if k.endswith(" fp32") and r.status == "pass"), None)
    bf16 = next((r for k, r in rows.items() if k.endswith(" bf16+cl") and r.status == "pass"), None)
    if fp32 and bf16:
        speedup = fp32.values["step_s"] / bf16.values["step_s"]
        report.rows.append(
            Row(
                "target: bf16 + channels-last step >= 1.8x fp32",
                "met" if speedup >= 1.8 else "missed",
                f"{speedup:.2f}x",
            )
        )
        gib = fp32.values["peak_gib"] * 2**30 / 1e9
        report.rows.append(
            Row(
                "target: fp32 peak < 10.7 GB (mmseg, R-101 769x769 batch 2)",
                "met" if gib < TARGETS["fp32_peak_gb"] else "missed",
                f"{gib:.2f} GB",
            )
        )


def report_output(path: Path) -> OutputFiles:
    """The report's file, checked: it may replace only a report an earlier self-check wrote there.

    Raises:
        OutputConflictError: ``path`` holds a file no self-check wrote (``--out`` names the option).
    """
    output = OutputFiles(TOOL, {"--out": path})
    output.check()
    return output


def write_report(report: Report, device: torch.device, path: Path) -> Dict[str, Any]:
    """The report as JSON (machine, date, every row with its values), recorded in its folder's manifest.

    Raises:
        OutputConflictError: see :func:`report_output` (check it before the checks run, too).
    """
    output = report_output(path)
    payload = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "passed": not report.failed,
        "rows": [asdict(r) for r in report.rows],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    output.record(path)
    return payload


def format_report(report: Report) -> str:
    return format_table(
        [asdict(r) for r in report.rows],
        [("check", "check", "{}"), ("status", "status", "{}"), ("seconds", "s", "{:.1f}"), ("detail", "detail", "{}")],
    )
