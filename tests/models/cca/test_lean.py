"""The lean criss-cross attention operator (ccnet.models.cca.lean) against the loop-based reference:
its autograd function (gradcheck, what it saves, layouts, dtypes). The fused module application is
tested in test_lean_block.py, the choice between implementations in test_registry.py."""

from __future__ import annotations

import pytest
import torch

from ccnet.models.cca import lean_ops
from ccnet.models.cca.lean import LeanCrissCrossAttention, criss_cross_attention_lean
from tests.models.helpers import loop_reference, make_inputs, outputs_and_grads
from tests.models.reference import loop_criss_cross_attention

SHAPES = [(2, 3, 5, 4, 6), (1, 2, 3, 1, 7), (1, 2, 3, 6, 1), (3, 4, 2, 5, 5), (1, 1, 1, 1, 1)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("fused", [False, True], ids=["plain", "gamma_residual"])
def test_matches_loop_reference_outputs_and_gradients(shape, fused):
    q, k, v, gamma, x = make_inputs(*shape)
    args = (q, k, v, gamma, x) if fused else (q, k, v)
    grad = torch.randn(shape[0], shape[2], shape[3], shape[4], generator=torch.Generator().manual_seed(1))
    out, grads = outputs_and_grads(criss_cross_attention_lean, args, grad)
    ref, ref_grads = outputs_and_grads(loop_reference, args, grad)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for name, mine, theirs in zip("q k v gamma x".split(), grads, ref_grads):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5, msg=lambda m, name=name: f"d{name}: {m}")


def test_gradcheck_float64():
    q, k, v, gamma, x = (t.requires_grad_() for t in make_inputs(2, 2, 3, 3, 4, dtype=torch.float64))
    assert torch.autograd.gradcheck(LeanCrissCrossAttention.apply, (q, k, v, gamma, x), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(LeanCrissCrossAttention.apply, (q, k, v, None, None), eps=1e-6, atol=1e-6)


def test_saves_only_inputs_gamma_and_per_position_statistics():
    """The memory claim: no attention map, no ``out`` — q, k, v, γ and one (B, H, W) float32 lse.
    v and channels_last q, k are kept as they are (no copies); other q, k (C/8 channels) once,
    positions-last, instead of the originals."""
    q, k, v, gamma, x = make_inputs(2, 3, 5, 4, 6)
    channels_last = [t.contiguous(memory_format=torch.channels_last).requires_grad_() for t in (q, k, v)]
    for tensors in ([t.requires_grad_() for t in (q, k, v)], channels_last):
        y = criss_cross_attention_lean(*tensors, gamma.requires_grad_(), x.requires_grad_())
        saved = y.grad_fn.saved_tensors
        assert [tuple(t.shape) for t in saved] == [(2, 4, 6, 3), (2, 4, 6, 3), (2, 5, 4, 6), (1,), (2, 4, 6)]
        assert saved[2].data_ptr() == tensors[2].data_ptr() and saved[3].data_ptr() == gamma.data_ptr()
        assert saved[4].dtype == torch.float32
    for original, kept in zip(channels_last[:2], saved[:2]):
        assert kept.data_ptr() == original.data_ptr()


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float16, 3e-3)])
def test_half_precision_close_to_loop_reference(dtype, tol):
    """Tolerances: the output and the value gradient are aggregated in the half format (attention
    weights rounded to it, relative error 2^-9 for bf16 and 2^-12 for fp16, summed over H + W − 1
    terms of unit-scale values), energies and softmax are float32. The reference runs in float32 on
    the same rounded inputs."""
    q, k, v, gamma, x = make_inputs(2, 4, 6, 5, 7, dtype=dtype)
    grad = torch.randn(2, 6, 5, 7, generator=torch.Generator().manual_seed(1)).to(dtype)
    out, grads = outputs_and_grads(criss_cross_attention_lean, (q, k, v), grad)
    ref, ref_grads = outputs_and_grads(loop_criss_cross_attention, [t.float() for t in (q, k, v)], grad.float())
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)
    for mine, theirs in zip(grads, ref_grads):
        torch.testing.assert_close(mine.float(), theirs, atol=2 * tol, rtol=2 * tol)


def test_half_values_with_float32_gamma_follow_type_promotion():
    """Under autocast the module's γ stays float32 while convolutions give bf16: like the unfused
    ``x + γ · out``, the result is float32 and every gradient comes back in its input's dtype."""
    q, k, v, _, x = make_inputs(1, 2, 3, 4, 5, dtype=torch.bfloat16)
    gamma = torch.tensor([0.5], requires_grad=True)
    tensors = [t.requires_grad_() for t in (q, k, v, x)]
    y = criss_cross_attention_lean(q, k, v, gamma, x)
    assert y.dtype == torch.float32
    y.sum().backward()
    assert [t.grad.dtype for t in tensors] == [torch.bfloat16] * 4 and gamma.grad.dtype == torch.float32
    ref = x.float() + gamma.detach() * loop_criss_cross_attention(q.float(), k.float(), v.float())
    torch.testing.assert_close(y.detach(), ref, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("chunk", [128, 2], ids=["one_chunk", "chunks_of_2"])
def test_channels_last_non_contiguous_inputs_and_expanded_gradient(chunk, monkeypatch):
    monkeypatch.setattr(lean_ops, "CHANNEL_CHUNK", chunk)  # 5 value channels: chunks 2 + 2 + 1
    q, k, v, gamma, x = make_inputs(2, 3, 5, 6, 4)
    ref, ref_grads = outputs_and_grads(loop_reference, (q, k, v, gamma, x), torch.ones(2, 5, 6, 4))
    channels_last = lambda t: t.contiguous(memory_format=torch.channels_last)  # noqa: E731
    transposed = lambda t: t.transpose(2, 3).contiguous().transpose(2, 3)  # noqa: E731 (non-contiguous)
    for convert_qkv, convert_x in (
        (channels_last, channels_last),
        (transposed, transposed),
        (channels_last, transposed),
        (transposed, channels_last),
    ):
        tensors = [convert_qkv(q), convert_qkv(k), convert_qkv(v), gamma.clone(), convert_x(x)]
        tensors = [t.requires_grad_() for t in tensors]
        out = criss_cross_attention_lean(*tensors)
        out.sum().backward()  # an expanded (stride-0) incoming gradient
        assert out.is_contiguous(memory_format=torch.channels_last) == (convert_x is channels_last)  # x's layout
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        for t, g in zip(tensors, ref_grads):
            torch.testing.assert_close(t.grad, g, atol=1e-5, rtol=1e-5)


def test_only_requested_gradients_and_no_graph_without_grad():
    q, k, v, gamma, x = make_inputs(1, 2, 3, 4, 5)
    v.requires_grad_()
    out = criss_cross_attention_lean(q, k, v, gamma, x)
    (grad_v,) = torch.autograd.grad(out, [v], torch.ones_like(out))
    _, (ref_v,) = outputs_and_grads(lambda v_: loop_reference(q, k, v_, gamma, x), [v], torch.ones_like(out))
    torch.testing.assert_close(grad_v, ref_v, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert criss_cross_attention_lean(q, k, v, gamma, x).grad_fn is None
