"""ImageNet backbones from torchvision: resnet18, resnet34, resnet50, mobilenet_v2.

Source: torchvision 0.29 ``torchvision.models.resnet`` / ``torchvision.models.mobilenetv2``. The classes here
*subclass* torchvision's ``ResNet`` / ``MobileNetV2`` without changing any module, so state-dict keys are
torchvision's own and a torchvision weights file loads with ``strict=True``. Features are collected with
forward hooks around torchvision's unmodified ``forward``; no torchvision code is copied.

Feature lists (``logits, feats = model(x, with_features=True)``),
``feats = [stem, stage_1..stage_N, pooled]``:

- ResNets: ``[maxpool, layer1, layer2, layer3, layer4, pooled]``. The stem is taken *after the max-pool*
  (64 x H/4 x W/4, same resolution as layer1); stages are post-ReLU block outputs; ``pooled`` is the flattened
  ``avgpool`` output (the input of ``fc``).
- mobilenet_v2: ``[features.0, features.3, features.6, features.13, features.17, pooled]``, i.e. the stem
  (32 ch, stride 2) and the last block before each stride change: 24 ch /4, 32 ch /8, 96 ch /16, 320 ch /32.
  The final 1x1 conv ``features.18`` (1280 ch) is *not* in the list, mirroring RepDistiller's CIFAR
  MobileNetV2, so ``feats[-2]`` is the 320-channel map; ``pooled`` is the 1280-d input of ``classifier``.

``preact=True``: for ResNets the stage outputs are taken before the final ReLU of each stage's last block
(``out + identity``), captured by a forward pre-hook on that block's ``relu`` (its last call in the block is
the final activation); the stem and pooled vector are unchanged, as in RepDistiller. For mobilenet_v2 the
inverted-residual blocks end in a linear projection with no activation, so pre- and post-activation stage
outputs are the same tensor and ``preact=True`` returns the same list.

``prepool=True`` returns ``(logits, map)``, the map global pooling reads: ``layer4`` (= ``feats[-2]``) for the
ResNets, the final 1x1 conv ``features.18`` (1280 ch, post-ReLU6) for mobilenet_v2.

Hooks are registered for the duration of one ``with_features=True`` or ``prepool=True`` call only;
``model(x)`` is torchvision's forward untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torchvision
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck


class HookedFeatures:
    """Mixin giving a torchvision classifier kdlib's ``forward(x, with_features, preact)`` via forward hooks.

    Subclasses set ``feature_taps`` (qualified names of the modules whose outputs are the stem and the stage
    outputs, in order), ``head`` (the classifier module; its input is the pooled vector) and may override
    ``preact_taps`` (feature index -> module whose input on its last call is that stage's pre-activation).
    """

    feature_taps: tuple[str, ...] = ()
    head: str = ""
    #: The module whose output is the last map before global pooling (``prepool=True``).
    prepool_tap: str = ""

    def preact_taps(self) -> dict[int, nn.Module]:
        return {}

    def forward(
        self, x: Tensor, with_features: bool = False, preact: bool = False, prepool: bool = False
    ) -> Tensor | tuple[Tensor, Tensor] | tuple[Tensor, list[Tensor]]:
        if prepool:
            return self._forward_prepool(x)
        if not with_features:
            return super().forward(x)  # type: ignore[misc]
        post: dict[int, Tensor] = {}
        pre: dict[int, Tensor] = {}
        pooled: list[Tensor] = []

        def keep_output(index: int) -> Callable[..., None]:
            def hook(module: nn.Module, args: Any, output: Tensor) -> None:
                post[index] = output

            return hook

        def keep_input_copy(index: int) -> Callable[..., None]:
            # The hooked ReLU is in-place: keep a copy of its input, and overwrite on each call so the
            # block's last call (its final activation) wins.
            def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
                pre[index] = args[0].clone()

            return hook

        def keep_head_input(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            pooled.append(args[0])

        get = self.get_submodule  # type: ignore[attr-defined]
        handles = [
            get(name).register_forward_hook(keep_output(i)) for i, name in enumerate(self.feature_taps)
        ]
        handles.append(get(self.head).register_forward_pre_hook(keep_head_input))
        if preact:
            handles += [
                m.register_forward_pre_hook(keep_input_copy(i)) for i, m in self.preact_taps().items()
            ]
        try:
            logits = super().forward(x)  # type: ignore[misc]
        finally:
            for handle in handles:
                handle.remove()
        feats = [pre.get(i, post[i]) for i in range(len(self.feature_taps))]
        return logits, [*feats, pooled[-1]]

    def _forward_prepool(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Logits and the output of ``prepool_tap`` (a forward hook for the duration of the call)."""
        kept: list[Tensor] = []
        handle = self.get_submodule(self.prepool_tap).register_forward_hook(  # type: ignore[attr-defined]
            lambda module, args, output: kept.append(output))
        try:
            logits = super().forward(x)  # type: ignore[misc]
        finally:
            handle.remove()
        return logits, kept[-1]


class TorchvisionResNet(HookedFeatures, torchvision.models.ResNet):
    """torchvision's ``ResNet`` with kdlib's feature interface (see the module docstring)."""

    feature_taps = ("maxpool", "layer1", "layer2", "layer3", "layer4")
    head = "fc"
    prepool_tap = "layer4"

    def preact_taps(self) -> dict[int, nn.Module]:
        return {i: getattr(self, f"layer{i}")[-1].relu for i in range(1, 5)}


class TorchvisionMobileNetV2(HookedFeatures, torchvision.models.MobileNetV2):
    """torchvision's ``MobileNetV2`` with kdlib's feature interface (see the module docstring)."""

    feature_taps = ("features.0", "features.3", "features.6", "features.13", "features.17")
    head = "classifier"
    prepool_tap = "features"


def resnet18(num_classes: int = 1000) -> TorchvisionResNet:
    return TorchvisionResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)


def resnet34(num_classes: int = 1000) -> TorchvisionResNet:
    return TorchvisionResNet(BasicBlock, [3, 4, 6, 3], num_classes=num_classes)


def resnet50(num_classes: int = 1000) -> TorchvisionResNet:
    return TorchvisionResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes)


def mobilenet_v2(num_classes: int = 1000) -> TorchvisionMobileNetV2:
    return TorchvisionMobileNetV2(num_classes=num_classes)


__all__ = [
    "HookedFeatures",
    "TorchvisionMobileNetV2",
    "TorchvisionResNet",
    "mobilenet_v2",
    "resnet18",
    "resnet34",
    "resnet50",
]
