"""RCCA / non-local / FCN heads: structure, shapes, and that R controls how far context travels."""

from __future__ import annotations

import torch
import torch.nn as nn

from ccnet.models.heads import FCNHead, NonLocalBlock, NonLocalHead, RCCAHead


def test_rcca_head_structure_and_shapes():
    head = RCCAHead(64, num_classes=5, recurrence=2, bottleneck_channels=32)
    assert head.conva[0].out_channels == 16 and head.conva[0].kernel_size == (3, 3) and head.conva[0].bias is None
    assert head.bottleneck[0].in_channels == 64 + 16
    assert isinstance(head.bottleneck[3], nn.Dropout2d) and head.bottleneck[3].p == 0.1
    assert head.bottleneck[4].out_channels == 5 and head.bottleneck[4].kernel_size == (1, 1)
    head.eval()
    x = torch.randn(2, 64, 7, 9)
    assert head(x).shape == (2, 5, 7, 9)
    assert head.features(x).shape == (2, 32, 7, 9)


def test_rcca_head_hands_convb_the_layout_of_conva(monkeypatch):
    """The lean path computes channels_last; the head returns to conva's layout before convb, and
    every implementation gives the same features."""
    head = RCCAHead(32, num_classes=3, recurrence=2, bottleneck_channels=16).eval()
    nn.init.constant_(head.cca.gamma, 0.5)
    seen = []
    head.convb.register_forward_pre_hook(lambda _m, args: seen.append(args[0].is_contiguous()))
    x = torch.randn(2, 32, 5, 6)
    with torch.no_grad():
        for impl in ("lean", "reference"):
            monkeypatch.setenv("CCNET_CCA_IMPL", impl)
            seen.clear()
            out = head.context(x)
            assert seen == [True], impl
            if impl == "lean":
                lean = out
        torch.testing.assert_close(lean, out, atol=1e-5, rtol=1e-5)
        monkeypatch.setenv("CCNET_CCA_IMPL", "lean")
        seen.clear()
        head.to(memory_format=torch.channels_last).context(x.contiguous(memory_format=torch.channels_last))
        assert seen == [False]  # channels_last in, channels_last kept


def test_recurrence_zero_is_the_plain_baseline():
    head = RCCAHead(32, num_classes=3, recurrence=0)
    assert head.cca is None
    assert not any("cca" in n for n, _ in head.named_parameters())


def test_recurrence_shares_one_module():
    one, three = RCCAHead(32, 3, recurrence=1), RCCAHead(32, 3, recurrence=3)
    assert sum(p.numel() for p in one.parameters()) == sum(p.numel() for p in three.parameters())


def _context_reach(head: nn.Module, u=(1, 1), size=(6, 6)) -> torch.Tensor:
    """Which input positions influence the head's context features at u (gradient magnitude)."""
    torch.manual_seed(0)
    head.eval()
    for m in head.modules():
        if hasattr(m, "gamma"):
            nn.init.constant_(m.gamma, 1.0)
    x = torch.randn(1, head.conva[0].in_channels, *size, requires_grad=True)
    # 1×1 convs around the attention isolate the attention's reach from the 3×3 convs' neighbourhoods.
    head.conva[0] = nn.Conv2d(head.conva[0].in_channels, head.conva[0].out_channels, 1, bias=False)
    head.convb[0] = nn.Conv2d(head.convb[0].in_channels, head.convb[0].out_channels, 1, bias=False)
    head.conva[2] = head.convb[2] = nn.Identity()  # no ReLU dead zones: measure connectivity only
    head.context(x)[0, :, u[0], u[1]].sum().backward()
    return x.grad.abs().sum(1)[0] > 0


def test_head_reach_follows_recurrence():
    assert _context_reach(RCCAHead(64, 3, recurrence=0)).sum() == 1
    reach1 = _context_reach(RCCAHead(64, 3, recurrence=1))
    assert reach1.sum() == 6 + 6 - 1 and reach1[1].all() and reach1[:, 1].all()
    assert _context_reach(RCCAHead(64, 3, recurrence=2)).all()


def test_nonlocal_head_sees_everything_in_one_step():
    head = NonLocalHead(16, 3)
    nn.init.constant_(head.nonlocal_block.out[1].weight, 1.0)
    head.conva[0] = nn.Conv2d(16, 4, 1, bias=False)
    head.convb[0] = nn.Conv2d(4, 4, 1, bias=False)
    head.conva[2] = head.convb[2] = nn.Identity()
    head.eval()
    x = torch.randn(1, 16, 5, 5, requires_grad=True)
    head.context(x)[0, :, 0, 0].sum().backward()
    assert (x.grad.abs().sum(1) > 0).all()


def test_nonlocal_block_starts_as_identity_and_matches_explicit_formula():
    block = NonLocalBlock(8).eval()
    x = torch.randn(2, 8, 3, 4)
    torch.testing.assert_close(block(x), x)
    nn.init.constant_(block.out[1].weight, 1.0)
    theta = block.theta(x).flatten(2)  # (B, C', N)
    phi = block.phi(x).flatten(2)
    g = block.g(x).flatten(2)
    n = theta.shape[-1]
    y = torch.zeros_like(g)
    for b in range(2):
        for i in range(n):
            weights = torch.softmax(torch.stack([theta[b, :, i] @ phi[b, :, j] for j in range(n)]), 0)
            y[b, :, i] = sum(weights[j] * g[b, :, j] for j in range(n))
    expected = x + block.out(y.view(2, -1, 3, 4))
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


def test_fcn_head():
    head = FCNHead(32, 4, channels=8, conv_bias=True).eval()
    assert head.layers[0].bias is not None
    assert head(torch.randn(1, 32, 5, 6)).shape == (1, 4, 5, 6)


def test_context_init_sets_the_residual_scale_of_both_context_modules():
    # Default 0 (paper): the context branch starts switched off.
    assert float(RCCAHead(32, 3, inter_channels=16).cca.gamma.detach()) == 0.0
    assert torch.all(NonLocalHead(32, 3, inter_channels=16).nonlocal_block.out[1].weight == 0)
    head = RCCAHead(32, 3, inter_channels=16, context_init=1.0).eval()
    assert float(head.cca.gamma.detach()) == 1.0
    nl = NonLocalHead(32, 3, inter_channels=16, context_init=0.5)
    assert torch.all(nl.nonlocal_block.out[1].weight == 0.5)
    # With gamma = 1 the head's output depends on the attention (it differs from gamma = 0).
    x = torch.randn(1, 16, 5, 6)
    off = RCCAHead(32, 3, inter_channels=16).eval().cca
    off.load_state_dict({**head.cca.state_dict(), "gamma": torch.zeros(1)})
    assert not torch.allclose(head.cca(x), off(x))
    assert torch.equal(off(x), x)
