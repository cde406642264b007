"""Benchmarks: ``python tools/benchmark.py {cca,context,model,train,data,ablation} [options]``.

A thin command line over ``ccnet/apps/benchmarks/<name>.py``; each module adds its options
(``add_arguments(parser)``) and runs (``run(args) -> dict``, printing a table). The returned dict is
written as JSON to ``--out`` (default ``outputs/benchmarks/<name>.json`` in the repository, which git
ignores; the ablation summary: beside its runs), replacing only a file an earlier benchmark wrote
(recorded in the manifest.txt of its folder; checked before the benchmark runs). A user mistake (a bad
option, a busy machine, such a file) is one message with exit status 2. ``python tools/benchmark.py
<name> --help`` lists a benchmark's options; docs/performance.md has the commands behind its tables.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path
from typing import Dict, List, Optional

from ccnet.apps.benchmarks import TOOL
from ccnet.errors import exit_on_user_error
from ccnet.utils.manifest import OutputFiles

log = logging.getLogger("benchmark")
REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "outputs" / "benchmarks"

# name -> (module, one-line description)
BENCHMARKS: Dict[str, tuple] = {
    "cca": ("ccnet.apps.benchmarks.cca", "criss-cross attention: ours vs the widely copied formulation"),
    "context": ("ccnet.apps.benchmarks.context", "paper's efficiency table: GFLOPs/memory of RCCA R=1..3 vs non-local"),
    "model": ("ccnet.apps.benchmarks.model", "params, GFLOPs and latency of every configs/model/*.yaml"),
    "train": ("ccnet.apps.benchmarks.train", "training-step images/s and memory: fp32 vs AMP, channels_last"),
    "data": ("ccnet.apps.benchmarks.data", "data-loading pipeline images/s per DataLoader worker count"),
    "ablation": (
        "ccnet.apps.benchmarks.ablation",
        "summary table of a recurrence ablation sweep (scripts/ablation_recurrence.sh)",
    ),
}


def _load(name: str):
    module_name = BENCHMARKS[name][0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise  # the benchmark exists but one of its own imports is missing: show that error
        raise SystemExit(
            f"benchmark {name!r} is not available: {module_name} ({module_name.replace('.', '/')}.py) "
            f"is missing from this checkout"
        ) from exc


def build_parser(names: Optional[List[str]] = None) -> argparse.ArgumentParser:
    """The command line; ``names`` restricts which benchmark modules are imported for their options."""
    parser = argparse.ArgumentParser(
        prog="tools/benchmark.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="benchmark", required=True, metavar="{" + ",".join(BENCHMARKS) + "}")
    for name, (_, description) in BENCHMARKS.items():
        p = sub.add_parser(name, help=description, description=description)
        if names is None or name in names:
            _load(name).add_arguments(p)
        p.add_argument(
            "--out",
            type=Path,
            default=None,
            help=f"JSON result file (default {RESULTS_DIR.relative_to(REPO)}/{name}.json in the repository)",
        )
    return parser


def main(argv: Optional[List[str]] = None) -> Dict:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # only the chosen benchmark's module is imported (the others may need heavy or optional imports)
    chosen = [a for a in argv if a in BENCHMARKS][:1]
    args = build_parser(chosen or None).parse_args(argv)
    module = _load(args.benchmark)
    default_out = getattr(module, "default_out", None)  # a benchmark may keep its results beside its input
    out = args.out or (default_out(args) if default_out else RESULTS_DIR / f"{args.benchmark}.json")
    output = OutputFiles(TOOL, {"--out": out})
    # FileNotFoundError: a missing config or run folder, named in the message
    with exit_on_user_error(log, FileNotFoundError):
        output.check()  # before the benchmark: it may run for minutes
        result = module.run(args)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
        output.record(out)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
