"""MobileNetV2 (width 1.0) with torchvision-compatible parameter names.

Layout of the module tree, which is what makes torchvision ``state_dict`` files load with
``strict=True``:

* ``features.0`` -- stem: Sequential(conv ``0``, bn ``1``, ReLU6 ``2``);
* ``features.1`` .. ``features.17`` -- :class:`InvertedResidual`, each holding a Sequential
  ``conv``.  With expansion (t != 1) it is ``[ConvBNReLU6 1x1, ConvBNReLU6 depthwise, Conv2d 1x1,
  BatchNorm]`` (indices 0..3); without expansion ``[ConvBNReLU6 depthwise, Conv2d, BatchNorm]``;
* ``features.18`` -- 1x1 conv to 1280 channels + bn + ReLU6;
* ``classifier`` -- Sequential(Dropout(0.2) ``0``, Linear ``1``).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["InvertedResidual", "MobileNetV2", "mobilenet_v2"]

# (expansion t, output channels c, repeats n, first stride s), as in the MobileNetV2 paper.
_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _conv_bn_relu6(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1):
    """Conv (no bias) + BatchNorm + ReLU6 as a 3-element Sequential (names ``0``, ``1``, ``2``)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU6(inplace=False),
    )


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> linear project (1x1), residual when shapes match.

    Parameters
    ----------
    in_ch : int
        Input channels.
    out_ch : int
        Output channels.
    stride : int
        Stride of the depthwise convolution (1 or 2).
    expand_ratio : int
        Hidden width is ``in_ch * expand_ratio``; 1 means no expansion convolution.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_ch * expand_ratio
        self.use_res_connect = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu6(in_ch, hidden, kernel=1))
        layers += [
            _conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
            # The projection is deliberately linear (no activation): the "linear bottleneck".
            nn.Conv2d(hidden, out_ch, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        y = self.conv(x)
        return x + y if self.use_res_connect else y


class MobileNetV2(nn.Module):
    """MobileNetV2 classifier (width multiplier 1.0).

    Parameters
    ----------
    num_classes : int, optional
        Size of the classifier output.
    dropout : float, optional
        Dropout probability before the final Linear layer (inactive in eval mode).
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        in_ch, last_ch = 32, 1280
        layers: list[nn.Module] = [_conv_bn_relu6(3, in_ch, stride=2)]
        for t, c, n, s in _SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(in_ch, c, s if i == 0 else 1, t))
                in_ch = c
        layers.append(_conv_bn_relu6(in_ch, last_ch, kernel=1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(last_ch, num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's scheme for MobileNetV2: He-normal (fan_out) convs, identity BN,
        # N(0, 0.01) classifier weights with zero bias.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map an NCHW image batch to class logits of shape ``(N, num_classes)``."""
        x = self.features(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.classifier(x)


def mobilenet_v2(num_classes: int = 1000) -> MobileNetV2:
    """Build MobileNetV2 (width 1.0, 224x224 reference resolution).

    Parameters
    ----------
    num_classes : int, optional
        Size of the classifier output.

    Returns
    -------
    MobileNetV2
        Randomly initialised network (seed the global RNG beforehand for reproducibility).
    """
    return MobileNetV2(num_classes=num_classes)
