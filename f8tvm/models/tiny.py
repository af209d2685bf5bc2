"""Microcontroller-class networks: the MLPerf Tiny reference architectures, in PyTorch.

* :func:`resnet8`: image classification (CIFAR-10, 32x32x3): a 16-filter stem, three residual
  stacks of 16, 32 and 64 filters (strides 1, 2, 2; a 1x1 projection where the shape changes),
  global average pooling, a 10-way classifier.
* :func:`ds_cnn`: keyword spotting (49 frames x 10 MFCC features, one channel): a 10x4 stride-2
  convolution of 64 filters, four depthwise-separable blocks of 64, average pooling, 12 classes.
* :func:`mobilenet_v1_025`: visual wake words (96x96x3): MobileNet-V1 at width 0.25, 2 classes.

Weights are random (seeded by the caller); BatchNorm after every convolution, ReLU activations,
as in the reference Keras models.  Padding follows PyTorch (symmetric) rather than Keras's
``same`` on stride-2 layers: the architecture, MACs and shapes are the reference's.
"""

from __future__ import annotations

from torch import nn


def _conv_bn(cin, cout, k, stride=1, groups=1, padding=None, relu=True):
    if padding is None:
        padding = (k[0] // 2, k[1] // 2) if isinstance(k, tuple) else k // 2
    layers = [nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class _ResidualStack(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, 3, stride)
        self.conv2 = _conv_bn(cout, cout, 3, relu=False)
        self.shortcut = (_conv_bn(cin, cout, 1, stride, relu=False)
                         if stride != 1 or cin != cout else nn.Identity())
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResNet8(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = _conv_bn(3, 16, 3)
        self.stack1 = _ResidualStack(16, 16, 1)
        self.stack2 = _ResidualStack(16, 32, 2)
        self.stack3 = _ResidualStack(32, 64, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.stack3(self.stack2(self.stack1(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))


class DSCNN(nn.Module):
    def __init__(self, num_classes=12, width=64, blocks=4):
        super().__init__()
        self.stem = _conv_bn(1, width, (10, 4), stride=2, padding=(5, 1))
        self.blocks = nn.Sequential(*[
            nn.Sequential(_conv_bn(width, width, 3, groups=width), _conv_bn(width, width, 1))
            for _ in range(blocks)])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))


# MobileNet-V1's depthwise-separable blocks: (output channels at width 1, stride)
_V1_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5,
              (1024, 2), (1024, 1)]


class MobileNetV1(nn.Module):
    def __init__(self, num_classes=2, width=0.25):
        super().__init__()
        c = int(32 * width)
        layers = [_conv_bn(3, c, 3, 2)]
        for out, stride in _V1_BLOCKS:
            o = int(out * width)
            layers.append(nn.Sequential(_conv_bn(c, c, 3, stride, groups=c), _conv_bn(c, o, 1)))
            c = o
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def resnet8(num_classes=10):
    return ResNet8(num_classes)


def ds_cnn(num_classes=12):
    return DSCNN(num_classes)


def mobilenet_v1_025(num_classes=2):
    return MobileNetV1(num_classes, 0.25)
