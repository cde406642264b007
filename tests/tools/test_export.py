"""tools/export.py: a torch.export program (.pt2) and ONNX (dynamo exporter, or the TorchScript-based fallback
with its reason) of a checkpoint, both with dynamic batch/H/W and embedded metadata, checked with
torch.export.load / ONNX Runtime against the PyTorch model at sizes and batches other than the exported one;
no output written over the checkpoint or a file no export wrote."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import ccnet.apps.export as export_module
from ccnet.apps.export import load_exported
from ccnet.checkpoint import save_checkpoint
from ccnet.models import build_model
from ccnet.models.cca import IMPL_ENV as CCA_IMPL_ENV
from ccnet.utils.manifest import HEADER

onnx = pytest.importorskip("onnx", reason="optional export dependency (requirements-dev.txt)")
ort = pytest.importorskip("onnxruntime", reason="optional export dependency (requirements-dev.txt)")

REPO = Path(__file__).resolve().parents[2]
TOL = 1e-4
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
try:  # the dynamo ONNX exporter's dependency; without it the tool falls back (and says so)
    import onnxscript  # noqa: F401

    HAS_ONNXSCRIPT = True
except ImportError:
    HAS_ONNXSCRIPT = False
DEPRECATIONS = (FutureWarning, DeprecationWarning)


def _tool():
    spec = importlib.util.spec_from_file_location("export_tool", REPO / "tools" / "export.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _deprecations(records) -> list:
    return [
        f"{r.category.__name__} {r.filename}:{r.lineno}: {r.message}"
        for r in records
        if issubclass(r.category, DEPRECATIONS)
    ]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = OmegaConf.create(
        {"dataset": {"num_classes": 5}, "model": OmegaConf.load(REPO / "configs" / "model" / "ccnet_tiny.yaml")}
    )
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    torch.manual_seed(0)
    model = build_model(model_cfg)
    with torch.no_grad():  # trained-looking state: attention switched on, non-trivial BN statistics
        model.head.cca.gamma.fill_(0.9)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("export") / "tiny.pth"
    save_checkpoint(
        {
            "model": model.state_dict(),
            "iteration": 10,
            "config": {
                "model": model_cfg,
                "dataset": {"name": "synthetic", "num_classes": 5, "mean": MEAN, "std": STD},
            },
        },
        path,
    )
    return path, model.eval()


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    """One run of the tool writing both formats (exported at 64x64, batch 2; checked also at 48x80 and 40x56)."""
    path, _ = checkpoint
    out_dir = tmp_path_factory.mktemp("exported")
    pt2, onnx_path, out = out_dir / "m.pt2", out_dir / "m.onnx", out_dir / "r.json"
    argv = [
        str(path),
        "--pt2",
        str(pt2),
        "--onnx",
        str(onnx_path),
        "--size",
        "64",
        "64",
        "--check-size",
        "48",
        "80",
        "--check-size",
        "40",
        "56",
        "--out",
        str(out),
    ]
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        # a fast, non-exportable attention as the default must not leak into the export
        mp.setenv(CCA_IMPL_ENV, "lean")
        status = _tool().main(argv)
        impl_after = os.environ[CCA_IMPL_ENV]
    return {
        "status": status,
        "result": json.loads(out.read_text()),
        "pt2": pt2,
        "onnx": onnx_path,
        "warnings": list(records),
        "impl_after": impl_after,
        "argv": argv,
        "dir": out_dir,
        "files": sorted(p.name for p in out_dir.iterdir()),
    }


def test_tool_checks_both_exports_and_records_the_exporter(exported):
    assert exported["status"] == 0
    assert exported["impl_after"] == "lean"  # restored
    result = exported["result"]
    assert result["num_classes"] == 5 and result["mean"] == MEAN and result["std"] == STD
    assert result["pt2"]["max_abs_diff"] < TOL and result["onnx"]["max_abs_diff"] < TOL
    # the constraints torch.export inferred: H, W >= 9 (stride-8 features >= 2x2); batch >= 2 is its 0/1
    # specialisation convention (a batch of 1 runs: test_pt2_matches_pytorch_at_other_sizes_and_batches)
    assert result["pt2"]["dynamic"] == {"batch": [2, None], "height": [9, None], "width": [9, None]}
    onnx_entry = result["onnx"]
    if HAS_ONNXSCRIPT:
        assert onnx_entry["exporter"] == "dynamo" and onnx_entry["fallback_reason"] is None
    else:
        assert onnx_entry["exporter"] == "torchscript" and "onnxscript" in onnx_entry["fallback_reason"]


def test_writes_only_its_files_and_records_them(exported):
    # the ONNX weights are inside the .onnx file: no external-data file beside it
    assert exported["files"] == ["m.onnx", "m.pt2", "manifest.txt", "r.json"]
    lines = (exported["dir"] / "manifest.txt").read_text().splitlines()
    assert lines[0] == HEADER.rstrip("\n") and sorted(lines[1:]) == ["export m.onnx", "export m.pt2", "export r.json"]


def test_no_deprecation_warnings_from_our_code(exported):
    assert _deprecations(exported["warnings"]) == []
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        for path in (exported["pt2"], exported["onnx"]):
            run, _ = load_exported(path)
            with torch.no_grad():
                run(torch.randn(1, 3, 24, 24))
    assert _deprecations(records) == []


def test_pt2_matches_pytorch_at_other_sizes_and_batches(exported, checkpoint):
    _, model = checkpoint
    program = torch.export.load(str(exported["pt2"])).module()
    # independent of the tool's own check: batches and sizes it never saw, not multiples of 8, non-square
    for shape in [(1, 64, 64), (3, 57, 70), (2, 33, 96)]:
        x = torch.randn(shape[0], 3, *shape[1:])
        with torch.no_grad():
            ref, got = model(x)["out"], program(x)
        assert got.shape == ref.shape == (shape[0], 5, *shape[1:])
        assert (got - ref).abs().max() < TOL, shape


def test_onnx_matches_pytorch_in_onnxruntime(exported, checkpoint):
    _, model = checkpoint
    proto = onnx.load(str(exported["onnx"]))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    for value in (proto.graph.input[0], proto.graph.output[0]):
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        # (the TorchScript-based fallback leaves the logits' class axis symbolic)
        assert [dims[0], *dims[2:]] == ["batch", "height", "width"], value.name
    assert proto.graph.input[0].type.tensor_type.shape.dim[1].dim_value == 3
    session = ort.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
    for shape in [(2, 57, 70), (1, 40, 96)]:
        x = torch.randn(shape[0], 3, *shape[1:])
        with torch.no_grad():
            ref = model(x)["out"]
        got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
        assert got.shape == ref.shape == (shape[0], 5, *shape[1:])
        assert (got - ref).abs().max() < TOL, shape


def test_metadata_round_trips_from_both_files(exported, checkpoint):
    _, model = checkpoint
    expected = {
        "model": "ccnet_tiny",
        "num_classes": 5,
        "mean": MEAN,
        "std": STD,
        "classes": ["background", "red", "green", "blue", "yellow"],  # ccnet.data.synthetic
        "input": "RGB, (x / 255 - mean) / std, NCHW float32",
    }
    x = torch.randn(2, 3, 50, 45)
    with torch.no_grad():
        ref = model(x)["out"]
    found = {}
    for path in (exported["pt2"], exported["onnx"]):
        run, meta = load_exported(path)
        found[path.suffix] = meta
        assert {k: meta[k] for k in expected} == expected, path
        assert len(meta["palette"]) == 5 and all(len(rgb) == 3 for rgb in meta["palette"])
        with torch.no_grad():
            assert (run(x) - ref).abs().max() < TOL, path
    assert found[".pt2"] == found[".onnx"]
    # the .pt2 metadata is a plain extra file: readable without our loader
    extra = {"meta.json": ""}
    torch.export.load(str(exported["pt2"]), extra_files=extra)
    assert json.loads(extra["meta.json"])["palette"] == found[".pt2"]["palette"]


def test_load_exported_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no exported model at"):
        load_exported(tmp_path / "missing.pt2")
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"expected \.pt2 \(torch\.export\) or \.onnx"):
        load_exported(tmp_path / "model.bin")


def _failing_dynamo_export(original):
    def export(*args, **kwargs):
        if kwargs.get("dynamo", True):
            raise RuntimeError("Unsupported FX nodes: {'call_function': ['aten.made_up_op.default']}")
        return original(*args, **kwargs)

    return export


@pytest.mark.parametrize("failure", ["no onnxscript", "exporter error"])
def test_onnx_falls_back_to_the_torchscript_exporter_with_its_reason(
    checkpoint, tmp_path, monkeypatch, caplog, capsys, failure
):
    path, model = checkpoint
    if failure == "exporter error" and not HAS_ONNXSCRIPT:
        pytest.skip("without onnxscript the dynamo exporter is never tried")
    if failure == "no onnxscript":
        monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript -> ImportError
    else:
        monkeypatch.setattr(torch.onnx, "export", _failing_dynamo_export(torch.onnx.export))
    onnx_path, out = tmp_path / "fallback.onnx", tmp_path / "r.json"
    with warnings.catch_warnings(record=True) as records, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        status = _tool().main(
            [str(path), "--onnx", str(onnx_path), "--size", "32", "40", "--check-size", "24", "56", "--out", str(out)]
        )
    assert status == 0
    entry = json.loads(out.read_text())["onnx"]
    assert entry["exporter"] == "torchscript" and entry["max_abs_diff"] < TOL
    expected_reason = "onnxscript is not installed" if failure == "no onnxscript" else "aten.made_up_op"
    assert expected_reason in entry["fallback_reason"]
    assert f"fallback: {entry['fallback_reason']}" in capsys.readouterr().out  # the tool's result line says why
    assert _deprecations(records) == []  # the legacy exporter's own deprecation notices are filtered narrowly
    run, meta = load_exported(onnx_path)
    assert meta["std"] == STD
    x = torch.randn(2, 3, 45, 30)
    with torch.no_grad():
        assert (run(x) - model(x)["out"]).abs().max() < TOL


def test_static_onnx_and_errors(checkpoint, tmp_path):
    path, _ = checkpoint
    onnx_path = tmp_path / "static.onnx"
    assert _tool().main([str(path), "--onnx", str(onnx_path), "--size", "40", "48", "--static"]) == 0
    dims = [d.dim_value for d in onnx.load(str(onnx_path)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 40, 48]
    # user mistakes: refused before anything is exported, one line, status 2
    assert _tool().main([str(path), "--onnx", str(tmp_path / "x.onnx"), "--opset", "13"]) == 2
    assert _tool().main([str(path), "--pt2", str(tmp_path / "x.pt2"), "--size", "8", "64"]) == 2
    assert _tool().main([str(tmp_path / "missing.pth"), "--onnx", str(tmp_path / "y.onnx")]) == 2
    assert not any(tmp_path.glob("x.*"))


def test_non_finite_weights_are_not_exported(checkpoint, tmp_path, caplog):
    path, _ = checkpoint
    state = torch.load(path, weights_only=True)
    state["model"]["head.cca.gamma"] = torch.tensor([float("nan")])
    save_checkpoint(state, tmp_path / "nan.pth")
    with caplog.at_level(logging.ERROR, logger="export"):
        assert _tool().main([str(tmp_path / "nan.pth"), "--pt2", str(tmp_path / "m.pt2")]) == 2
    assert caplog.messages == [
        f"export failed: checkpoint {tmp_path / 'nan.pth'} holds NaN or inf in 1 tensor(s), "
        "e.g. ['head.cca.gamma']: a model with such weights predicts nonsense. The file is "
        "damaged or was saved after training diverged; use another checkpoint (e.g. an earlier "
        "one of the same run)"
    ]
    assert not (tmp_path / "m.pt2").exists()


def test_tolerance_failure_sets_the_exit_status(checkpoint, tmp_path):
    path, _ = checkpoint
    status = _tool().main([str(path), "--pt2", str(tmp_path / "m.pt2"), "--size", "32", "32", "--tolerance", "-1"])
    assert status == 1


def test_results_and_how_to_load_go_to_stdout_and_the_odd_size_is_checked(checkpoint, tmp_path, capsys, monkeypatch):
    path, model = checkpoint
    seen = []
    real_parity = export_module.parity

    def recording(model, exported, inputs):
        seen.extend(tuple(x.shape[-2:]) for x in inputs)
        return real_parity(model, exported, inputs)

    monkeypatch.setattr(export_module, "parity", recording)
    pt2 = tmp_path / "m.pt2"
    assert _tool().main([str(path), "--pt2", str(pt2), "--size", "32", "40"]) == 0
    out, err = capsys.readouterr()
    assert (32, 40) in seen and export_module.ODD_CHECK_SIZE in seen  # the export size and 301 x 517
    result_line = next(line for line in out.splitlines() if line.startswith("pt2 "))
    assert "of the largest logit" in result_line and "ok, tolerance" in result_line
    assert "the .pt2's extra file meta.json" in out and f"load_exported({str(pt2)!r})" in out
    assert "max |logits" not in err  # progress only on stderr
    # the printed lines work: the metadata comes back
    namespace: dict = {}
    exec("from ccnet.apps.export import load_exported\n" + f"run, meta = load_exported({str(pt2)!r})", namespace)
    assert namespace["meta"]["num_classes"] == model.num_classes


def test_default_outputs_go_under_outputs_export(tmp_path, monkeypatch):
    tool = _tool()
    calls = []

    def fake_export(checkpoint, **kwargs):
        calls.append(kwargs)
        return {"model": "ccnet_tiny", "num_classes": 5, "mean": MEAN, "std": STD}

    monkeypatch.setattr(tool, "export_checkpoint", fake_export)
    monkeypatch.chdir(tmp_path)
    assert tool.main(["work_dirs/run/best.pth"]) == 0
    assert calls[-1]["pt2_path"] == str(Path("outputs", "export", "best.pt2"))
    assert calls[-1]["onnx_path"] == str(Path("outputs", "export", "best.onnx"))
    # an explicit output replaces both defaults
    assert tool.main(["best.pth", "--pt2", "m.pt2"]) == 0
    assert calls[-1]["pt2_path"] == "m.pt2" and calls[-1]["onnx_path"] is None


def test_outputs_never_replace_the_checkpoint_or_a_file_no_export_wrote(checkpoint, tmp_path, caplog):
    path, _ = checkpoint
    mine = tmp_path / "mine.onnx"
    mine.write_bytes(b"the user's own model")
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "export.py"),
            str(path),
            "--pt2",
            str(tmp_path / "new.pt2"),
            "--onnx",
            str(mine),
            "--size",
            "32",
            "32",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 2 and "Traceback" not in output and len(output.splitlines()) == 1
    assert output.startswith(f"export failed: refusing to write into {tmp_path}: 1 file(s)") and output.endswith(
        f"{mine} (exists, and no earlier export run wrote it here). Nothing was written. Choose "
        "another --onnx or move that file away"
    )
    assert mine.read_bytes() == b"the user's own model"
    assert [p.name for p in tmp_path.iterdir()] == ["mine.onnx"]  # no .pt2 either: refused before exporting
    checkpoint_bytes = path.read_bytes()
    with caplog.at_level(logging.ERROR, logger="export"):
        assert _tool().main([str(path), "--pt2", str(path), "--size", "32", "32"]) == 2
        assert _tool().main([str(path), "--onnx", str(tmp_path / "a.onnx"), "--out", str(tmp_path / "a.onnx")]) == 2
    assert caplog.messages[0].endswith(
        f"{path} (an input of this run). Nothing was written. Choose another --pt2 or move that file away"
    )
    assert (
        caplog.messages[1] == f"export failed: --onnx and --out both name {tmp_path / 'a.onnx'}: each output "
        "needs a file of its own. Nothing was written; give them different paths"
    )
    assert path.read_bytes() == checkpoint_bytes and [p.name for p in tmp_path.iterdir()] == ["mine.onnx"]


def test_the_same_command_again_replaces_its_own_files(exported):
    before = {name: (exported["dir"] / name).stat().st_mtime_ns for name in ("m.pt2", "m.onnx", "r.json")}
    assert _tool().main(exported["argv"]) == 0
    assert sorted(p.name for p in exported["dir"].iterdir()) == exported["files"]
    assert all((exported["dir"] / name).stat().st_mtime_ns > ns for name, ns in before.items())  # written anew
    assert len((exported["dir"] / "manifest.txt").read_text().splitlines()) == 4  # each file recorded once
