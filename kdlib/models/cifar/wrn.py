"""RepDistiller's CIFAR Wide ResNets: wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2.

Source: HobbitLong/RepDistiller, ``models/wrn.py`` (original author Wei Yang). Pre-activation blocks; module
names (``block1.layer.N``, ``convShortcut``), initialisation (conv ~ N(0, 2/(k*k*out)), BN 1/0, linear bias 0)
and the feature list are RepDistiller's, so its checkpoints load with ``strict=True``.

Feature list: ``[stem, block1, block2, block3, pooled]``. Because the blocks are pre-activation,
RepDistiller's WRN features are *not* post-ReLU: the stem is the raw ``conv1`` output and each stage
output is the raw residual sum. With ``preact=True`` RepDistiller passes stage outputs 1-3 through the
BatchNorm that follows them (``block2.layer[0].bn1``, ``block3.layer[0].bn1``, ``bn1``), i.e. the tensor
right before the next ReLU. This is reproduced exactly, including RepDistiller's side effect: in train
mode that extra BatchNorm call updates those layers' running statistics a second time per step.

``prepool=True`` returns ``(logits, relu(bn1(block3 output)))``, the map the global pool reads (post-BN-ReLU,
128x8x8 on wrn_16_2): the tap of ICKD's and IE-KD's official code, which ``feats[-2]`` is not.

Deviations: ``forward(x, with_features=False, preact=False)`` returns ``logits`` or ``(logits, feats)``;
default class count 100.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.droprate = drop_rate
        self.equalInOut = in_planes == out_planes
        self.convShortcut = (
            None
            if self.equalInOut
            else nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        if not self.equalInOut:
            x = self.relu1(self.bn1(x))
            out = x
        else:
            out = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(out)))
        if self.droprate > 0:
            out = F.dropout(out, p=self.droprate, training=self.training)
        out = self.conv2(out)
        return torch.add(x if self.equalInOut else self.convShortcut(x), out)


class NetworkBlock(nn.Module):
    def __init__(
        self, nb_layers: int, in_planes: int, out_planes: int, block, stride: int, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                block(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
                for i in range(nb_layers)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(
        self, depth: int, num_classes: int = 100, widen_factor: int = 1, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        n_channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, n_channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, n_channels[0], n_channels[1], BasicBlock, 1, drop_rate)
        self.block2 = NetworkBlock(n, n_channels[1], n_channels[2], BasicBlock, 2, drop_rate)
        self.block3 = NetworkBlock(n, n_channels[2], n_channels[3], BasicBlock, 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(n_channels[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(n_channels[3], num_classes)
        self.nChannels = n_channels[3]

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / fan))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    def forward(
        self, x: Tensor, with_features: bool = False, preact: bool = False, prepool: bool = False
    ) -> Tensor | tuple[Tensor, Tensor] | tuple[Tensor, list[Tensor]]:
        out = self.conv1(x)
        f0 = out
        out = self.block1(out)
        f1 = out
        out = self.block2(out)
        f2 = out
        out = self.block3(out)
        f3 = out
        out = self.relu(self.bn1(out))
        last = out
        out = F.avg_pool2d(out, 8)
        out = out.view(-1, self.nChannels)
        f4 = out
        out = self.fc(out)
        if prepool:
            return out, last
        if not with_features:
            return out
        if preact:
            f1 = self.block2.layer[0].bn1(f1)
            f2 = self.block3.layer[0].bn1(f2)
            f3 = self.bn1(f3)
        return out, [f0, f1, f2, f3, f4]


def wrn_40_2(num_classes: int = 100) -> WideResNet:
    return WideResNet(depth=40, widen_factor=2, num_classes=num_classes)


def wrn_40_1(num_classes: int = 100) -> WideResNet:
    return WideResNet(depth=40, widen_factor=1, num_classes=num_classes)


def wrn_16_2(num_classes: int = 100) -> WideResNet:
    return WideResNet(depth=16, widen_factor=2, num_classes=num_classes)


def wrn_16_1(num_classes: int = 100) -> WideResNet:
    return WideResNet(depth=16, widen_factor=1, num_classes=num_classes)


__all__ = ["WideResNet", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"]
