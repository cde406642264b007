"""Recurrence ablation summary (tools/benchmark.py ablation): head cost against closed forms, the
benchmarks' memory meter, the summary table, its files never written over a file no summary wrote, and
scripts/ablation_recurrence.sh end to end in a CI-sized setting."""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import subprocess
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ccnet.apps.benchmarks.ablation import find_runs, head_cost, markdown_table, summarize
from ccnet.apps.benchmarks.common import peak_memory
from ccnet.utils.manifest import HEADER
from tools.benchmark import main as benchmark_main

NARROW = dict(num_classes=5, tiny_widths=[8, 16, 32], head_channels=16, bottleneck_channels=16, aux_channels=8)
TINY_RUN = [
    "dataset.image_size=64",
    "dataset.min_gap=16",
    "dataset.num_train=64",
    "dataset.num_val=2",
    "model.tiny_widths=[8,16,32]",
    "model.head_channels=16",
    "model.bottleneck_channels=16",
    "model.aux_channels=8",
    "train.max_iters=2",
    "train.batch_size=2",
    "train.device=cpu",
    "train.log_interval=1",
    "train.vis_images=0",
]


@pytest.fixture
def model_cfg(configs_dir: Path):
    def make(**changes) -> dict:
        cfg = OmegaConf.to_container(OmegaConf.load(configs_dir / "model" / "ccnet_tiny.yaml"))
        return {**cfg, **NARROW, **changes}

    return make


def test_peak_memory_counts_what_lives_at_once_on_the_cpu() -> None:
    """The profiler-based meter of every benchmark: 4 MiB and 8 MiB alive together peak at 12 MiB;
    the 2 MiB allocated after the first is freed do not raise the peak; memory from before the call
    is not counted."""
    before = torch.empty(1 << 20)  # 4 MiB outside the measurement

    def fn() -> None:
        a = torch.empty(1 << 20)  # 4 MiB
        b = torch.empty(2 << 20)  # 8 MiB: 12 MiB alive
        del a
        c = torch.empty(512 << 10)  # 2 MiB: 10 MiB alive
        del b, c

    peak, method = peak_memory(fn, torch.device("cpu"))
    assert peak == 12 << 20 and "profiler" in method
    del before


def test_head_flops_match_closed_forms(model_cfg) -> None:
    h, w = 6, 5
    cin, ci, cb, k = 32, 16, 16, 5  # layer4 channels, head channels, bottleneck channels, classes
    cq = ci // 8
    conv = lambda c_in, c_out, size: 2 * h * w * c_in * c_out * size * size  # noqa: E731
    base = conv(cin, ci, 3) + conv(ci, ci, 3) + conv(cin + ci, cb, 3) + conv(cb, k, 1)
    one_loop = conv(ci, cq, 1) * 2 + conv(ci, ci, 1) + 2 * h * w * (h + w) * (cq + ci)
    cn = ci // 2
    non_local = conv(ci, cn, 1) * 3 + conv(cn, ci, 1) + 2 * (h * w) ** 2 * cn * 2
    expected = {
        ("none", 0): base,
        ("rcca", 1): base + one_loop,
        ("rcca", 3): base + 3 * one_loop,
        ("nonlocal", 0): base + non_local,
    }
    for (context, recurrence), flops in expected.items():
        gflops, peak = head_cost(model_cfg(context=context, recurrence=recurrence), (h, w))
        assert gflops * 1e9 == pytest.approx(flops, rel=1e-9), (context, recurrence)
        assert peak > 0
    # Non-local keeps an (hw, hw) affinity alive; criss-cross only (hw, h + w).
    big = (24, 24)
    assert head_cost(model_cfg(context="nonlocal"), big)[1] > head_cost(model_cfg(recurrence=2), big)[1]


def _fake_run(root: Path, name: str, model: dict, miou: float, seconds: float) -> None:
    run = root / name
    run.mkdir(parents=True)
    OmegaConf.save(
        OmegaConf.create(
            {"model": model, "dataset": {"name": "synthetic", "image_size": 64}, "train": {"crop_size": None}}
        ),
        run / "config.yaml",
    )
    lines = [
        {"iteration": 5, "val/mIoU": 0.1, "train_time_s": 1.0},
        {"iteration": 10, "val/mIoU": miou, "train_time_s": seconds},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_summary_groups_seeds_in_paper_order(model_cfg, tmp_path: Path) -> None:
    _fake_run(tmp_path, "other/0", model_cfg(context="nonlocal"), 0.8, 30.0)
    _fake_run(tmp_path, "rcca/0", model_cfg(recurrence=2), 0.9, 20.0)
    _fake_run(tmp_path, "rcca/1", model_cfg(recurrence=1), 0.6, 12.0)
    _fake_run(tmp_path, "rcca/2", model_cfg(recurrence=2), 0.7, 22.0)
    _fake_run(tmp_path, "other/1", model_cfg(context="none", recurrence=2), 0.3, 10.0)
    (tmp_path / "rcca" / "3").mkdir()  # an unfinished run: no files yet, skipped
    rows = summarize(find_runs(tmp_path), evaluate_regions=False)
    assert [(r.context, r.recurrence) for r in rows] == [("none", 0), ("rcca", 1), ("rcca", 2), ("nonlocal", 0)]
    r2 = rows[2]
    assert r2.miou == [0.9, 0.7] and r2.train_time == [20.0, 22.0]
    table = markdown_table(rows).splitlines()
    assert len(table) == 2 + 4 and table[0].count("|") == 11
    mean, std = statistics.mean([0.9, 0.7]), statistics.stdev([0.9, 0.7])
    assert f"| rcca | 2 | 2 | {mean:.3f} ± {std:.3f} | – | – |" in table[4]
    assert table[2].startswith("| none | – | 1 | 0.300 |")
    # GFLOPs grow with R and come from the runs' image size (64 px -> 8x8 features).
    assert rows[1].gflops < rows[2].gflops
    assert rows[2].gflops == pytest.approx(head_cost(model_cfg(recurrence=2), (8, 8))[0])
    # What the context adds: nothing without it; R loops of one shared module cost R times one loop.
    assert rows[0].context_gflops == 0
    assert rows[2].context_gflops == pytest.approx(2 * rows[1].context_gflops, rel=1e-9)


def test_summary_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_runs(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no finished runs"):
        find_runs(tmp_path)


def test_summary_files_replace_their_own_but_never_a_file_no_summary_wrote(model_cfg, tmp_path: Path, caplog) -> None:
    root = tmp_path / "sweep"
    _fake_run(root, "rcca/0", model_cfg(recurrence=1), 0.6, 12.0)
    command = ["ablation", str(root), "--no-regions", "--feature-size", "4", "4"]
    first = benchmark_main(command)
    assert benchmark_main(command)["rows"] == first["rows"]  # the same command again: its own table and JSON
    assert (root / "manifest.txt").read_text() == HEADER + "ablation summary.md\nbenchmark summary.json\n"
    other = tmp_path / "other"
    _fake_run(other, "rcca/0", model_cfg(recurrence=1), 0.6, 12.0)
    (other / "summary.md").write_text("the user's notes")
    before = sorted(p.relative_to(other) for p in other.rglob("*"))
    with caplog.at_level(logging.ERROR, logger="benchmark"), pytest.raises(SystemExit) as exit_:
        benchmark_main(["ablation", str(other), "--no-regions", "--feature-size", "4", "4"])
    assert exit_.value.code == 2 and len(caplog.messages) == 1
    assert f"{other / 'summary.md'} (exists, and no earlier ablation run wrote it here)" in caplog.messages[0]
    with caplog.at_level(logging.ERROR, logger="benchmark"), pytest.raises(SystemExit):  # a run's own file
        benchmark_main(["ablation", str(other), "--table", str(other / "rcca/0/metrics.jsonl"), "--no-regions"])
    assert "metrics.jsonl (an input of this run)" in caplog.messages[1]
    with caplog.at_level(logging.ERROR, logger="benchmark"), pytest.raises(SystemExit):
        benchmark_main(["ablation", str(other), "--table", str(tmp_path / "t.md"), "--out", str(tmp_path / "t.md")])
    assert caplog.messages[2].startswith(f"--table and --out both name {tmp_path / 't.md'}")
    assert (other / "summary.md").read_text() == "the user's notes"
    assert sorted(p.relative_to(other) for p in other.rglob("*")) == before and not (tmp_path / "t.md").exists()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_ablation_script_end_to_end(repo_root: Path, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "OUT": str(tmp_path / "ablation"),
        "SEEDS": "0",
        "RECURRENCES": "1,2",
        "CONTEXTS": "none,nonlocal",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        ["bash", str(repo_root / "scripts" / "ablation_recurrence.sh"), *TINY_RUN],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads((tmp_path / "ablation" / "summary.json").read_text())["rows"]
    assert [(r["context"], r["recurrence"]) for r in rows] == [("none", 0), ("rcca", 1), ("rcca", 2), ("nonlocal", 0)]
    for row in rows:
        assert len(row["val/mIoU"]) == 1 and 0.0 <= row["val/mIoU"][0] <= 1.0
        assert len(row["one_hop_acc"]) == 1 and 0.0 <= row["one_hop_acc"][0] <= 1.0
        assert len(row["two_hop_acc"]) == 1 and 0.0 <= row["two_hop_acc"][0] <= 1.0
        assert row["context_gflops"] >= 0
        assert row["train_time_s"][0] > 0
    table = (tmp_path / "ablation" / "summary.md").read_text()
    assert table.count("\n") == 2 + 4 and table in proc.stdout
    # Re-running the summary alone gives the same table.
    result = benchmark_main(
        [
            "ablation",
            str(tmp_path / "ablation"),
            "--table",
            str(tmp_path / "again.md"),
            "--out",
            str(tmp_path / "again.json"),
            "--no-regions",
        ]
    )
    again = (tmp_path / "again.md").read_text().splitlines()
    assert [line.split("|")[:4] + line.split("|")[7:] for line in again] == [
        line.split("|")[:4] + line.split("|")[7:] for line in table.splitlines()
    ]  # accuracies left out
    assert [r["context"] for r in result["rows"]] == [r["context"] for r in rows]
