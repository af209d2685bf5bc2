"""ResNet-18 and ResNet-50 with torchvision-compatible parameter names.

The module tree mirrors ``torchvision.models.resnet`` (``conv1``, ``bn1``, ``layer1`` ...
``layer4``, ``avgpool``, ``fc``; blocks with ``conv1``/``bn1``/... and ``downsample.0``/``.1``)
so that a torchvision ``state_dict`` loads with ``strict=True``.  The implementation itself is
independent.  Differences that do not affect the state_dict:

* every ReLU is ``inplace=False`` and a block owns one ReLU module per use, because
  ``torch.export`` produces cleaner graphs without in-place mutation;
* the stride of a Bottleneck sits on its 3x3 convolution ("ResNet v1.5"), like torchvision.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet50"]


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    # Bias is redundant in front of BatchNorm, and torchvision has none.
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or projected) shortcut.

    Parameters
    ----------
    in_ch : int
        Input channels.
    width : int
        Output channels of both convolutions.
    stride : int, optional
        Stride of the first convolution (and of the projection shortcut).
    downsample : nn.Module or None, optional
        Projection applied to the shortcut when shapes differ.
    """

    expansion = 1

    def __init__(
        self, in_ch: int, width: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_ch, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = _conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU(inplace=False)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu2(y + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with a shortcut.

    Parameters
    ----------
    in_ch : int
        Input channels.
    width : int
        Channels of the inner 3x3 convolution; the output has ``4 * width``.
    stride : int, optional
        Stride of the 3x3 convolution (ResNet v1.5 placement).
    downsample : nn.Module or None, optional
        Projection applied to the shortcut when shapes differ.
    """

    expansion = 4

    def __init__(
        self, in_ch: int, width: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = _conv1x1(in_ch, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU(inplace=False)
        self.conv3 = _conv1x1(width, out_ch)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu3 = nn.ReLU(inplace=False)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.relu2(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu3(y + shortcut)


class ResNet(nn.Module):
    """ImageNet-style ResNet.

    Parameters
    ----------
    block : type
        ``BasicBlock`` or ``Bottleneck``.
    depths : sequence of int
        Number of blocks in each of the four stages.
    num_classes : int, optional
        Size of the classifier output.
    """

    def __init__(self, block: type, depths: tuple[int, int, int, int], num_classes: int = 1000):
        super().__init__()
        self._in_ch = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=False)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._stage(block, 64, depths[0], stride=1)
        self.layer2 = self._stage(block, 128, depths[1], stride=2)
        self.layer3 = self._stage(block, 256, depths[2], stride=2)
        self.layer4 = self._stage(block, 512, depths[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        self._init_weights()

    def _stage(self, block: type, width: int, depth: int, stride: int) -> nn.Sequential:
        out_ch = width * block.expansion
        downsample = None
        # A projection is needed whenever the shortcut would change resolution or width.
        if stride != 1 or self._in_ch != out_ch:
            downsample = nn.Sequential(
                _conv1x1(self._in_ch, out_ch, stride), nn.BatchNorm2d(out_ch)
            )
        blocks = [block(self._in_ch, width, stride, downsample)]
        self._in_ch = out_ch
        blocks += [block(out_ch, width) for _ in range(1, depth)]
        return nn.Sequential(*blocks)

    def _init_weights(self) -> None:
        # torchvision's scheme: He-normal (fan_out) convs, identity BN; the Linear layer keeps
        # PyTorch's default init, exactly as torchvision leaves it.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map an NCHW image batch to class logits of shape ``(N, num_classes)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet18(num_classes: int = 1000) -> ResNet:
    """Build ResNet-18 (BasicBlock, depths 2-2-2-2).

    Parameters
    ----------
    num_classes : int, optional
        Size of the classifier output.

    Returns
    -------
    ResNet
        Randomly initialised network (seed the global RNG beforehand for reproducibility).
    """
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes)


def resnet50(num_classes: int = 1000) -> ResNet:
    """Build ResNet-50 (Bottleneck, depths 3-4-6-3).

    Parameters
    ----------
    num_classes : int, optional
        Size of the classifier output.

    Returns
    -------
    ResNet
        Randomly initialised network (seed the global RNG beforehand for reproducibility).
    """
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes)
