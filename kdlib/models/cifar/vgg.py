"""RepDistiller's CIFAR VGGs with BatchNorm: vgg8, vgg11, vgg13, vgg16, vgg19.

Source: HobbitLong/RepDistiller, ``models/vgg.py`` (Wei Yang's VGG for CIFAR, FC layers removed).
RepDistiller's ``model_dict`` maps ``'vgg8'`` to ``vgg8_bn`` (and likewise 11/13/16/19), so the registered
names are the BatchNorm variants; the plain variants are not provided. Module names (``block0`` ...
``block4``, ``classifier``), initialisation (conv ~ N(0, 2/(k*k*out)), linear ~ N(0, 0.01), biases 0) and the
feature list are RepDistiller's, so its checkpoints load with ``strict=True``.

Feature list: ``[block0, block1, block2, block3, block4, pooled]``, each after its closing ReLU (each block
ends in conv-BN; the ReLU is applied in ``forward``); ``preact=True`` gives blocks 1-4 before that ReLU, as in
RepDistiller (block0 is always post-ReLU). ``pool3`` is only applied for 64x64 inputs, ``pool4`` is a global
average pool, as in RepDistiller.

Deviations: ``forward(x, with_features=False, preact=False)`` returns ``logits`` or ``(logits, feats)``;
default class count 100.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

# RepDistiller's configurations: channel widths per block ('S' is vgg8).
CFG: dict[str, list[list[int]]] = {
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "D": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "E": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
    "S": [[64], [128], [256], [512], [512]],
}


class VGG(nn.Module):
    def __init__(self, cfg: list[list[int]], batch_norm: bool = False, num_classes: int = 100) -> None:
        super().__init__()
        self.block0 = self._make_layers(cfg[0], batch_norm, 3)
        self.block1 = self._make_layers(cfg[1], batch_norm, cfg[0][-1])
        self.block2 = self._make_layers(cfg[2], batch_norm, cfg[1][-1])
        self.block3 = self._make_layers(cfg[3], batch_norm, cfg[2][-1])
        self.block4 = self._make_layers(cfg[4], batch_norm, cfg[3][-1])

        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))

        self.classifier = nn.Linear(512, num_classes)
        self._initialize_weights()

    def forward(
        self, x: Tensor, with_features: bool = False, preact: bool = False, prepool: bool = False
    ) -> Tensor | tuple[Tensor, Tensor] | tuple[Tensor, list[Tensor]]:
        h = x.shape[2]
        x = F.relu(self.block0(x))
        f0 = x
        x = self.pool0(x)
        x = self.block1(x)
        f1_pre = x
        x = F.relu(x)
        f1 = x
        x = self.pool1(x)
        x = self.block2(x)
        f2_pre = x
        x = F.relu(x)
        f2 = x
        x = self.pool2(x)
        x = self.block3(x)
        f3_pre = x
        x = F.relu(x)
        f3 = x
        if h == 64:
            x = self.pool3(x)
        x = self.block4(x)
        f4_pre = x
        x = F.relu(x)
        f4 = x
        x = self.pool4(x)
        x = x.view(x.size(0), -1)
        f5 = x
        x = self.classifier(x)
        if prepool:
            return x, f4
        if not with_features:
            return x
        if preact:
            return x, [f0, f1_pre, f2_pre, f3_pre, f4_pre, f5]
        return x, [f0, f1, f2, f3, f4, f5]

    @staticmethod
    def _make_layers(cfg: list[int], batch_norm: bool = False, in_channels: int = 3) -> nn.Sequential:
        layers: list[nn.Module] = []
        for v in cfg:
            conv2d = nn.Conv2d(in_channels, v, kernel_size=3, padding=1)
            if batch_norm:
                layers += [conv2d, nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            else:
                layers += [conv2d, nn.ReLU(inplace=True)]
            in_channels = v
        return nn.Sequential(*layers[:-1])  # the block's last ReLU is applied in forward

    def _initialize_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / fan))
                if m.bias is not None:
                    m.bias.data.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.weight.data.normal_(0, 0.01)
                m.bias.data.zero_()


def vgg8_bn(num_classes: int = 100) -> VGG:
    return VGG(CFG["S"], batch_norm=True, num_classes=num_classes)


def vgg11_bn(num_classes: int = 100) -> VGG:
    return VGG(CFG["A"], batch_norm=True, num_classes=num_classes)


def vgg13_bn(num_classes: int = 100) -> VGG:
    return VGG(CFG["B"], batch_norm=True, num_classes=num_classes)


def vgg16_bn(num_classes: int = 100) -> VGG:
    return VGG(CFG["D"], batch_norm=True, num_classes=num_classes)


def vgg19_bn(num_classes: int = 100) -> VGG:
    return VGG(CFG["E"], batch_norm=True, num_classes=num_classes)


__all__ = ["VGG", "vgg8_bn", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]
