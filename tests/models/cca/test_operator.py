"""Criss-cross attention against the loop-based reference, gradcheck, and the paper's R=1 / R=2
receptive-field argument."""

from __future__ import annotations

import pytest
import torch

from ccnet.models.cca import CrissCrossAttention, criss_cross_attention, criss_cross_attention_weights
from tests.models.reference import loop_criss_cross_attention


def _qkv(b=2, cq=3, c=5, h=4, w=6, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, cq, h, w, generator=g, dtype=dtype)
    k = torch.randn(b, cq, h, w, generator=g, dtype=dtype)
    v = torch.randn(b, c, h, w, generator=g, dtype=dtype)
    return q, k, v


@pytest.mark.parametrize("shape", [(2, 3, 5, 4, 6), (1, 2, 3, 1, 7), (1, 2, 3, 6, 1), (3, 4, 2, 5, 5), (1, 1, 1, 1, 1)])
def test_matches_loop_reference_outputs_and_gradients(shape):
    b, cq, c, h, w = shape
    q, k, v = (t.requires_grad_() for t in _qkv(b, cq, c, h, w))
    out = criss_cross_attention(q, k, v)
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    ref = loop_criss_cross_attention(q2, k2, v2)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    for mine, theirs in ((q, q2), (k, k2), (v, v2)):
        torch.testing.assert_close(mine.grad, theirs.grad, atol=1e-5, rtol=1e-5)


def test_module_matches_reference_including_parameter_gradients():
    torch.manual_seed(0)
    module = CrissCrossAttention(16)
    with torch.no_grad():
        module.gamma.fill_(0.7)
    x = torch.randn(2, 16, 5, 3, requires_grad=True)
    out = module(x)
    x_ref = x.detach().clone().requires_grad_()
    ref = x_ref + module.gamma * loop_criss_cross_attention(
        module.query_conv(x_ref), module.key_conv(x_ref), module.value_conv(x_ref)
    )
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(out)
    params = list(module.parameters())
    mine = torch.autograd.grad(out, [x] + params, grad)
    theirs = torch.autograd.grad(ref, [x_ref] + params, grad)
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_gradcheck_float64():
    q, k, v = (t.requires_grad_() for t in _qkv(1, 2, 3, 3, 4, dtype=torch.float64))
    assert torch.autograd.gradcheck(criss_cross_attention, (q, k, v), eps=1e-6, atol=1e-5)


def test_official_parameter_names_and_identity_at_init():
    module = CrissCrossAttention(64)
    names = {n for n, _ in module.named_parameters()}
    assert names == {
        "query_conv.weight",
        "query_conv.bias",
        "key_conv.weight",
        "key_conv.bias",
        "value_conv.weight",
        "value_conv.bias",
        "gamma",
    }
    assert module.query_conv.out_channels == 8 and module.value_conv.out_channels == 64
    assert module.gamma.item() == 0.0
    x = torch.randn(1, 64, 4, 5)
    torch.testing.assert_close(module(x), x)


def test_attention_is_a_distribution_over_the_cross_with_diagonal_counted_once():
    q, k, _ = _qkv(2, 3, 1, 5, 4)
    attn_h, attn_w = criss_cross_attention_weights(q, k)
    total = attn_h.sum(-1) + attn_w.sum(-1)
    torch.testing.assert_close(total, torch.ones_like(total))
    idx = torch.arange(5)
    assert torch.all(attn_h[:, idx, :, idx] == 0)


def _receptive_gradient(recurrence: int, u=(2, 3), size=(6, 7)) -> torch.Tensor:
    torch.manual_seed(1)
    module = CrissCrossAttention(8, reduction=2)
    with torch.no_grad():
        module.gamma.fill_(1.0)
    x = torch.randn(1, 8, *size, requires_grad=True)
    y = x
    for _ in range(recurrence):
        y = module(y)
    y[0, :, u[0], u[1]].sum().backward()
    return x.grad.abs().sum(1)[0]  # (H, W)


def test_one_loop_sees_only_row_and_column():
    u = (2, 3)
    grad = _receptive_gradient(1, u)
    cross = torch.zeros_like(grad, dtype=torch.bool)
    cross[u[0], :] = True
    cross[:, u[1]] = True
    assert torch.all(grad[~cross] == 0)
    assert torch.all(grad[cross] > 0)


def test_two_loops_see_the_whole_image():
    grad = _receptive_gradient(2)
    assert torch.all(grad > 0)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 3e-2), (torch.float16, 5e-3)])
def test_half_precision_close_to_float32(dtype, tol):
    """Tolerance: a few units of the format's epsilon (bf16 2^-8, fp16 2^-11) relative to the output
    scale (~1); softmax runs in float32 for both."""
    q, k, v = _qkv(2, 4, 6, 5, 7)
    ref = criss_cross_attention(q, k, v)
    out = criss_cross_attention(q.to(dtype), k.to(dtype), v.to(dtype))
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)


def test_non_contiguous_and_channels_last_inputs():
    q, k, v = _qkv(2, 3, 5, 6, 4)
    ref = loop_criss_cross_attention(q, k, v)
    q_t = q.transpose(2, 3).contiguous().transpose(2, 3)
    assert not q_t.is_contiguous()
    cl = [t.contiguous(memory_format=torch.channels_last) for t in (q, k, v)]
    torch.testing.assert_close(criss_cross_attention(q_t, k, v), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(criss_cross_attention(*cl), ref, atol=1e-5, rtol=1e-5)
    module = CrissCrossAttention(16)
    x = torch.randn(2, 16, 5, 6)
    torch.testing.assert_close(module(x.contiguous(memory_format=torch.channels_last)), module(x))


def test_rejects_mismatched_shapes():
    q, k, v = _qkv(1, 2, 3, 4, 5)
    with pytest.raises(ValueError, match="share batch and spatial size"):
        criss_cross_attention(q, k, v[..., :4])


@pytest.mark.slow
def test_module_under_torch_compile():
    torch.manual_seed(0)
    module = CrissCrossAttention(16)
    with torch.no_grad():
        module.gamma.fill_(0.5)
    x = torch.randn(1, 16, 5, 6)
    compiled = torch.compile(module)
    torch.testing.assert_close(compiled(x), module(x), atol=1e-5, rtol=1e-5)
