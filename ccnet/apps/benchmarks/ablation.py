"""Summary of the recurrence ablation (CCNet, arXiv 1811.11721, Sec. 4.3, Tables 3 and 5).

Reads every run under a root (``config.yaml`` + ``metrics.jsonl``, from ``scripts/ablation_recurrence.sh``),
groups them by (context, R) and prints a markdown table: final val mIoU (mean ± std over seeds), on the
synthetic set the one-hop (aligned) and two-hop (diagonal) shape accuracy of each last checkpoint, the
head's and the context module's GFLOPs and the head's peak memory (reference attention), and the training
time. The table goes to ``ROOT/summary.md``, the rows to ``ROOT/summary.json``; columns explained in
docs/reproducing.md#the-recurrence-ablation-on-a-cpu.

    python tools/benchmark.py ablation work_dirs/ablation_recurrence [--table table.md] [--feature-size 97 97]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, cast

import torch
from omegaconf import OmegaConf

from ccnet.apps.benchmarks.common import count_flops, peak_memory
from ccnet.errors import ConfigError
from ccnet.models.cca import use_implementation
from ccnet.utils.manifest import OutputConflictError, OutputFiles

log = logging.getLogger(__name__)

OUTPUT_STRIDE = 8  # every CCNet backbone here; the head runs at 1/8 of the input
TOOL = "ablation"  # the name its table is recorded under in the manifest.txt of the table's folder


@dataclass
class Run:
    """One finished training run of the sweep."""

    path: Path
    config: Dict[str, Any]
    final: Dict[str, Any]

    @property
    def context(self) -> str:
        return str(self.config["model"].get("context", "rcca"))

    @property
    def recurrence(self) -> int:
        # Only the criss-cross head has loops; other contexts share one row whatever recurrence says.
        return int(self.config["model"].get("recurrence", 2)) if self.context == "rcca" else 0


@dataclass
class Row:
    """Aggregated numbers of one (context, R) group."""

    context: str
    recurrence: int
    runs: List[Run]
    miou: List[float] = field(default_factory=list)
    one_hop: List[float] = field(default_factory=list)
    two_hop: List[float] = field(default_factory=list)
    train_time: List[float] = field(default_factory=list)
    gflops: Optional[float] = None
    context_gflops: Optional[float] = None
    peak_mib: Optional[float] = None


def find_runs(root: Path) -> List[Run]:
    """Every run directory below ``root`` with a ``config.yaml`` and a non-empty ``metrics.jsonl``.

    Raises:
        FileNotFoundError: ``root`` does not exist or holds no finished run.
    """
    if not root.is_dir():
        raise FileNotFoundError(
            f"ablation root {root} does not exist; run scripts/ablation_recurrence.sh first "
            f"(OUT=... sets where it writes)"
        )
    runs = []
    for metrics in sorted(root.rglob("metrics.jsonl")):
        config_path = metrics.parent / "config.yaml"
        lines = [line for line in metrics.read_text().splitlines() if line.strip()]
        if not lines or not config_path.is_file():
            log.warning("skipping %s: no validation record or no config.yaml (unfinished run?)", metrics.parent)
            continue
        config = cast(Dict[str, Any], OmegaConf.to_container(OmegaConf.load(config_path), resolve=True))
        runs.append(Run(metrics.parent, config, json.loads(lines[-1])))
    if not runs:
        raise FileNotFoundError(f"no finished runs (config.yaml + metrics.jsonl) below {root}")
    return runs


def head_cost(model_cfg: Mapping[str, Any], feature_size: Tuple[int, int]) -> Tuple[float, float]:
    """GFLOPs and peak activation memory (MiB) of the context head on one feature map (inference).

    Args:
        model_cfg: the run's ``model`` config (``num_classes`` resolved); weights are not loaded.
        feature_size: (h, w) of the backbone output, i.e. the input size / 8.

    Returns:
        ``(gflops, peak_mib)``.
    """
    from ccnet.models import build_model

    model = build_model(model_cfg, pretrained=False).eval()
    channels = model.backbone.out_channels["layer4"]
    x = torch.randn(1, channels, *feature_size)
    with use_implementation("reference"), torch.no_grad():
        flops = count_flops(lambda: model.head(x))
        peak, _ = peak_memory(lambda: model.head(x), torch.device("cpu"))
    return flops / 1e9, peak / 2**20


def _feature_size(config: Mapping[str, Any]) -> Tuple[int, int]:
    from ccnet.data import train_input_size

    size = train_input_size(config["dataset"], config.get("train", {}).get("crop_size"))
    if size is None:
        raise ConfigError(
            "cannot tell the training input size from the run's config (train.crop_size, "
            "dataset.crop_size, dataset.image_size are all unset); pass --feature-size H W"
        )
    return math.ceil(size[0] / OUTPUT_STRIDE), math.ceil(size[1] / OUTPUT_STRIDE)


@torch.no_grad()
def long_range_accuracy(run: Run, batch_size: int = 16) -> Optional[Tuple[float, float]]:
    """``(one-hop, two-hop)`` pixel accuracy of the run's last checkpoint on the synthetic validation set's
    aligned and diagonal shapes (:func:`ccnet.data.synthetic.region_masks`); None for other datasets or
    without a checkpoint.
    """
    if run.config["dataset"].get("name") != "synthetic":
        return None
    checkpoint_path = run.path / "checkpoints" / "last.pth"
    if not checkpoint_path.is_file():
        log.warning("%s: no checkpoints/last.pth, long-range accuracy left out", run.path)
        return None
    from ccnet.data.synthetic import build_synthetic
    from ccnet.evaluation.loading import load_checkpoint_for_eval, load_model

    checkpoint, _ = load_checkpoint_for_eval(checkpoint_path)
    model = load_model(run.config["model"], checkpoint, checkpoint_path, torch.device("cpu"))
    dataset = build_synthetic(run.config["dataset"], "val")
    hits = {"one": 0, "two": 0}
    totals = {"one": 0, "two": 0}
    for start in range(0, len(dataset), batch_size):
        indices = range(start, min(start + batch_size, len(dataset)))
        images, labels = zip(*(dataset[i] for i in indices))
        correct = model(torch.stack(images))["out"].argmax(1) == torch.stack(labels)  # (B, H, W)
        for j, index in enumerate(indices):
            long_range, two_hop = dataset.region_masks(index)
            for name, mask in (("one", long_range & ~two_hop), ("two", two_hop)):
                mask = torch.from_numpy(mask)
                hits[name] += int(correct[j][mask].sum())
                totals[name] += int(mask.sum())
    return hits["one"] / max(totals["one"], 1), hits["two"] / max(totals["two"], 1)


def summarize(
    runs: Sequence[Run], feature_size: Optional[Tuple[int, int]] = None, evaluate_regions: bool = True
) -> List[Row]:
    """Group runs by (context, R) and fill in every column; rows ordered none, R=1.., non-local."""
    groups: Dict[Tuple[str, int], Row] = {}
    for run in runs:
        row = groups.setdefault((run.context, run.recurrence), Row(run.context, run.recurrence, []))
        row.runs.append(run)
        row.miou.append(float(run.final["val/mIoU"]))
        row.train_time.append(float(run.final.get("train_time_s", float("nan"))))
        accuracy = long_range_accuracy(run) if evaluate_regions else None
        if accuracy is not None:
            row.one_hop.append(accuracy[0])
            row.two_hop.append(accuracy[1])
    baselines: Dict[str, Tuple[float, float]] = {}  # the same head without context, measured once per model
    for row in groups.values():
        size = feature_size or _feature_size(row.runs[0].config)
        model_cfg = row.runs[0].config["model"]
        plain = {**model_cfg, "context": "none", "recurrence": 0}
        key = json.dumps([plain, size], sort_keys=True, default=str)
        if key not in baselines:
            baselines[key] = head_cost(plain, size)
        row.gflops, row.peak_mib = baselines[key] if row.context == "none" else head_cost(model_cfg, size)
        row.context_gflops = row.gflops - baselines[key][0]
    order = {"none": 0, "rcca": 1, "nonlocal": 2}
    return sorted(groups.values(), key=lambda r: (order.get(r.context, 3), r.context, r.recurrence))


def _mean_std(values: Sequence[float], digits: int = 3) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def markdown_table(rows: Sequence[Row]) -> str:
    """The summary as a markdown table (one line per (context, R))."""
    lines = [
        "| context | R | seeds | val mIoU | one-hop acc | two-hop acc | head GFLOPs | context GFLOPs "
        "| head peak MiB | train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        times = [t for t in row.train_time if not math.isnan(t)]
        lines.append(
            f"| {row.context} | {row.recurrence if row.context == 'rcca' else '–'} | {len(row.runs)} | "
            f"{_mean_std(row.miou)} | {_mean_std(row.one_hop)} | {_mean_std(row.two_hop)} | "
            f"{row.gflops:.3f} | {row.context_gflops:.4f} | {row.peak_mib:.1f} | "
            f"{f'{statistics.mean(times):.0f}' if times else '–'} |"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``ablation`` benchmark (``tools/benchmark.py ablation ROOT``)."""
    parser.add_argument("root", type=Path, help="folder holding the sweep's run directories")
    parser.add_argument(
        "--table",
        type=Path,
        default=None,
        help="markdown file (default ROOT/summary.md; never over a file no earlier summary wrote)",
    )
    parser.add_argument(
        "--feature-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="head input size for GFLOPs/memory (default: training crop / 8)",
    )
    parser.add_argument(
        "--no-regions",
        action="store_true",
        help="skip the long-range accuracy (which re-runs each synthetic checkpoint)",
    )


def default_out(args: argparse.Namespace) -> Path:
    """Where ``tools/benchmark.py`` writes the JSON rows when ``--out`` is not given: beside the runs."""
    return Path(args.root) / "summary.json"


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Print the table, write it as markdown; returns the rows for the JSON file.

    Raises:
        FileNotFoundError: no finished run under ``args.root``.
        OutputConflictError: the table's path is a run's file, the JSON's (``--out``), or a file no
            earlier summary wrote; nothing is written.
    """
    runs = find_runs(args.root)
    out = Path(args.table or Path(args.root) / "summary.md")
    json_out = getattr(args, "out", None) or default_out(args)
    if out.resolve() == Path(json_out).resolve():
        raise OutputConflictError(
            f"--table and --out both name {out}: the table and the JSON rows need a file each. "
            "Nothing was written; give them different paths"
        )
    output = OutputFiles(TOOL, {"--table": out})
    output.check(
        inputs=[run.path / name for run in runs for name in ("config.yaml", "metrics.jsonl", "checkpoints/last.pth")]
    )
    rows = summarize(
        runs, tuple(args.feature_size) if args.feature_size else None, evaluate_regions=not args.no_regions
    )
    table = markdown_table(rows)
    print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n")
    output.record(out)
    print(f"\nwritten to {out}")
    return {
        "benchmark": "ablation",
        "root": str(args.root),
        "rows": [
            {
                "context": r.context,
                "recurrence": r.recurrence,
                "runs": [str(x.path) for x in r.runs],
                "val/mIoU": r.miou,
                "one_hop_acc": r.one_hop,
                "two_hop_acc": r.two_hop,
                "train_time_s": r.train_time,
                "head_gflops": r.gflops,
                "context_gflops": r.context_gflops,
                "head_peak_mib": r.peak_mib,
            }
            for r in rows
        ],
    }
