"""RepDistiller's CIFAR ``ShuffleV1`` (ShuffleNet v1, groups 3, widths 240/480/960, blocks 4/8/4).

Source: HobbitLong/RepDistiller, ``models/ShuffleNetv1.py`` (kuangliu/pytorch-cifar style). Module names,
layer order and the feature list are RepDistiller's, so its checkpoints load with ``strict=True``. No explicit
initialisation (PyTorch defaults), as in RepDistiller. The stem is a 1x1 conv at full resolution.

Feature list: ``[stem, layer1, layer2, layer3, pooled]``; stem = ``relu(bn1(conv1(x)))``, stage outputs after
the final ReLU of each stage; ``preact=True`` gives them before it (concat or sum of the branches).

Deviations: ``forward(x, with_features=False, preact=False)`` returns ``logits`` or ``(logits, feats)``;
default class count 100.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ShuffleBlock(nn.Module):
    """Channel shuffle: [N,C,H,W] -> [N,g,C/g,H,W] -> [N,C/g,g,H,W] -> [N,C,H,W]."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.size()
        g = self.groups
        return x.view(n, g, c // g, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


class Bottleneck(nn.Module):
    def __init__(
        self, in_planes: int, out_planes: int, stride: int, groups: int, is_last: bool = False
    ) -> None:
        super().__init__()
        self.is_last = is_last
        self.stride = stride
        mid_planes = int(out_planes / 4)
        g = 1 if in_planes == 24 else groups
        self.conv1 = nn.Conv2d(in_planes, mid_planes, kernel_size=1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.shuffle1 = ShuffleBlock(groups=g)
        self.conv2 = nn.Conv2d(
            mid_planes, mid_planes, kernel_size=3, stride=stride, padding=1, groups=mid_planes, bias=False
        )
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride == 2:
            self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1))

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.shuffle1(out)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        preact = torch.cat([out, res], 1) if self.stride == 2 else out + res
        out = F.relu(preact)
        return (out, preact) if self.is_last else out


class ShuffleNet(nn.Module):
    def __init__(self, cfg: dict, num_classes: int = 100) -> None:
        super().__init__()
        out_planes = cfg["out_planes"]
        num_blocks = cfg["num_blocks"]
        groups = cfg["groups"]
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_planes = 24
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        self.linear = nn.Linear(out_planes[2], num_classes)

    def _make_layer(self, out_planes: int, num_blocks: int, groups: int) -> nn.Sequential:
        layers = []
        for i in range(num_blocks):
            stride = 2 if i == 0 else 1
            cat_planes = self.in_planes if i == 0 else 0
            layers.append(
                Bottleneck(
                    self.in_planes,
                    out_planes - cat_planes,
                    stride=stride,
                    groups=groups,
                    is_last=(i == num_blocks - 1),
                )
            )
            self.in_planes = out_planes
        return nn.Sequential(*layers)

    def forward(
        self, x: Tensor, with_features: bool = False, preact: bool = False, prepool: bool = False
    ) -> Tensor | tuple[Tensor, Tensor] | tuple[Tensor, list[Tensor]]:
        out = F.relu(self.bn1(self.conv1(x)))
        f0 = out
        out, f1_pre = self.layer1(out)
        f1 = out
        out, f2_pre = self.layer2(out)
        f2 = out
        out, f3_pre = self.layer3(out)
        f3 = out
        out = F.avg_pool2d(out, 4)
        out = out.view(out.size(0), -1)
        f4 = out
        out = self.linear(out)
        if prepool:
            return out, f3
        if not with_features:
            return out
        if preact:
            return out, [f0, f1_pre, f2_pre, f3_pre, f4]
        return out, [f0, f1, f2, f3, f4]


def ShuffleV1(num_classes: int = 100) -> ShuffleNet:
    cfg = {"out_planes": [240, 480, 960], "num_blocks": [4, 8, 4], "groups": 3}
    return ShuffleNet(cfg, num_classes=num_classes)


__all__ = ["ShuffleNet", "ShuffleV1"]
