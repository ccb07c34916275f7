"""RepDistiller's CIFAR ``MobileNetV2`` (``mobile_half``: expansion 6, width multiplier 0.5).

Source: HobbitLong/RepDistiller, ``models/mobilenetv2.py`` (the implementation of "Knowledge Distillation via
Route Constrained Optimization"). Module names (``conv1``, ``blocks.N.M.conv``, ``conv2``, ``classifier.0``),
initialisation (conv ~ N(0, 2/(k*k*out)), linear ~ N(0, 0.01), biases 0) and the feature list are
RepDistiller's, so its checkpoints load with ``strict=True``. Unlike torchvision's MobileNetV2 it uses ReLU
(not ReLU6), a stride-2 stem and stride 1 in the second stage.

Feature list: ``[conv1, blocks[1], blocks[2], blocks[4], blocks[6], pooled]`` (the outputs before each
stride change; ``conv2``, the final 1x1 conv to 1280 channels, is not in the list, as in RepDistiller).
The blocks end in a linear projection with no activation, and RepDistiller ignores ``preact`` for this
model: ``preact=True`` returns the same list.

``prepool=True`` returns ``(logits, conv2 output)`` (conv + BN + ReLU, 1280 channels), the map the pool reads
(ICKD's official tap).

Deviations: ``forward(x, with_features=False, preact=False)`` returns ``logits`` or ``(logits, feats)``; no
``print`` in the constructor; the unused ``remove_avg`` option is kept; default class count 100.
"""

from __future__ import annotations

import math

from torch import Tensor, nn


def conv_bn(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup), nn.ReLU(inplace=True)
    )


def conv_1x1_bn(inp: int, oup: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup), nn.ReLU(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.stride = stride
        self.use_res_connect = stride == 1 and inp == oup
        hidden = inp * expand_ratio
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),  # pw
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),  # dw
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),  # pw-linear
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(
        self,
        T: int,
        feature_dim: int,
        input_size: int = 32,
        width_mult: float = 1.0,
        remove_avg: bool = False,
    ) -> None:
        super().__init__()
        self.remove_avg = remove_avg
        # t (expansion), c (channels), n (blocks), s (stride of the first block)
        self.interverted_residual_setting = [
            [1, 16, 1, 1],
            [T, 24, 2, 1],
            [T, 32, 3, 2],
            [T, 64, 4, 2],
            [T, 96, 3, 1],
            [T, 160, 3, 2],
            [T, 320, 1, 1],
        ]
        if input_size % 32 != 0:
            raise ValueError(f"input_size must be a multiple of 32, got {input_size}")
        input_channel = int(32 * width_mult)
        self.conv1 = conv_bn(3, input_channel, 2)

        self.blocks = nn.ModuleList([])
        for t, c, n, s in self.interverted_residual_setting:
            output_channel = int(c * width_mult)
            layers = []
            for stride in [s] + [1] * (n - 1):
                layers.append(InvertedResidual(input_channel, output_channel, stride, t))
                input_channel = output_channel
            self.blocks.append(nn.Sequential(*layers))

        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = conv_1x1_bn(input_channel, self.last_channel)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, feature_dim))
        self.avgpool = nn.AvgPool2d(input_size // (32 // 2), ceil_mode=True)
        self._initialize_weights()

    def forward(
        self, x: Tensor, with_features: bool = False, preact: bool = False, prepool: bool = False
    ) -> Tensor | tuple[Tensor, Tensor] | tuple[Tensor, list[Tensor]]:
        out = self.conv1(x)
        f0 = out
        out = self.blocks[0](out)
        out = self.blocks[1](out)
        f1 = out
        out = self.blocks[2](out)
        f2 = out
        out = self.blocks[3](out)
        out = self.blocks[4](out)
        f3 = out
        out = self.blocks[5](out)
        out = self.blocks[6](out)
        f4 = out
        out = self.conv2(out)
        last = out
        if not self.remove_avg:
            out = self.avgpool(out)
        out = out.view(out.size(0), -1)
        f5 = out
        out = self.classifier(out)
        if prepool:
            return out, last
        if not with_features:
            return out
        return out, [f0, f1, f2, f3, f4, f5]  # preact has no effect (RepDistiller)

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


def mobilenetv2_T_w(T: int, W: float, feature_dim: int = 100) -> MobileNetV2:
    return MobileNetV2(T=T, feature_dim=feature_dim, width_mult=W)


def mobile_half(num_classes: int = 100) -> MobileNetV2:
    """RepDistiller's ``MobileNetV2`` entry: expansion 6, width 0.5."""
    return mobilenetv2_T_w(6, 0.5, num_classes)


__all__ = ["MobileNetV2", "mobile_half", "mobilenetv2_T_w"]
