"""Small random-initialized PaddlePaddle models for testing SPA.

Every builder takes ``seed=0`` and returns a ``paddle.nn.Layer`` in eval mode whose BatchNorm
statistics, scales and shifts are random (see :func:`randomize`), so that a folded BatchNorm is
not an identity. Inputs are NCHW with batch 2 and 32x32 images.

Importing this module imports Paddle: it needs the 'paddle' extra.
"""
from __future__ import annotations

from collections.abc import Callable
from models_zoo.entry import ZooEntry, entry

import numpy as np
import paddle
from paddle import nn

__all__ = ["ZooEntry", "PADDLE_ZOO", "randomize", "resnet", "pp_lcnet", "text_recognizer"]

_CLASSES = 10


def randomize(layer: nn.Layer, seed: int = 0) -> nn.Layer:
    """BatchNorm: weight ~ U(0.5, 1.5), bias ~ N(0, 0.1), mean ~ N(0, 0.1), variance ~ U(0.5, 1.5)."""
    rng = np.random.default_rng(seed)
    for module in layer.sublayers():
        if isinstance(module, nn.BatchNorm2D):
            c = module.weight.shape[0]
            for tensor, value in ((module.weight, rng.uniform(0.5, 1.5, c)), (module.bias, rng.normal(0, 0.1, c)),
                                  (module._mean, rng.normal(0, 0.1, c)), (module._variance, rng.uniform(0.5, 1.5, c))):
                tensor.set_value(value.astype(np.float32))
    return layer.eval()


class _ConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                 activation: type[nn.Layer] | None = nn.ReLU):
        layers = [nn.Conv2D(cin, cout, kernel, stride, kernel // 2, groups=groups, bias_attr=False),
                  nn.BatchNorm2D(cout)]
        super().__init__(*layers, *([activation()] if activation else []))


class _BasicBlock(nn.Layer):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(_ConvBN(cin, cout, 3, stride), _ConvBN(cout, cout, 3, activation=None))
        self.shortcut = _ConvBN(cin, cout, 1, stride, activation=None) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return nn.functional.relu(self.body(x) + self.shortcut(x))


class _Head(nn.Sequential):
    def __init__(self, channels: int):
        super().__init__(nn.AdaptiveAvgPool2D(1), nn.Flatten(), nn.Linear(channels, _CLASSES))


class _SqueezeExcite(nn.Layer):
    """PP-LCNet's SE: global pool, 1x1 reduce + ReLU, 1x1 expand + hard-sigmoid, scale."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.reduce = nn.Conv2D(channels, channels // reduction, 1)
        self.expand = nn.Conv2D(channels // reduction, channels, 1)

    def forward(self, x):
        s = nn.functional.adaptive_avg_pool2d(x, 1)
        return x * nn.functional.hardsigmoid(self.expand(nn.functional.relu(self.reduce(s))))


class _DepthwiseSeparable(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int, se: bool):
        super().__init__(_ConvBN(cin, cin, 3, stride, groups=cin, activation=nn.Hardswish),
                         *([_SqueezeExcite(cin)] if se else []),
                         _ConvBN(cin, cout, 1, activation=nn.Hardswish))


def resnet(seed: int = 0) -> nn.Layer:
    """ResNet: basic blocks at 16, 32, 64 channels; strided stages have a 1x1-conv shortcut."""
    paddle.seed(seed)
    layer = nn.Sequential(_ConvBN(3, 16, 3), _BasicBlock(16, 16, 1), _BasicBlock(16, 32, 2),
                          _BasicBlock(32, 64, 2), _Head(64))
    return randomize(layer, seed)


def pp_lcnet(seed: int = 0) -> nn.Layer:
    """PP-LCNet-style: depthwise-separable blocks with hard-swish, squeeze-excitation in the last two."""
    paddle.seed(seed)
    layer = nn.Sequential(_ConvBN(3, 16, 3, 2, activation=nn.Hardswish),
                          _DepthwiseSeparable(16, 32, 1, se=False), _DepthwiseSeparable(32, 64, 2, se=False),
                          _DepthwiseSeparable(64, 64, 1, se=True), _DepthwiseSeparable(64, 128, 2, se=True),
                          _Head(128))
    return randomize(layer, seed)


class _Recognizer(nn.Layer):
    """CRNN-style: a conv backbone pooled to a height of 1, a bidirectional LSTM over the width,
    a per-step classifier (as PaddleOCR's recognizers are built)."""

    def __init__(self, characters: int = 36):
        super().__init__()
        self.backbone = nn.Sequential(_ConvBN(1, 16, 3), nn.MaxPool2D(2), _ConvBN(16, 32, 3), nn.MaxPool2D(2),
                                      _ConvBN(32, 64, 3), nn.AvgPool2D((8, 1)))
        self.lstm = nn.LSTM(64, 32, direction="bidirect")
        self.head = nn.Linear(64, characters + 1)  # + the CTC blank

    def forward(self, x):
        features = self.backbone(x).squeeze(2).transpose([0, 2, 1])  # [batch, width, channels]
        sequence, _ = self.lstm(features)
        return self.head(sequence)


def text_recognizer(seed: int = 0) -> nn.Layer:
    """Text recognizer: conv backbone, bidirectional LSTM over the width, per-step classifier (32x64 grayscale)."""
    paddle.seed(seed)
    return randomize(_Recognizer(), seed)


def _entry(fn: Callable[..., nn.Layer]) -> ZooEntry:
    return entry(fn, (2, 3, 32, 32))


PADDLE_ZOO: dict[str, ZooEntry] = {"resnet": _entry(resnet), "pp_lcnet": _entry(pp_lcnet),
                                   "text_recognizer": entry(text_recognizer, (2, 1, 32, 64))}
