"""tools/export.py: ONNX (opset >= 17, dynamic H/W) and TorchScript exports of a checkpoint, checked
with ONNX Runtime / torch.jit.load against the PyTorch model at sizes other than the traced one."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ccnet.checkpoint import save_checkpoint
from ccnet.models import build_model
from ccnet.models.cca import IMPL_ENV as CCA_IMPL_ENV

onnx = pytest.importorskip("onnx", reason="optional export dependency (requirements-dev.txt)")
ort = pytest.importorskip("onnxruntime", reason="optional export dependency (requirements-dev.txt)")

REPO = Path(__file__).resolve().parents[2]
TOL = 1e-4
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _tool():
    spec = importlib.util.spec_from_file_location("export_tool", REPO / "tools" / "export.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = OmegaConf.create({"dataset": {"num_classes": 5},
                            "model": OmegaConf.load(REPO / "configs" / "model" / "ccnet_tiny.yaml")})
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
    save_checkpoint({"model": model.state_dict(), "iteration": 10,
                     "config": {"model": model_cfg, "dataset": {"name": "synthetic", "num_classes": 5,
                                                                "mean": MEAN, "std": STD}}}, path)
    return path, model.eval()


def test_onnx_and_torchscript_match_pytorch_at_other_sizes(checkpoint, tmp_path, monkeypatch):
    path, model = checkpoint
    # a fast, non-exportable attention as the default must not leak into the export
    monkeypatch.setenv(CCA_IMPL_ENV, "lean")
    onnx_path, ts_path, out = tmp_path / "m.onnx", tmp_path / "m.pt", tmp_path / "r.json"
    status = _tool().main([str(path), "--onnx", str(onnx_path), "--torchscript", str(ts_path), "--size", "64", "64",
                           "--check-size", "48", "80", "--out", str(out)])
    assert status == 0
    assert os.environ[CCA_IMPL_ENV] == "lean"  # restored
    result = json.loads(out.read_text())
    assert result["num_classes"] == 5 and result["mean"] == MEAN
    assert result["onnx"]["max_abs_diff"] < TOL and result["torchscript"]["max_abs_diff"] < TOL

    proto = onnx.load(str(onnx_path))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "", "height", "width"]
    assert json.loads({p.key: p.value for p in proto.metadata_props}["std"]) == STD

    # independent of the tool's own check: a batch of 2 at a size it never saw, not a multiple of 8
    x = torch.randn(2, 3, 57, 70)
    with torch.no_grad():
        ref = model(x)["out"]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    assert got.shape == ref.shape == (2, 5, 57, 70)
    assert (got - ref).abs().max() < TOL
    extra = {"meta.json": ""}
    scripted = torch.jit.load(str(ts_path), _extra_files=extra)
    assert json.loads(extra["meta.json"])["num_classes"] == 5
    with torch.no_grad():
        assert (scripted(x) - ref).abs().max() < TOL


def test_static_onnx_and_errors(checkpoint, tmp_path):
    path, _ = checkpoint
    onnx_path = tmp_path / "static.onnx"
    assert _tool().main([str(path), "--onnx", str(onnx_path), "--size", "40", "48", "--static"]) == 0
    dims = [d.dim_value for d in onnx.load(str(onnx_path)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 40, 48]
    assert _tool().main([str(path)]) == 1  # no output requested
    assert _tool().main([str(path), "--onnx", str(tmp_path / "x.onnx"), "--opset", "13"]) == 1
    assert _tool().main([str(tmp_path / "missing.pth"), "--onnx", str(tmp_path / "y.onnx")]) == 1


def test_tolerance_failure_sets_the_exit_status(checkpoint, tmp_path):
    path, _ = checkpoint
    status = _tool().main([str(path), "--torchscript", str(tmp_path / "m.pt"), "--size", "32", "32",
                           "--tolerance", "-1"])
    assert status == 1
