"""RepDistiller's CIFAR ResNets (basic blocks): resnet8 ... resnet110, resnet8x4, resnet32x4.

Source: HobbitLong/RepDistiller, ``models/resnet.py`` (itself ported from fb.resnet.torch by Wei Yang).
Module names, layer order, initialisation and the feature list are RepDistiller's, so its checkpoints load
with ``strict=True``.

Feature list (``with_features=True``): ``[stem, layer1, layer2, layer3, pooled]`` where the stem is
``relu(bn1(conv1(x)))`` and each stage output is taken after the final ReLU of its last block;
with ``preact=True`` the stage outputs are taken before that ReLU (``out + residual``), as in RepDistiller.

Deviations: ``forward(x, with_features=False, preact=False)`` returns ``logits`` or ``(logits, feats)``
(RepDistiller: ``forward(x, is_feat, preact)`` returning ``(feats, logits)``); the unused helpers
``get_feat_modules`` / ``get_bn_before_relu`` are omitted; the default class count is 100 (CIFAR-100).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection; the last block of a stage also returns its preact."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        is_last: bool = False,
    ) -> None:
        super().__init__()
        self.is_last = is_last
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            residual = self.downsample(x)
        out += residual
        preact = out
        out = F.relu(out)
        return (out, preact) if self.is_last else out


class Bottleneck(nn.Module):
    """1x1 - 3x3 - 1x1 bottleneck (expansion 4). Not used by any registered model; kept for completeness."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        is_last: bool = False,
    ) -> None:
        super().__init__()
        self.is_last = is_last
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            residual = self.downsample(x)
        out += residual
        preact = out
        out = F.relu(out)
        return (out, preact) if self.is_last else out


class ResNet(nn.Module):
    """CIFAR ResNet with three stages; ``num_filters`` = [stem, stage1, stage2, stage3] widths."""

    def __init__(
        self, depth: int, num_filters: list[int], block_name: str = "BasicBlock", num_classes: int = 100
    ) -> None:
        super().__init__()
        if block_name.lower() == "basicblock":
            if (depth - 2) % 6 != 0:
                raise ValueError(f"basic-block depth must be 6n+2, got {depth}")
            n = (depth - 2) // 6
            block: type[BasicBlock] | type[Bottleneck] = BasicBlock
        elif block_name.lower() == "bottleneck":
            if (depth - 2) % 9 != 0:
                raise ValueError(f"bottleneck depth must be 9n+2, got {depth}")
            n = (depth - 2) // 9
            block = Bottleneck
        else:
            raise ValueError(f"unknown block_name {block_name!r}; choose one of: BasicBlock, Bottleneck")

        self.inplanes = num_filters[0]
        self.conv1 = nn.Conv2d(3, num_filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, num_filters[1], n)
        self.layer2 = self._make_layer(block, num_filters[2], n, stride=2)
        self.layer3 = self._make_layer(block, num_filters[3], n, stride=2)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(num_filters[3] * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, is_last=(blocks == 1))]
        self.inplanes = planes * block.expansion
        for i in range(1, blocks):
            layers.append(block(self.inplanes, planes, is_last=(i == blocks - 1)))
        return nn.Sequential(*layers)

    def forward(
        self, x: Tensor, with_features: bool = False, preact: bool = False, prepool: bool = False
    ) -> Tensor | tuple[Tensor, Tensor] | tuple[Tensor, list[Tensor]]:
        x = self.relu(self.bn1(self.conv1(x)))  # 32x32
        f0 = x
        x, f1_pre = self.layer1(x)  # 32x32
        f1 = x
        x, f2_pre = self.layer2(x)  # 16x16
        f2 = x
        x, f3_pre = self.layer3(x)  # 8x8
        f3 = x
        x = self.avgpool(x)
        x = x.view(x.size(0), -1)
        f4 = x
        x = self.fc(x)
        if prepool:
            return x, f3
        if not with_features:
            return x
        if preact:
            return x, [f0, f1_pre, f2_pre, f3_pre, f4]
        return x, [f0, f1, f2, f3, f4]


def resnet8(num_classes: int = 100) -> ResNet:
    return ResNet(8, [16, 16, 32, 64], "basicblock", num_classes=num_classes)


def resnet14(num_classes: int = 100) -> ResNet:
    return ResNet(14, [16, 16, 32, 64], "basicblock", num_classes=num_classes)


def resnet20(num_classes: int = 100) -> ResNet:
    return ResNet(20, [16, 16, 32, 64], "basicblock", num_classes=num_classes)


def resnet32(num_classes: int = 100) -> ResNet:
    return ResNet(32, [16, 16, 32, 64], "basicblock", num_classes=num_classes)


def resnet44(num_classes: int = 100) -> ResNet:
    return ResNet(44, [16, 16, 32, 64], "basicblock", num_classes=num_classes)


def resnet56(num_classes: int = 100) -> ResNet:
    return ResNet(56, [16, 16, 32, 64], "basicblock", num_classes=num_classes)


def resnet110(num_classes: int = 100) -> ResNet:
    return ResNet(110, [16, 16, 32, 64], "basicblock", num_classes=num_classes)


def resnet8x4(num_classes: int = 100) -> ResNet:
    return ResNet(8, [32, 64, 128, 256], "basicblock", num_classes=num_classes)


def resnet32x4(num_classes: int = 100) -> ResNet:
    return ResNet(32, [32, 64, 128, 256], "basicblock", num_classes=num_classes)


__all__ = [
    "ResNet",
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet8x4",
    "resnet32x4",
]
