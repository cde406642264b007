"""Smoke tests of tools/benchmark.py: every subcommand at CI-sized shapes on CPU, checking the printed
table, the JSON file and that the numbers make sense (implementations agree, FLOPs match closed-form
counts, non-local costs more than criss-cross attention, the official model's parameter count); --out never
replaces a file no benchmark wrote, and user mistakes end in one line with exit status 2."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch

from ccnet.utils.manifest import HEADER

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cli():
    spec = importlib.util.spec_from_file_location("benchmark_cli", REPO / "tools" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()  # the CLI's --threads sets the process-wide count
    yield
    torch.set_num_threads(threads)


def _run(cli, tmp_path, capsys, *argv):
    out = tmp_path / f"{argv[0]}.json"
    threads = [] if argv[0] == "data" else ["--threads", "1"]  # tiny shapes: a second thread only waits
    # --force: the test machine is busy (the suite runs); these runs check the code, not the speed
    returned = cli.main([*argv, *threads, "--force", "--out", str(out)])
    printed = capsys.readouterr().out
    stored = json.loads(out.read_text())
    assert stored["benchmark"] == argv[0] and stored["results"] == json.loads(json.dumps(returned["results"]))
    return stored, printed


def _cca_flops(c: int, h: int, w: int, reduction: int = 8) -> int:
    """One criss-cross module: q, k, v 1×1 convolutions, H+W energies and aggregations per pixel."""
    cq = c // reduction
    return 2 * h * w * (c * (2 * cq + c) + (h + w) * cq + (h + w) * c)


def _nonlocal_flops(c: int, h: int, w: int) -> int:
    """Embedded Gaussian block, inter channels C/2: θ, φ, g and W_z convolutions, two (HW)² products."""
    ci = c // 2
    return 2 * h * w * (3 * c * ci + ci * c) + 2 * 2 * (h * w) ** 2 * ci


@pytest.mark.parametrize("scope", ["module", "operator"])
def test_cca(cli, tmp_path, capsys, scope):
    result, printed = _run(
        cli,
        tmp_path,
        capsys,
        "cca",
        "--scope",
        scope,
        "--batch",
        "2",
        "--channels",
        "64",
        "--height",
        "13",
        "--width",
        "11",
        "--repeats",
        "1",
        "--warmup",
        "0",
    )
    rows = {r["impl"]: r for r in result["results"]}
    assert list(rows) == ["baseline", "reference", "lean"]
    assert "triton" in result["skipped"] and "profile_memory" in result["memory_method"]
    assert "fwd+bwd speed-up" in printed and "lean" in printed and "roofline:" in printed
    bound = result["roofline"]
    assert bound["gemm_gflops_per_s"] > 0 and bound["bound_ms"] > 0
    assert (bound["projection_gflop"] > 0) == (scope == "module")
    for row in rows.values():
        low, high = row["fwd_bwd_range_ms"]
        assert low <= row["fwd_bwd_ms"] <= high and 0 < row["fraction_of_bound"]
    for row in rows.values():
        assert row["max_abs_diff_vs_baseline"] < 1e-4  # same weights, same function
        assert row["fwd_ms"] > 0 and row["fwd_bwd_ms"] > 0 and row["fwd_bwd_peak_mb"] > 0
    assert rows["baseline"]["fwd_bwd_memory_ratio"] == 1.0
    # the lean path makes no permuted copies, no -inf matrices and (module) keeps no attention maps
    key = "fwd_bwd_peak_mb" if scope == "module" else "fwd_peak_mb"
    assert rows["lean"][key] < rows["baseline"][key]


def test_context(cli, tmp_path, capsys):
    c_in, h, w = 64, 24, 20
    result, printed = _run(
        cli,
        tmp_path,
        capsys,
        "context",
        "--in-channels",
        str(c_in),
        "--height",
        str(h),
        "--width",
        str(w),
        "--repeats",
        "1",
        "--warmup",
        "0",
    )
    rows = {r["context"]: r for r in result["results"]}
    assert list(rows) == ["none", "rcca1", "rcca2", "rcca3", "nonlocal"]
    inner = c_in // 4
    assert rows["none"]["block_gflops"] == 0
    for r in (1, 2, 3):  # R applications of the same module: exactly R times the FLOPs of one
        assert rows[f"rcca{r}"]["block_gflops"] == pytest.approx(r * _cca_flops(inner, h, w) / 1e9, rel=1e-9)
    assert rows["nonlocal"]["block_gflops"] == pytest.approx(_nonlocal_flops(inner, h, w) / 1e9, rel=1e-9)
    assert rows["nonlocal"]["block_gflops"] > 2 * rows["rcca2"]["block_gflops"]
    assert rows["nonlocal"]["block_train_mb"] > rows["rcca2"]["block_train_mb"] > 0
    head_extra = {k: rows[k]["head_gflops"] - rows["none"]["head_gflops"] for k in rows}
    assert head_extra["rcca2"] == pytest.approx(rows["rcca2"]["block_gflops"], rel=1e-6)
    assert rows["rcca2"]["paper_gflops"] == 16.5 and rows["nonlocal"]["paper_memory_mb"] == 1411
    assert 0 < result["comparison"]["rcca2_flops_reduction_vs_nonlocal"] < 1
    assert "fewer FLOPs" in printed


def test_model(cli, tmp_path, capsys):
    result, printed = _run(
        cli,
        tmp_path,
        capsys,
        "model",
        "--configs",
        "ccnet_tiny",
        "--size",
        "32",
        "40",
        "--latency",
        "--repeats",
        "1",
        "--warmup",
        "0",
    )
    (row,) = result["results"]
    assert row["config"] == "ccnet_tiny" and 0 < row["params_m"] < 1 and row["gflops"] > 0 and row["latency_ms"] > 0
    result, _ = _run(cli, tmp_path, capsys, "model", "--configs", "ccnet_r101_official")
    (row,) = result["results"]
    assert round(row["params_m"] * 1e6) == 71_287_911  # the official release's count (foundation issue)
    assert row["latency_ms"] is None and row["gflops"] > 1000  # ResNet-101 at 769×769, output stride 8


def test_train(cli, tmp_path, capsys):
    result, printed = _run(
        cli,
        tmp_path,
        capsys,
        "train",
        "--config",
        "ccnet_tiny",
        "--size",
        "32",
        "32",
        "--batch",
        "2",
        "--variants",
        "fp32",
        "bf16+cl",
        "--repeats",
        "1",
        "--warmup",
        "1",
    )
    rows = {r["variant"]: r for r in result["results"]}
    assert list(rows) == ["fp32", "bf16+cl"] and rows["fp32"]["speedup_vs_fp32"] == 1.0
    for row in rows.values():
        assert row["images_per_s"] == pytest.approx(2e3 / row["step_ms"]) and row["peak_mb"] > 0
    assert "images/s" in printed


def test_data_dispatch_and_missing_module_message(cli, tmp_path, capsys, monkeypatch):
    result, printed = _run(
        cli,
        tmp_path,
        capsys,
        "data",
        "--workers",
        "0",
        "--batch-size",
        "1",
        "--num-batches",
        "1",
        "--warmup",
        "0",
        "--image-size",
        "64",
        "128",
        "--num-images",
        "2",
        "--crop-size",
        "32",
    )
    assert result["results"] and "images/s" in printed
    monkeypatch.setitem(cli.BENCHMARKS, "data", ("ccnet.apps.benchmarks.not_there", "missing"))
    with pytest.raises(SystemExit, match="ccnet/apps/benchmarks/not_there.py.*missing from this checkout"):
        cli.main(["data"])


def test_roofline_of_the_paper_shape():
    """1x512x97x97, R = 2, forward+backward: ~37 GFLOP of projections and ~13 of attention."""
    from argparse import Namespace

    from ccnet.apps.benchmarks.cca import roofline

    args = Namespace(batch=1, channels=512, height=97, width=97, reduction=8, recurrence=2, scope="module")
    bound = roofline(args, gemm_gflops=200.0)
    assert bound["projection_gflop"] == pytest.approx(3 * 2 * 2 * 9409 * 512 * 640 / 1e9)  # 37.0
    assert bound["attention_gflop"] == pytest.approx(3 * 2 * 2 * 9409 * 194 * (64 + 512) / 1e9)  # 12.6
    assert bound["bound_ms"] == pytest.approx((bound["projection_gflop"] + bound["attention_gflop"]) / 200 * 1e3)


def test_busy_machine_is_refused_unless_forced(monkeypatch, capsys):
    import os

    from ccnet.apps.benchmarks import common

    monkeypatch.setattr(os, "getloadavg", lambda: (3.0, 3.0, 3.0))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    with pytest.raises(common.BusyMachineError, match=r"load average 3.00 on 2 CPUs \(1.50 per core.*--force"):
        common.check_machine_load(torch.device("cpu"), force=False, wait_s=0.05, poll_s=0.01)
    common.check_machine_load(torch.device("cpu"), force=True)
    assert "timing anyway (--force)" in capsys.readouterr().err
    monkeypatch.setattr(os, "getloadavg", lambda: (0.4, 0.4, 0.4))
    common.check_machine_load(torch.device("cpu"), force=False)  # 0.2 per core: idle enough


def test_the_load_of_what_ran_before_is_waited_out(monkeypatch, capsys):
    import os

    from ccnet.apps.benchmarks import common

    loads = iter([1.2, 0.9, 0.7, 0.5])  # a previous benchmark's load decaying
    monkeypatch.setattr(os, "getloadavg", lambda: (next(loads),) * 3)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    common.check_machine_load(torch.device("cpu"), force=False, wait_s=10, poll_s=0.01)
    assert "waiting up to 10 s for it to fall to 0.60" in capsys.readouterr().err


def errors(caplog):
    """The tool's own error lines (other tests may leave the root logger at INFO: the benchmarks' lines then
    reach caplog too)."""
    return [r.getMessage() for r in caplog.records if r.name == "benchmark" and r.levelno >= logging.ERROR]


def test_out_replaces_its_own_json_but_never_a_file_no_benchmark_wrote(cli, tmp_path, capsys, caplog):
    out = tmp_path / "model.json"
    argv = ["model", "--configs", "ccnet_tiny", "--size", "32", "40"]
    first = cli.main([*argv, "--out", str(out)])
    assert cli.main([*argv, "--out", str(out)])["results"] == first["results"]  # again: its own file
    assert (tmp_path / "manifest.txt").read_text() == HEADER + "benchmark model.json\n"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "model.json").write_text("the user's results")
    capsys.readouterr()
    with caplog.at_level(logging.ERROR, logger="benchmark"), pytest.raises(SystemExit) as exit_:
        cli.main([*argv, "--out", str(mine / "model.json")])
    assert exit_.value.code == 2
    assert errors(caplog) == [
        f"refusing to write into {mine}: 1 file(s) this run would write are not its own to "
        f"replace: {mine / 'model.json'} (exists, and no earlier benchmark run wrote it "
        "here). Nothing was written. Choose another --out or move that file away"
    ]
    assert (mine / "model.json").read_text() == "the user's results" and len(list(mine.iterdir())) == 1
    assert "params" not in capsys.readouterr().out  # refused before the benchmark ran
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="benchmark"), pytest.raises(SystemExit) as exit_:
        cli.main(["cca", "--recurrence", "0", "--out", str(tmp_path / "cca.json")])  # an option error: one line
    assert exit_.value.code == 2 and errors(caplog) == ["--recurrence must be >= 1, got 0"]
    assert not (tmp_path / "cca.json").exists()
