"""Which criss-cross implementation runs (ccnet.models.cca.select_implementation): the order of the
explicit argument, use_implementation blocks, the module's setting (model.cca_impl), the
CCNET_CCA_IMPL environment variable and auto; nesting and exception safety of the blocks; and the
error for an unknown name from each source."""

from __future__ import annotations

import threading

import pytest
import torch

from ccnet.models import CrissCrossAttention, build_model, criss_cross_attention, use_implementation
from ccnet.models.cca import IMPL_ENV, select_implementation
from tests.models.helpers import loop_reference, make_inputs

CPU = torch.device("cpu")
UNKNOWN = "expected one of auto, reference, lean, triton"


@pytest.fixture(autouse=True)
def no_environment_default(monkeypatch):
    """Every test starts from auto; those about the environment variable set it themselves."""
    monkeypatch.delenv(IMPL_ENV, raising=False)


def _ran(module: CrissCrossAttention) -> str:
    """The implementation a module's forward took, told apart by the autograd node it leaves."""
    x = torch.randn(1, 8, 3, 4, requires_grad=True)
    node = type(module(x).grad_fn).__name__
    return {"LeanCrissCrossBlockBackward": "lean", "AddBackward0": "reference"}[node]


def test_implementation_switch(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv(IMPL_ENV, raising=False)
    assert select_implementation(None, cpu) == "lean"
    assert select_implementation("reference", cpu) == "reference"
    monkeypatch.setenv(IMPL_ENV, "reference")
    assert select_implementation(None, cpu) == "reference"
    monkeypatch.setenv(IMPL_ENV, "fast")
    with pytest.raises(ValueError, match="'fast' from the environment variable CCNET_CCA_IMPL.*lean"):
        criss_cross_attention(*make_inputs(1, 2, 3, 4, 5)[:3])
    monkeypatch.delenv(IMPL_ENV)
    q, k, v, gamma, x = make_inputs(2, 3, 5, 4, 6)
    ref = loop_reference(q, k, v, gamma, x)
    for impl in ("reference", "lean", "auto"):
        torch.testing.assert_close(
            criss_cross_attention(q, k, v, gamma, x, implementation=impl), ref, atol=1e-5, rtol=1e-5
        )


def test_selection_order_argument_context_module_environment_auto(monkeypatch):
    assert select_implementation(None, CPU) == "lean"  # auto on a CPU
    monkeypatch.setenv(IMPL_ENV, "reference")
    assert select_implementation(None, CPU) == "reference"  # environment > auto
    assert select_implementation(None, CPU, module_setting="lean") == "lean"  # module > environment
    with use_implementation("triton"):
        assert select_implementation(None, CPU, module_setting="lean") == "triton"  # context > module
        assert select_implementation("lean", CPU, module_setting="reference") == "lean"  # argument > context
    with use_implementation("auto"):  # a block naming auto applies the auto rule, over module and environment
        assert select_implementation(None, CPU, module_setting="reference") == "lean"


def test_selection_order_through_the_module(monkeypatch):
    """The same order end to end: the module's forward takes the lean fused block or the reference."""
    torch.manual_seed(0)
    inherit, lean = CrissCrossAttention(8, reduction=2), CrissCrossAttention(8, reduction=2, implementation="lean")
    assert _ran(inherit) == "lean"  # auto
    monkeypatch.setenv(IMPL_ENV, "reference")
    assert _ran(inherit) == "reference" and _ran(lean) == "lean"  # module setting over the environment
    monkeypatch.delenv(IMPL_ENV)
    with use_implementation("reference"):  # what export does: it wins over any module setting
        assert _ran(inherit) == "reference" and _ran(lean) == "reference"


def test_use_implementation_nests_and_restores_on_exceptions():
    with use_implementation("reference"):
        with use_implementation("lean"):
            assert select_implementation(None, CPU) == "lean"  # innermost wins
        assert select_implementation(None, CPU) == "reference"
        with pytest.raises(RuntimeError, match="inside the block"):
            with use_implementation("lean"):
                raise RuntimeError("inside the block")
        assert select_implementation(None, CPU) == "reference"
    assert select_implementation(None, CPU) == "lean"


def test_use_implementation_is_local_to_its_thread():
    seen = []
    with use_implementation("reference"):
        thread = threading.Thread(target=lambda: seen.append(select_implementation(None, CPU)))
        thread.start()
        thread.join()
        assert select_implementation(None, CPU) == "reference"
    assert seen == ["lean"]


def test_unknown_names_are_reported_with_their_source_and_the_valid_ones(monkeypatch):
    q, k, v = make_inputs(1, 2, 3, 4, 5)[:3]
    with pytest.raises(ValueError, match=f"'fast' from the implementation argument: {UNKNOWN}"):
        criss_cross_attention(q, k, v, implementation="fast")
    with pytest.raises(ValueError, match=rf"'fast' from use_implementation\(\): {UNKNOWN}"):
        with use_implementation("fast"):
            pass
    assert select_implementation(None, CPU) == "lean"  # the refused block left nothing behind
    with pytest.raises(ValueError, match=rf"'fast' from CrissCrossAttention\(implementation=\.\.\.\): {UNKNOWN}"):
        CrissCrossAttention(8, implementation="fast")
    with pytest.raises(ValueError, match=f"unknown model.cca_impl 'fast': {UNKNOWN}, or null"):
        build_model({"backbone": "tiny", "num_classes": 2, "cca_impl": "fast"})
    monkeypatch.setenv(IMPL_ENV, "fast")
    with pytest.raises(ValueError, match=f"'fast' from the environment variable CCNET_CCA_IMPL: {UNKNOWN}"):
        criss_cross_attention(q, k, v)


# The TorchScript-based ONNX exporter (export's fallback) traces; torch warns that tracing is deprecated.
@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:FutureWarning")
def test_auto_uses_the_reference_while_tracing(monkeypatch):
    monkeypatch.delenv(IMPL_ENV, raising=False)
    seen = []

    def double(x):
        seen.append(select_implementation(None, x.device))
        return x * 2

    torch.jit.trace(double, torch.randn(2), check_trace=False)  # one traced call, no re-runs
    assert seen == ["reference"]
    assert select_implementation(None, torch.device("cpu")) == "lean"
    # An explicit choice is honoured even while tracing.
    seen.clear()
    monkeypatch.setenv(IMPL_ENV, "lean")
    torch.jit.trace(double, torch.randn(2), check_trace=False)  # one traced call, no re-runs
    assert seen == ["lean"]
