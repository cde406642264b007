"""``tools/benchmark.py model``: parameters, GFLOPs and inference latency of every ``configs/model/*.yaml``,
built with ``num_classes`` (default 19) and random weights. GFLOPs of one eval forward from
``FlopCounterMode`` on the meta device; latency the median eval forward at batch 1.

    python tools/benchmark.py model --size 769 --threads 2
"""

from __future__ import annotations

import argparse
import functools
import logging
from pathlib import Path
from typing import Any, Dict, List, Tuple, cast

import torch
from omegaconf import OmegaConf

from ccnet.apps.benchmarks.common import (
    DTYPES,
    add_device_arguments,
    apply_threads,
    check_machine_load,
    count_flops,
    describe_machine,
    format_table,
    machine_info,
    resolve_device,
    size_hw,
    time_call,
)
from ccnet.models import build_model
from ccnet.utils.paths import CONFIGS_DIR

log = logging.getLogger(__name__)

MODEL_CONFIGS = CONFIGS_DIR / "model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``model`` benchmark."""
    parser.add_argument(
        "--configs",
        nargs="+",
        default=None,
        help=f"model config names or .yaml paths (default: every file in {MODEL_CONFIGS})",
    )
    parser.add_argument(
        "--size", type=int, nargs="+", default=[769], metavar="H [W]", help="input size, H [W] (default 769: 769x769)"
    )
    parser.add_argument("--num-classes", type=int, default=19, help="classes of the composed configs (default 19)")
    parser.add_argument(
        "--dtype",
        choices=tuple(DTYPES),
        default="float32",
        help="latency under autocast in this dtype (float32: no autocast)",
    )
    parser.add_argument("--channels-last", action="store_true", help="channels_last model and input for latency")
    parser.add_argument(
        "--latency",
        action="store_true",
        help="also time real forward passes (without it: parameters and GFLOPs on meta tensors only, "
        "no memory or compute)",
    )
    add_device_arguments(parser, warmup=1, repeats=3)


def config_paths(names: List[str] | None) -> List[Path]:
    """Model config files by name (``ccnet_r101``) or path; all of ``configs/model/`` for ``None``."""
    if names is None:
        paths = sorted(MODEL_CONFIGS.glob("*.yaml"))
        if not paths:
            raise FileNotFoundError(f"no model configs found in {MODEL_CONFIGS}")
        return paths
    paths = []
    for name in names:
        path = Path(name) if name.endswith((".yaml", ".yml")) else MODEL_CONFIGS / f"{name}.yaml"
        if not path.is_file():
            available = ", ".join(p.stem for p in sorted(MODEL_CONFIGS.glob("*.yaml")))
            raise FileNotFoundError(f"model config {name!r} not found at {path}; available: {available}")
        paths.append(path)
    return paths


def compose_model_config(path: Path, num_classes: int) -> Dict[str, Any]:
    """A ``configs/model/*.yaml`` file as a resolved plain dict, with ``num_classes`` set and no pretrained weights."""
    cfg = OmegaConf.load(path)
    cfg.num_classes = num_classes
    cfg.weights = None  # random weights: build_model(cfg, pretrained=False) needs no file and warns of nothing
    return cast(Dict[str, Any], OmegaConf.to_container(cfg, resolve=True))


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Run the benchmark, print its table and return the JSON-able result."""
    device = resolve_device(args.device, key="--device")
    load = check_machine_load(device, args.force) if args.latency else None
    apply_threads(args.threads)
    dtype = DTYPES[args.dtype]
    height, width = size_hw(args.size)
    rows: List[Dict[str, Any]] = []
    for path in config_paths(args.configs):
        cfg = compose_model_config(path, args.num_classes)
        with torch.device("meta"):
            meta_model = build_model(cfg, pretrained=False).eval()
            meta_input = torch.empty(1, 3, height, width)
        with torch.no_grad():
            flops = count_flops(functools.partial(meta_model, meta_input))
        recurrence = cfg.get("recurrence") if cfg.get("context", "rcca") == "rcca" else None
        row: Dict[str, Any] = {
            "config": path.stem,
            "context": cfg.get("context"),
            "recurrence": recurrence,
            "params_m": sum(p.numel() for p in meta_model.parameters()) / 1e6,
            "gflops": flops / 1e9,
            "latency_ms": None,
        }
        if args.latency:
            row["latency_ms"] = _latency(cfg, (height, width), args, device, dtype)
        log.info("model %s: %s", path.stem, row)
        rows.append(row)
    config = {
        "size": [height, width],
        "num_classes": args.num_classes,
        "dtype": args.dtype,
        "channels_last": args.channels_last,
        "warmup": args.warmup,
        "repeats": args.repeats,
    }
    result = {"benchmark": "model", "config": config, "machine": machine_info(device, load), "results": rows}
    _print(result)
    return result


def _latency(
    cfg: Dict[str, Any], size: Tuple[int, int], args: argparse.Namespace, device: torch.device, dtype: torch.dtype
) -> float:
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = build_model(cfg, pretrained=False).eval().to(device=device).to(memory_format=memory_format)
    images = torch.randn(1, 3, *size, device=device).contiguous(memory_format=memory_format)

    def forward() -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            model(images)

    return time_call(forward, device, args.warmup, args.repeats)["median_ms"]


def _print(result: Dict[str, Any]) -> None:
    c = result["config"]
    print(
        f"models at {c['size'][0]}x{c['size'][1]}, {c['num_classes']} classes, batch 1, eval mode; latency "
        f"{c['dtype']}{' channels_last' if c['channels_last'] else ''}"
    )
    print(f"machine: {describe_machine(result['machine'])}")
    print(
        format_table(
            result["results"],
            [
                ("config", "config", "{}"),
                ("context", "context", "{}"),
                ("recurrence", "R", "{}"),
                ("params_m", "params (M)", "{:.2f}"),
                ("gflops", "GFLOPs", "{:.1f}"),
                ("latency_ms", "latency ms", "{:.0f}"),
            ],
        )
    )
    print(f"latency: median of {c['repeats']} after {c['warmup']} warm-up; GFLOPs: FlopCounterMode, 2 per multiply-add")
