"""Independent re-implementations of the upstream CCNet models, written for the converter tests.

They reproduce the *parameter naming and forward semantics* of

- the official release (speedinghzl/CCNet ``networks/ccnet.py``): ResNet-101 with a deep stem
  ``conv1/bn1 … conv3/bn3``, dilation 2/4 in every block, ``head`` = ``RCCAModule``, ``dsn``; its
  InPlace-ABN norm layers are modelled by :class:`ABN` (BatchNorm statistics and affine parameters,
  no ``num_batches_tracked``, InPlace-ABN's own scale ``|weight| + eps``, fused activation: identity in
  the backbone, leaky-ReLU(0.01) in heads); the model takes BGR images;
- mmsegmentation's ``EncoderDecoder`` with ``ResNetV1c`` (``stem.N``, contracted dilation),
  ``CCHead`` (``convs.{0,1}``, ``cca`` with γ in a ``Scale`` module, ``conv_cat``, ``conv_seg``) and an
  ``FCNHead`` auxiliary head.

Nothing here imports ``ccnet``: the criss-cross attention follows mmcv's formulation (an additive
−inf diagonal matrix and a (B, W, H, H) energy layout), not ours.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def criss_cross(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """mmcv-style criss-cross aggregation ``out_H + out_W`` (u counted once, via the row)."""
    _, _, h, _ = query.shape
    neg_inf_diag = torch.diag(torch.full((h,), float("-inf")))
    energy_h = (torch.einsum("bchw,bciw->bwhi", query, key) + neg_inf_diag).transpose(1, 2)  # (B, H, W, H)
    energy_w = torch.einsum("bchw,bchj->bhwj", query, key)  # (B, H, W, W)
    attn = F.softmax(torch.cat([energy_h, energy_w], dim=-1), dim=-1)
    out = torch.einsum("bciw,bhwi->bchw", value, attn[..., :h])
    return out + torch.einsum("bchj,bhwj->bchw", value, attn[..., h:])


class ABN(nn.Module):
    """InPlace-ABN as saved by the official release: weight, bias, running_mean, running_var.

    Inference follows the ``inplace_abn`` kernels (``forward`` in ``src/inplace_abn_cpu.cpp``):
    ``scale = (|weight| + eps) / sqrt(var + eps)``, ``y = act(x * scale + bias - mean * scale)``.
    The absolute value is the point: a negative weight scales like a positive one.
    """

    eps = 1e-5

    def __init__(self, channels: int, activation: str = "leaky_relu") -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        scale = (self.weight.abs() + self.eps) / torch.sqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        x = x * scale[:, None, None] + shift[:, None, None]
        return F.leaky_relu(x, 0.01) if self.activation == "leaky_relu" else x


class OfficialCCA(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query_conv = nn.Conv2d(dim, dim // 8, 1)
        self.key_conv = nn.Conv2d(dim, dim // 8, 1)
        self.value_conv = nn.Conv2d(dim, dim, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.gamma * criss_cross(self.query_conv(x), self.key_conv(x), self.value_conv(x)) + x


class OfficialBottleneck(nn.Module):
    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1, downsample: nn.Module = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = ABN(planes, "identity")
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = ABN(planes, "identity")
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = ABN(planes * 4, "identity")
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class OfficialCCNet(nn.Module):
    """``networks/ccnet.py``'s ResNet (Res_Deeplab / Seg_Model): returns [head logits, dsn logits]
    at feature resolution, from a BGR mean-subtracted input."""

    def __init__(self, num_classes: int, recurrence: int = 2, layers: Sequence[int] = (3, 4, 23, 3)) -> None:
        super().__init__()
        self.recurrence = recurrence
        self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
        self.bn1 = ABN(64, "identity")
        self.conv2 = nn.Conv2d(64, 64, 3, 1, 1, bias=False)
        self.bn2 = ABN(64, "identity")
        self.conv3 = nn.Conv2d(64, 128, 3, 1, 1, bias=False)
        self.bn3 = ABN(128, "identity")
        self.maxpool = nn.MaxPool2d(3, 2, 1, ceil_mode=True)
        self.inplanes = 128
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], dilation=2)
        self.layer4 = self._make_layer(512, layers[3], dilation=4)
        self.head = nn.Module()
        self.head.conva = nn.Sequential(nn.Conv2d(2048, 512, 3, padding=1, bias=False), ABN(512))
        self.head.cca = OfficialCCA(512)
        self.head.convb = nn.Sequential(nn.Conv2d(512, 512, 3, padding=1, bias=False), ABN(512))
        self.head.bottleneck = nn.Sequential(
            nn.Conv2d(2048 + 512, 512, 3, padding=1, bias=False),
            ABN(512),
            nn.Dropout2d(0.1),
            nn.Conv2d(512, num_classes, 1),
        )
        self.dsn = nn.Sequential(
            nn.Conv2d(1024, 512, 3, padding=1), ABN(512), nn.Dropout2d(0.1), nn.Conv2d(512, num_classes, 1)
        )

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False), ABN(planes * 4, "identity")
            )
        layers = [OfficialBottleneck(self.inplanes, planes, stride, dilation, downsample)]
        self.inplanes = planes * 4
        layers += [OfficialBottleneck(self.inplanes, planes, dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> List[Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        x = self.layer3(self.layer2(self.layer1(self.maxpool(x))))
        dsn = self.dsn(x)
        x = self.layer4(x)
        out = self.head.conva(x)
        for _ in range(self.recurrence):
            out = self.head.cca(out)
        out = self.head.bottleneck(torch.cat([x, self.head.convb(out)], 1))
        return [out, dsn]


class Scale(nn.Module):
    """mmcv ``Scale``: a 0-d learnable factor."""

    def __init__(self, scale: float = 0.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale, dtype=torch.float))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class MMCVCrissCrossAttention(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.query_conv = nn.Conv2d(channels, channels // 8, 1)
        self.key_conv = nn.Conv2d(channels, channels // 8, 1)
        self.value_conv = nn.Conv2d(channels, channels, 1)
        self.gamma = Scale(0.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.gamma(criss_cross(self.query_conv(x), self.key_conv(x), self.value_conv(x))) + x


def conv_module(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> nn.Sequential:
    """mmcv ``ConvModule`` (conv without bias, ``bn``, ReLU) with its child names."""
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(cin, cout, kernel, stride, padding, bias=False), bn=nn.BatchNorm2d(cout), activate=nn.ReLU()
        )
    )


class MMSegBottleneck(nn.Module):
    """mmseg ResNet ``Bottleneck``, style='pytorch' (stride on the 3×3 conv)."""

    def __init__(self, inplanes: int, planes: int, stride: int, dilation: int, downsample: nn.Module = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNetV1c(nn.Module):
    """mmseg ``ResNetV1c`` with strides (1, 2, 1, 1), dilations (1, 1, 2, 4), contract_dilation=True."""

    def __init__(self, depth: int = 50) -> None:
        super().__init__()
        blocks = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
        self.stem = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, 1, 1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, 1, 1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
        )
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for i, (n, stride, dilation) in enumerate(zip(blocks, (1, 2, 1, 1), (1, 1, 2, 4))):
            planes = 64 * 2**i
            downsample = None
            if stride != 1 or inplanes != planes * 4:
                downsample = nn.Sequential(
                    nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
                )
            first = dilation // 2 if dilation > 1 else dilation
            layer = [MMSegBottleneck(inplanes, planes, stride, first, downsample)]
            inplanes = planes * 4
            layer += [MMSegBottleneck(inplanes, planes, 1, dilation) for _ in range(1, n)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))

    def forward(self, x: Tensor) -> List[Tensor]:
        x = self.maxpool(self.stem(x))
        outs = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            outs.append(x)
        return outs


class CCHead(nn.Module):
    """mmseg ``CCHead`` (FCNHead with num_convs=2, concat_input=True, kernel 3)."""

    def __init__(self, num_classes: int, in_channels: int = 2048, channels: int = 512, recurrence: int = 2) -> None:
        super().__init__()
        self.recurrence = recurrence
        self.convs = nn.Sequential(
            conv_module(in_channels, channels, 3, padding=1), conv_module(channels, channels, 3, padding=1)
        )
        self.cca = MMCVCrissCrossAttention(channels)
        self.conv_cat = conv_module(in_channels + channels, channels, 3, padding=1)
        self.dropout = nn.Dropout2d(0.1)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.convs[0](x)
        for _ in range(self.recurrence):
            out = self.cca(out)
        out = self.convs[1](out)
        out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.conv_seg(self.dropout(out))


class AuxFCNHead(nn.Module):
    """mmseg ``FCNHead`` with num_convs=1, concat_input=False."""

    def __init__(self, num_classes: int, in_channels: int = 1024, channels: int = 256) -> None:
        super().__init__()
        self.convs = nn.Sequential(conv_module(in_channels, channels, 3, padding=1))
        self.dropout = nn.Dropout2d(0.1)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_seg(self.dropout(self.convs(x)))


class MMSegCCNet(nn.Module):
    """mmseg ``EncoderDecoder`` for CCNet; ``forward`` is ``encode_decode`` (logits at input size)."""

    def __init__(self, num_classes: int, depth: int = 50, align_corners: bool = False) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.backbone = ResNetV1c(depth)
        self.decode_head = CCHead(num_classes)
        self.auxiliary_head = AuxFCNHead(num_classes)

    def forward(self, img: Tensor) -> Tensor:
        out = self.decode_head(self.backbone(img)[3])
        return F.interpolate(out, size=img.shape[2:], mode="bilinear", align_corners=self.align_corners)


def randomize_(model: nn.Module, seed: int = 0, negative: float = 0.1) -> nn.Module:
    """Give every norm layer non-trivial statistics and affine parameters, every bias a value and
    every γ a non-zero value, so a wrong mapping changes the output. The last norm of each residual
    branch gets a small scale, keeping activations of a 101-layer random network in range. A
    ``negative`` fraction of the norm weights is negated, as training leaves some InPlace-ABN
    weights (whose sign InPlace-ABN ignores)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            if hasattr(module, "running_var"):
                n = module.running_var.numel()
                small = name.endswith("bn3") and ".layer" in f".{name}"
                sign = torch.where(torch.rand(n, generator=gen) < negative, -1.0, 1.0)
                module.weight.copy_(
                    sign * (torch.rand(n, generator=gen) * (0.2 if small else 1.0) + (0.05 if small else 0.5))
                )
                module.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            elif isinstance(module, nn.Conv2d) and module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
        for name, param in model.named_parameters():
            if name.endswith("gamma") or name.endswith("gamma.scale"):
                param.fill_(0.8)
    return model.eval()
