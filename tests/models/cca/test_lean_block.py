"""The fused lean module application (ccnet.models.cca.lean_block) against nn.Conv2d and the
loop-based reference: one autograd function per CrissCrossAttention call (gradcheck, what it saves,
layouts, dtypes, autocast) and torch.compile."""

from __future__ import annotations

import pytest
import torch

from ccnet.models.cca import IMPL_ENV, CrissCrossAttention, lean_ops
from ccnet.models.cca import lean_block as cca_lean_block
from ccnet.models.cca.lean_block import LeanCrissCrossBlock, criss_cross_block_lean
from tests.models.reference import loop_criss_cross_attention


def _seeded_module(gamma: float, width: int) -> tuple:
    """A CrissCrossAttention(16) with the given γ and a (2, 16, 5, width) input, from seed 0."""
    torch.manual_seed(0)
    module = CrissCrossAttention(16)
    with torch.no_grad():
        module.gamma.fill_(gamma)
    return module, torch.randn(2, 16, 5, width)


def _module_reference(module, x):
    """The module's function from its own convolutions and the loop oracle."""
    return x + module.gamma * loop_criss_cross_attention(module.query_conv(x), module.key_conv(x), module.value_conv(x))


def _block(module, x):
    projections = (
        module.query_conv.weight,
        module.query_conv.bias,
        module.key_conv.weight,
        module.key_conv.bias,
        module.value_conv.weight,
        module.value_conv.bias,
    )
    return criss_cross_block_lean(x, projections, module.gamma)


def _module_grads(fn, module, x, grad):
    x = x.detach().clone().requires_grad_()
    out = fn(module, x)
    return out, torch.autograd.grad(out, [x, *module.parameters()], grad)


BLOCK_SHAPES = [(2, 16, 5, 4), (1, 8, 1, 7), (1, 8, 6, 1), (3, 16, 3, 3), (1, 8, 1, 1)]


@pytest.mark.parametrize("shape", BLOCK_SHAPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("chunks", [(128, 1024), (3, 7)], ids=["one_chunk", "small_chunks"])
def test_fused_block_matches_convolutions_and_loop_reference(shape, layout, chunks, monkeypatch):
    """The whole application — stacked projection, attention, residual — against nn.Conv2d + the
    loop oracle: output, dx and the gradients of all seven parameters. y is channels_last memory
    whatever x's layout (the next recurrence reads it without conversion); dx has x's layout. Small chunks: dY read 3
    channels at a time and dx built 7 positions at a time."""
    monkeypatch.setattr(lean_ops, "CHANNEL_CHUNK", chunks[0])
    monkeypatch.setattr(cca_lean_block, "ROW_CHUNK", chunks[1])
    torch.manual_seed(0)
    module = CrissCrossAttention(shape[1])
    with torch.no_grad():
        module.gamma.fill_(0.7)
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(shape).contiguous(memory_format=memory_format)
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    out, grads = _module_grads(_block, module, x, grad)
    ref, ref_grads = _module_grads(_module_reference, module, x, grad)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert grads[0].is_contiguous(memory_format=memory_format)  # dx in x's layout: no copy downstream
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    names = ["x"] + [n for n, _ in module.named_parameters()]
    for name, mine, theirs in zip(names, grads, ref_grads):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5, msg=lambda m, name=name: f"d{name}: {m}")


def test_fused_block_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    c, inner = 4, 2
    x = torch.randn(2, c, 3, 4, generator=g, dtype=torch.float64)
    params = [
        torch.randn(shape, generator=g, dtype=torch.float64) * 0.5
        for shape in ((inner, c, 1, 1), (inner,), (inner, c, 1, 1), (inner,), (c, c, 1, 1), (c,), (1,))
    ]
    inputs = [t.requires_grad_() for t in (x, *params)]
    assert torch.autograd.gradcheck(LeanCrissCrossBlock.apply, inputs, eps=1e-6, atol=1e-6)
    channels_last = [inputs[0].detach().contiguous(memory_format=torch.channels_last).requires_grad_()] + inputs[1:]
    assert torch.autograd.gradcheck(LeanCrissCrossBlock.apply, channels_last, eps=1e-6, atol=1e-6)


def test_fused_block_saves_input_weight_projections_and_statistics():
    """What training keeps per application: x (alive anyway), the stacked weight, one positions-last
    q/k/v buffer, γ and a (B, H, W) lse — no attention map, no output, no converted copies."""
    module, x = _seeded_module(0.7, 6)
    x.requires_grad_()
    y = module(x)
    saved = y.grad_fn.saved_tensors
    assert [tuple(t.shape) for t in saved] == [(2, 16, 5, 6), (20, 16), (2, 5, 6, 20), (1,), (2, 5, 6)]
    assert saved[0].data_ptr() == x.data_ptr() and saved[3].data_ptr() == module.gamma.data_ptr()


def test_fused_block_incoming_gradient_in_any_layout():
    """dY arrives expanded (from .sum()), channels_last for a contiguous x, or contiguous for a
    channels_last x: every combination gives the reference gradients."""
    module, x = _seeded_module(0.7, 4)
    layouts = {
        "contiguous": lambda t: t.contiguous(),
        "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last),
        "expanded": lambda t: torch.ones(1).expand(t.shape),
    }
    grad = torch.ones(x.shape)
    _, ref_grads = _module_grads(_module_reference, module, x, grad)
    for x_layout in ("contiguous", "channels_last"):
        for grad_layout, convert in layouts.items():
            _, grads = _module_grads(_block, module, layouts[x_layout](x), convert(grad))
            for mine, theirs in zip(grads, ref_grads):
                torch.testing.assert_close(
                    mine, theirs, atol=1e-5, rtol=1e-5, msg=lambda m, a=x_layout, b=grad_layout: f"x {a}, dY {b}: {m}"
                )


def test_fused_block_without_input_gradient_or_with_frozen_projections():
    """No dx wanted (a frozen input) or frozen convolutions (only γ and dx wanted): the gradients
    that are wanted equal the reference's, the others are not computed."""
    module, x = _seeded_module(0.7, 5)
    module(x).square().sum().backward()
    mine = [p.grad.clone() for p in module.parameters()]
    module.zero_grad()
    _module_reference(module, x).square().sum().backward()
    for a, b in zip(mine, (p.grad for p in module.parameters())):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for conv in (module.query_conv, module.key_conv, module.value_conv):
        conv.requires_grad_(False)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    x_mine, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    mine = torch.autograd.grad(module(x_mine), [x_mine, module.gamma], grad)
    theirs = torch.autograd.grad(_module_reference(module, x_ref), [x_ref, module.gamma], grad)
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_fused_block_under_bfloat16_autocast():
    """Like the convolutions would be, x and the projections are cast to bf16; γ and every parameter
    gradient stay float32. Tolerance: bf16 rounding (2^-9 relative) of unit-scale sums."""
    module, x = _seeded_module(0.5, 6)
    x.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = module(x)
    assert y.dtype == torch.bfloat16
    y.float().square().sum().backward()
    assert x.grad.dtype == torch.float32 and all(p.grad.dtype == torch.float32 for p in module.parameters())
    ref = _module_reference(module, x.detach())
    torch.testing.assert_close(y.float(), ref, atol=5e-2, rtol=2e-2)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 5e-2), (torch.float16, 5e-3)])
def test_fused_block_in_half_precision(dtype, tol):
    """A module cast to bf16/fp16 (no autocast): output, dx and dWv in that dtype, close to the
    float32 reference (projections and aggregation rounded to the half format; energies, softmax
    and the softmax backward in float32)."""
    module, x = _seeded_module(0.5, 6)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    ref, ref_grads = _module_grads(_module_reference, module, x, grad)
    half = CrissCrossAttention(16)
    half.load_state_dict(module.state_dict())
    half = half.to(dtype)
    x_half = x.to(dtype).requires_grad_()
    out = half(x_half)
    out.backward(grad.to(dtype))
    assert out.dtype == x_half.grad.dtype == half.value_conv.weight.grad.dtype == dtype
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)
    torch.testing.assert_close(x_half.grad.float(), ref_grads[0], atol=tol, rtol=tol)
    ref_dwv = dict(zip([n for n, _ in module.named_parameters()], ref_grads[1:]))["value_conv.weight"]
    scale = ref_dwv.abs().max()  # dWv sums over positions: compared relative to its size
    torch.testing.assert_close(half.value_conv.weight.grad.float() / scale, ref_dwv / scale, atol=2 * tol, rtol=0)


def test_fused_block_rejects_mixed_dtypes_and_bad_shapes():
    module, x = _seeded_module(0.5, 6)
    with pytest.raises(TypeError, match="input is torch.float64 but Wq is torch.float32"):
        module(x.double())
    with pytest.raises(ValueError, match=r"expects a \(B, C, H, W\) input, got shape \(16, 5, 6\)"):
        module(x[0])


@pytest.mark.slow
def test_module_forward_and_backward_under_torch_compile(monkeypatch):
    monkeypatch.setenv(IMPL_ENV, "lean")
    module, x = _seeded_module(0.5, 6)
    x_eager, x_compiled = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected = module(x_eager)
    expected.square().sum().backward()
    eager_grads = [p.grad.clone() for p in module.parameters()]
    module.zero_grad()
    out = torch.compile(module)(x_compiled)
    out.square().sum().backward()
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x_compiled.grad, x_eager.grad, atol=1e-5, rtol=1e-5)
    for p, g in zip(module.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, g, atol=1e-5, rtol=1e-5)
