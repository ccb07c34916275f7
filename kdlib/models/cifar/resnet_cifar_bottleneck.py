"""The CD paper's CIFAR pair: ``resnet50_cifar`` and ``resnet152_cifar``.

Source: Zhou et al., "Channel Distillation" (arXiv 2006.01683), official code zhouzaida/channel-distillation
@ 2464d30: torchvision-style bottleneck ResNets for CIFAR-100 whose stem is a 3x3 stride-1 conv with no
max-pool. Built here from torchvision's own ``ResNet``/``Bottleneck`` (via
:class:`kdlib.models.imagenet.TorchvisionResNet`) by replacing ``conv1`` with a 3x3 stride-1 conv (initialised
as torchvision initialises convs: Kaiming normal, fan-out) and ``maxpool`` with ``nn.Identity``, so the
state-dict keys are torchvision's. Not to be confused with RepDistiller's ``ResNet50`` (different module
names).

Feature list: ``[stem, layer1, layer2, layer3, layer4, pooled]``; stem = ``relu(bn1(conv1(x)))`` (the identity
"max-pool" output); stage outputs post-ReLU, 256x32x32, 512x16x16, 1024x8x8, 2048x4x4 for a 32x32 input;
``preact=True`` as for the torchvision ResNets (before the last ReLU of each stage).
"""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import Bottleneck

from kdlib.models.imagenet import TorchvisionResNet


class CifarBottleneckResNet(TorchvisionResNet):
    def __init__(self, layers: list[int], num_classes: int = 100) -> None:
        super().__init__(Bottleneck, layers, num_classes=num_classes)
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.maxpool = nn.Identity()


def resnet50_cifar(num_classes: int = 100) -> CifarBottleneckResNet:
    return CifarBottleneckResNet([3, 4, 6, 3], num_classes=num_classes)


def resnet152_cifar(num_classes: int = 100) -> CifarBottleneckResNet:
    return CifarBottleneckResNet([3, 8, 36, 3], num_classes=num_classes)


__all__ = ["CifarBottleneckResNet", "resnet152_cifar", "resnet50_cifar"]
