"""Rehearse the paper's presets end to end on generated data in the real layouts, at the real sizes.

For each preset :func:`rehearse` writes a few full-size images in the dataset's layout
(:mod:`ccnet.apps.layouts`), runs ``tools/train.py experiment=<preset>`` in a child process changing only
``dataset.root``, ``model.weights=null`` and the iteration count, reads back ``train.log``,
``metrics.jsonl`` and ``last.pth`` and measures the child's peak RSS (``wait4``). Everything it writes or
removes is claimed in ``<out-dir>/manifest.txt`` first; a file no rehearsal wrote refuses the run
(docs/performance.md#paper-presets-at-their-real-sizes).
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, cast

from ccnet.apps.layouts import (
    ade20k_layout_files,
    cityscapes_layout_files,
    write_ade20k_layout,
    write_cityscapes_layout,
)
from ccnet.utils.manifest import OutputManifest
from ccnet.utils.paths import REPO_ROOT

REPO = REPO_ROOT
TRAIN_SCRIPT = REPO / "tools" / "train.py"
TOOL = "rehearse"  # the name its files are recorded under in <out-dir>/manifest.txt
REPORT = "rehearsal.json"  # written by tools/rehearse_presets.py into <out-dir>

# preset -> (dataset layout, images per split)
PRESETS: Dict[str, tuple] = {
    "cityscapes_r101_official": ("cityscapes", {"train": 2, "val": 1}),
    "cityscapes_r101_769_80k": ("cityscapes", {"train": 2, "val": 1}),
    "ade20k_r101_512_80k": ("ade20k", {"training": 2, "validation": 1}),
}
_STEP_LINE = re.compile(r"iter (\d+)/(\d+) .* ([0-9.e+-]+) s/iter")


@dataclass
class Rehearsal:
    """What one preset's rehearsal did and measured."""

    preset: str
    status: str  # pass | fail
    detail: str = ""
    iterations: int = 0
    batch_size: int = 0
    crop_size: List[int] = field(default_factory=list)
    eval_protocol: str = ""
    step_s: List[float] = field(default_factory=list)  # seconds of each training step (log_interval=1)
    val_images: int = 0
    val_time_s: float = float("nan")
    val_miou: float = float("nan")
    peak_rss_gib: float = float("nan")
    wall_s: float = float("nan")
    command: str = ""


def write_layout(preset: str, root: Path, seed: int = 0, record: Optional[Callable[[Path], None]] = None) -> Path:
    """The generated dataset a preset needs, under ``root`` (``record`` is called with each file written);
    returns the ``dataset.root`` to pass.
    """
    if preset not in PRESETS:
        raise KeyError(f"unknown preset {preset!r}; rehearsable presets: {', '.join(PRESETS)}")
    layout, counts = PRESETS[preset]
    write = write_cityscapes_layout if layout == "cityscapes" else write_ade20k_layout
    write(root, counts, seed=seed, record=record)
    return root


def layout_files(preset: str, root: Path) -> List[Path]:
    """The files :func:`write_layout` writes for ``preset`` under ``root``."""
    layout, counts = PRESETS[preset]
    pairs = cityscapes_layout_files(root, counts) if layout == "cityscapes" else ade20k_layout_files(root, counts)
    return [path for pair in pairs for path in pair]


def _files_below(folder: Path) -> List[Path]:
    """Every entry under ``folder`` that is not a folder of its own: files, and symlinks (also to folders)."""
    found: List[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):  # does not descend into symlinked folders
        found += [Path(dirpath) / name for name in filenames]
        found += [Path(dirpath) / name for name in dirnames if os.path.islink(os.path.join(dirpath, name))]
    return sorted(found)


def preset_outputs(preset: str, out_dir: Path) -> List[Path]:
    """What a rehearsal of ``preset`` into ``out_dir`` writes or replaces: the generated images, ``console.log``,
    and every file an earlier rehearsal left in the run folder (removed first).
    """
    base = Path(out_dir) / preset
    return [*layout_files(preset, base / "data"), base / "console.log", *_files_below(base / "run")]


def _remove_run(work_dir: Path, files: Sequence[Path]) -> None:
    """Delete an earlier rehearsal's run folder: ``files`` (all recorded as a rehearsal's), then empty folders."""
    for path in files:
        path.unlink()
    for dirpath, _, _ in sorted(os.walk(work_dir), key=lambda entry: len(entry[0]), reverse=True):
        os.rmdir(dirpath)  # fails (and stops the rehearsal) if anything unclaimed appeared meanwhile


def _record_run(manifest: OutputManifest, work_dir: Path) -> None:
    """Record the regular files the child wrote into ``work_dir`` as this rehearsal's."""
    for path in _files_below(work_dir) if work_dir.is_dir() else []:
        if stat.S_ISREG(os.lstat(path).st_mode):
            manifest.record(path)


def train_command(
    preset: str,
    data_root: Path,
    work_dir: Path,
    iterations: int,
    batch_size: Optional[int],
    device: str,
    threads: Optional[int],
    extra: Sequence[str] = (),
) -> List[str]:
    """The ``tools/train.py`` command line of a rehearsal."""
    command = [
        sys.executable,
        str(TRAIN_SCRIPT),
        f"experiment={preset}",
        f"dataset.root={data_root}",
        "model.weights=null",
        f"train.max_iters={iterations}",
        "train.eval_interval=0",
        f"train.checkpoint_interval={iterations}",
        "train.log_interval=1",
        "train.num_workers=0",
        "eval.num_workers=0",
        f"train.device={device}",
        f"train.cpu_threads={threads or 'null'}",
        f"work_dir={work_dir}",
    ]
    if batch_size is not None:
        command.append(f"train.batch_size={batch_size}")
    return command + list(extra)


def _run_measured(
    command: List[str], log_path: Path, timeout_s: float, record: Optional[Callable[[Path], None]] = None
) -> tuple:
    """Run ``command`` with its console in ``log_path`` (``record`` is called with it once created), killed after
    ``timeout_s``; returns (exit status or None when killed, peak RSS in GiB, seconds).
    """
    start, killed = time.perf_counter(), threading.Event()

    def kill() -> None:
        killed.set()
        os.kill(child.pid, signal.SIGKILL)

    with log_path.open("w") as console:
        if record is not None:
            record(log_path)
        child = subprocess.Popen(
            command, stdout=console, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        timer = threading.Timer(timeout_s, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(child.pid, 0)  # the child's own peak RSS, not this process's
        finally:
            timer.cancel()
        child.returncode = os.waitstatus_to_exitcode(status)
    peak_gib = usage.ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux
    return None if killed.is_set() else child.returncode, peak_gib, time.perf_counter() - start


def rehearse(
    preset: str,
    out_dir: Path,
    iterations: int = 2,
    batch_size: Optional[int] = None,
    device: str = "cpu",
    threads: Optional[int] = None,
    timeout_s: float = 1800.0,
    extra: Sequence[str] = (),
) -> Rehearsal:
    """Generate the data, run the preset for ``iterations`` steps and its validation, check the results.

    Args:
        preset: a key of :data:`PRESETS`.
        out_dir: gets ``<preset>/data``, ``<preset>/run`` (the work dir) and ``<preset>/console.log``, all
            recorded in ``out_dir/manifest.txt``; an earlier rehearsal's run folder there is removed first.
        iterations: training steps.
        batch_size: images per step; None = the preset's.
        device: ``train.device``.
        threads: ``train.cpu_threads``; None = one per core.
        timeout_s: the run is killed (and fails) after this long.
        extra: more overrides for ``tools/train.py``.

    Raises:
        OutputConflictError: a file this rehearsal would write or remove is not a rehearsal's (the user's, or
            one an interrupted rehearsal's child left unrecorded); nothing is written.
    """
    out_dir = Path(out_dir).resolve()  # absolute: the run's working directory is the repository
    base = out_dir / preset
    data_root, work_dir, console = base / "data", base / "run", base / "console.log"
    manifest = OutputManifest(out_dir, TOOL)
    outputs = preset_outputs(preset, out_dir)
    manifest.claim(outputs, key="--out-dir")
    if work_dir.exists():
        _remove_run(work_dir, [p for p in outputs if work_dir in p.parents])
    base.mkdir(parents=True, exist_ok=True)
    write_layout(preset, data_root, record=manifest.record)
    command = train_command(preset, data_root, work_dir, iterations, batch_size, device, threads, extra)
    result = Rehearsal(preset, "fail", iterations=iterations, command=" ".join(command[1:]))
    try:
        code, result.peak_rss_gib, result.wall_s = _run_measured(command, console, timeout_s, manifest.record)
    finally:  # also after Ctrl-C: a later rehearsal may then remove what the child wrote
        _record_run(manifest, work_dir)
    if code is None:
        result.detail = f"killed after {timeout_s:.0f} s (console: {console})"
        return result
    if code != 0:
        tail = console.read_text(errors="replace").strip().splitlines()[-3:]
        result.detail = f"tools/train.py exited with {code} (console: {console}): " + " | ".join(tail)[-600:]
        return result
    _read_run(result, work_dir)
    return result


def _read_run(result: Rehearsal, work_dir: Path) -> None:
    """Fill ``result`` from the run's files; a missing or wrong file fails it."""
    config = _load_yaml(work_dir / "config.yaml")
    train, evaluation = config["train"], config["eval"]
    result.batch_size, result.crop_size = int(train["batch_size"]), list(train["crop_size"])
    if evaluation["mode"] == "slide":
        result.eval_protocol = f"slide {evaluation['crop_size']} stride {evaluation['stride']}"
    else:
        result.eval_protocol = f"whole, test_size {evaluation['test_size']}"
    steps = [(int(m[1]), float(m[3])) for m in _STEP_LINE.finditer((work_dir / "train.log").read_text())]
    result.step_s = [seconds for _, seconds in steps]
    records = [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    problems = []
    if [it for it, _ in steps] != list(range(1, result.iterations + 1)):
        problems.append(f"train.log has step lines {[it for it, _ in steps]}, expected 1..{result.iterations}")
    if len(records) != 1 or records[0].get("iteration") != result.iterations:
        problems.append(
            f"metrics.jsonl holds {len(records)} validation records, expected one at iteration {result.iterations}"
        )
    else:
        result.val_time_s, result.val_miou = records[0]["val_time_s"], records[0]["val/mIoU"]
        if not isinstance(result.val_miou, float) or not 0.0 <= result.val_miou <= 1.0:
            problems.append(f"val/mIoU is {result.val_miou!r}, expected a number in [0, 1]")
    if not (work_dir / "checkpoints" / "last.pth").is_file():
        problems.append("no checkpoints/last.pth")
    result.val_images = PRESETS[result.preset][1].get(config["dataset"]["val_split"], 0)
    result.status = "fail" if problems else "pass"
    result.detail = "; ".join(problems) or "trained, validated, saved"


def _load_yaml(path: Path) -> Dict[str, Any]:
    from omegaconf import OmegaConf

    return cast(Dict[str, Any], OmegaConf.to_container(OmegaConf.load(path), resolve=True))


def as_json(results: Sequence[Rehearsal], machine: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "machine": machine,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "rehearsals": [asdict(r) for r in results],
    }


def format_rehearsals(results: Sequence[Rehearsal]) -> str:
    """The table ``tools/rehearse_presets.py`` prints."""
    from ccnet.apps.benchmarks.common import format_table

    rows = [
        {
            **asdict(r),
            "crop": "x".join(map(str, r.crop_size)) or None,
            "first_s": r.step_s[0] if r.step_s else None,
            "next_s": r.step_s[-1] if len(r.step_s) > 1 else None,
        }
        for r in results
    ]
    return format_table(
        rows,
        [
            ("preset", "preset", "{}"),
            ("status", "status", "{}"),
            ("crop", "crop", "{}"),
            ("batch_size", "batch", "{}"),
            ("first_s", "step 1 s", "{:.1f}"),
            ("next_s", "last step s", "{:.1f}"),
            ("eval_protocol", "validation", "{}"),
            ("val_time_s", "val s", "{:.1f}"),
            ("peak_rss_gib", "peak RSS GiB", "{:.2f}"),
            ("wall_s", "wall s", "{:.0f}"),
        ],
    )
