"""The fused Triton criss-cross attention (ccnet.models.cca.triton_kernels) against the loop-based reference.

Without a GPU the kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``, set by
tests/conftest.py before Triton is first imported; slow, hence the small shapes). With a GPU the
same tests run compiled on CUDA, plus the ``cuda``-marked tests at the paper's shapes.
"""

from __future__ import annotations

import pytest
import torch

from ccnet.models.cca import CrissCrossAttention, criss_cross_attention
from ccnet.models.cca.lean import criss_cross_attention_lean
from tests.models.helpers import loop_reference, make_inputs, outputs_and_grads
from tests.models.reference import loop_criss_cross_attention

pytest.importorskip("triton", reason="Triton is not installed (the lean PyTorch path is used instead)")
try:
    from ccnet.models.cca import triton_kernels as cca_triton
except Exception as exc:  # noqa: BLE001 — any failure to build the kernels is a reason to skip, shown
    pytest.skip(f"Triton is installed but its kernels cannot be defined here: {exc!r}", allow_module_level=True)
if not (torch.cuda.is_available() or cca_triton.interpreting()):
    pytest.skip(
        "no CUDA and Triton's interpreter is off: TRITON_INTERPRET=1 must be set before Triton is first "
        "imported (tests/conftest.py does so on machines without CUDA)",
        allow_module_level=True,
    )

# The interpreter evaluates log(0) for the empty column of H = 1 with numpy, which warns.
pytestmark = pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning")


@pytest.fixture(scope="module")
def device() -> torch.device:
    return torch.device("cpu" if cca_triton.interpreting() else "cuda")


def _assert_matches(fn, reference, tensors, grad, tol):
    out, grads = outputs_and_grads(fn, tensors, grad)
    ref, ref_grads = outputs_and_grads(reference, [t.float() for t in tensors], grad.float())
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)
    for name, tensor, mine, theirs in zip("q k v gamma x".split(), tensors, grads, ref_grads):
        assert mine.dtype == tensor.dtype
        torch.testing.assert_close(
            mine.float(), theirs, atol=2 * tol, rtol=2 * tol, msg=lambda m, name=name: f"d{name}: {m}"
        )


def _triton(*tensors):
    return criss_cross_attention(*tensors, implementation="triton")


@pytest.mark.parametrize("shape,fused", [((2, 3, 5, 4, 6), True), ((1, 2, 3, 1, 7), False), ((1, 2, 3, 6, 1), True)])
def test_matches_loop_reference_float32(device, shape, fused):
    q, k, v, gamma, x = make_inputs(*shape, device)
    tensors = (q, k, v, gamma, x) if fused else (q, k, v)
    grad = torch.randn(v.shape, generator=torch.Generator().manual_seed(1)).to(device)
    _assert_matches(_triton, loop_reference, tensors, grad, 1e-5)


def test_multi_block_tiles(device, monkeypatch):
    """Positions, query/key channels and value channels all span two tiles, the masked diagonal
    falling in both the first and the second tile."""
    for name in ("MAX_BLOCK_POSITIONS", "MAX_BLOCK_QK", "BLOCK_VALUES"):
        monkeypatch.setattr(cca_triton, name, 16)
    q, k, v, gamma, x = make_inputs(1, 17, 17, 17, 1, device)
    grad = torch.randn(v.shape, generator=torch.Generator().manual_seed(1)).to(device)
    _assert_matches(_triton, loop_reference, (q, k, v, gamma, x), grad, 1e-5)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float16, 3e-3)])
def test_half_precision_close_to_loop_reference(device, dtype, tol):
    """Same tolerances as the lean path (tests/models/cca/test_lean.py): values and the value
    gradient are aggregated from half-precision operands with float32 accumulation; energies,
    softmax and the q/k gradients are float32 until the final rounding."""
    q, k, v, gamma, x = make_inputs(1, 4, 6, 5, 7, device, dtype)
    grad = torch.randn(v.shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    _assert_matches(_triton, loop_criss_cross_attention, (q, k, v), grad, tol)


def test_channels_last_inputs_and_expanded_gradient(device):
    q, k, v, gamma, x = make_inputs(1, 3, 5, 4, 6, device)
    ref, ref_grads = outputs_and_grads(loop_reference, (q, k, v, gamma, x), torch.ones_like(v))
    tensors = [t.contiguous(memory_format=torch.channels_last).requires_grad_() for t in (q, k, v)]
    tensors += [gamma.clone().requires_grad_(), x.transpose(2, 3).contiguous().transpose(2, 3).requires_grad_()]
    out = _triton(*tensors)
    out.sum().backward()  # an expanded (stride-0) incoming gradient
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for t, g in zip(tensors, ref_grads):
        torch.testing.assert_close(t.grad, g, atol=1e-5, rtol=1e-5)


def test_custom_operator_registration(device):
    """Schema, fake (meta) implementation and autograd formula are consistent — what torch.compile
    relies on to treat the kernels as one opaque call."""
    q, k, v, gamma, x = (t.requires_grad_() for t in make_inputs(1, 2, 3, 3, 4, device))
    result = torch.library.opcheck(torch.ops.ccnet.cca_triton_forward.default, (q, k, v, gamma, x))
    assert set(result.values()) == {"SUCCESS"}, result


def test_rejects_inputs_it_cannot_run(device, monkeypatch):
    q, k, v, _, _ = make_inputs(1, 2, 3, 3, 4, device, torch.float64)
    with pytest.raises(ValueError, match="float32/float16/bfloat16.*implementation='lean'"):
        cca_triton.criss_cross_attention_triton(q, k, v)
    monkeypatch.setattr(cca_triton, "interpreting", lambda: False)
    with pytest.raises(ValueError, match="needs CUDA tensors.*implementation='lean'"):
        cca_triton.criss_cross_attention_triton(*(t.float().cpu() for t in (q, k, v)))


def _paper_inputs(dtype=torch.float32, channels_last=False):
    q, k, v, gamma, x = make_inputs(2, 64, 512, 97, 97, "cuda", dtype)
    if channels_last:
        q, k, v, x = (t.contiguous(memory_format=torch.channels_last) for t in (q, k, v, x))
    return q, k, v, gamma, x


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_paper_shape_matches_lean_path(channels_last):
    """2×512×97×97 (the RCCA head on a 769² crop): fused kernels == lean PyTorch path (itself
    tested against the loop reference) in float32, with exact (IEEE) products."""
    tensors = _paper_inputs(channels_last=channels_last)
    grad = torch.randn_like(tensors[2])
    out, grads = outputs_and_grads(_triton, tensors, grad)
    ref, ref_grads = outputs_and_grads(criss_cross_attention_lean, tensors, grad)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    for mine, theirs in zip(grads, ref_grads):
        torch.testing.assert_close(mine, theirs, atol=1e-4 * theirs.abs().max().item(), rtol=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_half_precision_close_to_float32(dtype):
    tensors = _paper_inputs(dtype, channels_last=True)
    out = _triton(*tensors)
    ref = criss_cross_attention_lean(*(t.float() for t in tensors))
    assert out.dtype == dtype and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_module_under_torch_compile_and_autocast():
    torch.manual_seed(0)
    module = CrissCrossAttention(64).cuda()
    with torch.no_grad():
        module.gamma.fill_(0.5)
    x = torch.randn(2, 64, 33, 29, device="cuda").contiguous(memory_format=torch.channels_last)
    expected = module(x)
    compiled = torch.compile(module)
    torch.testing.assert_close(compiled(x), expected, atol=1e-4, rtol=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = compiled(x)
    out.float().square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in module.parameters())
