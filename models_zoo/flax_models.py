"""Small random-initialized Flax nnx models for testing SPA.

Every builder takes ``seed=0`` and returns an ``nnx.Module`` in inference mode (BatchNorm with
``use_running_average=True``) whose parameters, including normalization scales and shifts,
BatchNorm running statistics and biases, are random (see :func:`init_model`), so that BatchNorm
is not an identity and no bias is zero. Inputs are NHWC with batch 2 and 32x32 images.

Importing this module imports JAX and Flax: it needs the 'jax' extra.
"""
from __future__ import annotations

from collections.abc import Callable
from models_zoo.entry import ZooEntry, entry

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = ["ZooEntry", "FLAX_ZOO", "build", "init_model",
           "ResNet", "ProjectionResNet", "MobileNetV2", "DenseNet", "ViT",
           "resnet", "resnet_projection", "mobilenet_v2", "densenet", "vit"]

_IMAGE = (32, 32, 3)
_CLASSES = 10
_ACTIVATIONS = {"relu": nnx.relu, "relu6": nnx.relu6}


# --------------------------------------------------------------------------------------------
# Initialization
# --------------------------------------------------------------------------------------------

def init_model(model: nnx.Module, seed: int = 0) -> nnx.Module:
    """Deterministically draw every parameter and BatchNorm statistic of ``model`` with numpy.

    Conv / Linear / attention kernels: He-normal (fan_in); their biases ~ N(0, 0.05).
    BatchNorm and LayerNorm: scale ~ U(0.5, 1.5), bias ~ N(0, 0.1); BatchNorm mean ~ N(0, 0.1),
    var ~ U(0.5, 1.5) (as the PyTorch zoo). Other parameters (position embedding) ~ N(0, 0.02).
    Works on an abstract module from ``nnx.eval_shape`` too: drawing with numpy instead of
    JAX's initializers saves compiling one random kernel per shape (seconds per model).
    """
    rng = np.random.default_rng(seed)
    drawn: set[int] = set()

    def draw(variable, sample) -> None:
        if variable is not None:
            value = variable.get_value()
            variable.set_value(jnp.asarray(sample(value.shape), value.dtype))
            drawn.add(id(variable))

    def normal(std):
        return lambda shape: rng.normal(0.0, std, shape)

    def uniform(shape):
        return rng.uniform(0.5, 1.5, shape)

    for _, node in nnx.iter_graph(model):
        if isinstance(node, (nnx.Conv, nnx.Linear, nnx.LinearGeneral)):
            fan_in = int(np.prod(node.kernel.get_value().shape[:-1] if isinstance(node, nnx.Conv)
                                 else node.in_features))
            draw(node.kernel, normal(np.sqrt(2.0 / fan_in)))
            draw(node.bias, normal(0.05))
        elif isinstance(node, (nnx.BatchNorm, nnx.LayerNorm)):
            draw(node.scale, uniform)
            draw(node.bias, normal(0.1))
            if isinstance(node, nnx.BatchNorm):
                draw(node.mean, normal(0.1))
                draw(node.var, uniform)
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Param) and id(node) not in drawn:
            draw(node, normal(0.02))
    return model


def _initialized(model_class: type[nnx.Module], seed: int) -> nnx.Module:
    """``model_class`` built abstractly (no JAX initializers run), then drawn by :func:`init_model`."""
    return init_model(nnx.eval_shape(lambda: model_class(rngs=nnx.Rngs(seed))), seed)


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------

def _global_average(x):
    return x.mean(axis=(1, 2))


class _ConvBN(nnx.Module):
    """Conv (no bias) -> BatchNorm -> optional activation ("relu" or "relu6")."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                 activation: str | None = "relu", *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(cin, cout, (kernel, kernel), strides=stride, padding="SAME",
                             feature_group_count=groups, use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(cout, use_running_average=True, rngs=rngs)
        self.activation = activation

    def __call__(self, x):
        x = self.bn(self.conv(x))
        return x if self.activation is None else _ACTIVATIONS[self.activation](x)


class _BasicBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs):
        self.conv1 = _ConvBN(cin, cout, 3, stride, rngs=rngs)
        self.conv2 = _ConvBN(cout, cout, 3, activation=None, rngs=rngs)
        needs_projection = stride != 1 or cin != cout
        self.shortcut = _ConvBN(cin, cout, 1, stride, activation=None, rngs=rngs) if needs_projection else None

    def __call__(self, x):
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return nnx.relu(self.conv2(self.conv1(x)) + shortcut)


class _ProjectionBlock(nnx.Module):
    """Conv-BN-ReLU, Conv-BN, plus the shortcut, then ReLU; the shortcut is a 1x1 Conv (strided
    with the block) + BatchNorm wherever the channels change. ``nnx.relu`` is called directly,
    so jax2onnx writes a Relu right after each BatchNormalization, between two NCHW Convs (the
    ``_ACTIVATIONS`` lookup of :class:`_ConvBN` holds the unpatched function: a Max instead)."""

    def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(cin, cout, (3, 3), strides=stride, padding="SAME", use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(cout, use_running_average=True, rngs=rngs)
        self.conv2 = nnx.Conv(cout, cout, (3, 3), padding="SAME", use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(cout, use_running_average=True, rngs=rngs)
        if cin != cout:
            self.project = nnx.Conv(cin, cout, (1, 1), strides=stride, use_bias=False, rngs=rngs)
            self.project_bn = nnx.BatchNorm(cout, use_running_average=True, rngs=rngs)
        else:
            self.project = self.project_bn = None

    def __call__(self, x):
        y = self.bn2(self.conv2(nnx.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.project is None else self.project_bn(self.project(x))
        return nnx.relu(y + shortcut)


class _InvertedResidual(nnx.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int, *, rngs: nnx.Rngs):
        hidden = cin * expand
        self.expand = _ConvBN(cin, hidden, 1, activation="relu6", rngs=rngs) if expand != 1 else None
        self.depthwise = _ConvBN(hidden, hidden, 3, stride, groups=hidden, activation="relu6", rngs=rngs)
        self.project = _ConvBN(hidden, cout, 1, activation=None, rngs=rngs)
        self.residual = stride == 1 and cin == cout

    def __call__(self, x):
        y = x if self.expand is None else self.expand(x)
        y = self.project(self.depthwise(y))
        return x + y if self.residual else y


class _BNReLUConv(nnx.Module):
    def __init__(self, cin: int, cout: int, kernel: int, *, rngs: nnx.Rngs):
        self.bn = nnx.BatchNorm(cin, use_running_average=True, rngs=rngs)
        self.conv = nnx.Conv(cin, cout, (kernel, kernel), padding="SAME", use_bias=False, rngs=rngs)

    def __call__(self, x):
        return self.conv(nnx.relu(self.bn(x)))


class _DenseLayer(nnx.Module):
    """BN-ReLU-1x1 conv (4 * growth) then BN-ReLU-3x3 conv (growth), concatenated to the input."""

    def __init__(self, cin: int, growth: int, *, rngs: nnx.Rngs):
        self.bottleneck = _BNReLUConv(cin, 4 * growth, 1, rngs=rngs)
        self.conv = _BNReLUConv(4 * growth, growth, 3, rngs=rngs)

    def __call__(self, x):
        return jnp.concatenate([x, self.conv(self.bottleneck(x))], axis=-1)


class _EncoderBlock(nnx.Module):
    def __init__(self, dim: int, heads: int, mlp_dim: int, *, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(dim, epsilon=1e-6, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(num_heads=heads, in_features=dim, decode=False, rngs=rngs)
        self.norm2 = nnx.LayerNorm(dim, epsilon=1e-6, rngs=rngs)
        self.fc1 = nnx.Linear(dim, mlp_dim, rngs=rngs)
        self.fc2 = nnx.Linear(mlp_dim, dim, rngs=rngs)

    def __call__(self, x):
        x = x + self.attention(self.norm1(x))
        return x + self.fc2(jax.nn.gelu(self.fc1(self.norm2(x)), approximate=False))


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------

class ResNet(nnx.Module):
    """ResNet: basic blocks at 16, 32, 64 channels; strided stages have a 1x1-conv shortcut."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.stem = _ConvBN(3, 16, 3, rngs=rngs)
        self.blocks = nnx.List([_BasicBlock(cin, cout, stride, rngs=rngs)
                                for cin, cout, stride in ((16, 16, 1), (16, 32, 2), (32, 64, 2))])
        self.head = nnx.Linear(64, _CLASSES, rngs=rngs)

    def __call__(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(_global_average(x))


class ProjectionResNet(nnx.Module):
    """ResNet with projection shortcuts: 1x1 Conv + BatchNorm where the channels change (8 -> 16
    unstrided, 16 -> 32 strided), an identity shortcut where they do not; ReLUs as Relu nodes."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.stem = nnx.Conv(3, 8, (3, 3), padding="SAME", use_bias=False, rngs=rngs)
        self.stem_bn = nnx.BatchNorm(8, use_running_average=True, rngs=rngs)
        self.blocks = nnx.List([_ProjectionBlock(cin, cout, stride, rngs=rngs)
                                for cin, cout, stride in ((8, 16, 1), (16, 32, 2), (32, 32, 1))])
        self.head = nnx.Linear(32, _CLASSES, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.stem_bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return self.head(_global_average(x))


class MobileNetV2(nnx.Module):
    """MobileNetV2: inverted residuals (1x1 expand, 3x3 depthwise, 1x1 project), ReLU6."""

    _BLOCKS = ((16, 16, 1, 1), (16, 24, 2, 4), (24, 24, 1, 4), (24, 32, 2, 4), (32, 32, 1, 4))

    def __init__(self, *, rngs: nnx.Rngs):
        self.stem = _ConvBN(3, 16, 3, stride=2, activation="relu6", rngs=rngs)
        self.blocks = nnx.List([_InvertedResidual(cin, cout, stride, expand, rngs=rngs)
                                for cin, cout, stride, expand in self._BLOCKS])
        self.last = _ConvBN(32, 64, 1, activation="relu6", rngs=rngs)
        self.head = nnx.Linear(64, _CLASSES, rngs=rngs)

    def __call__(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(_global_average(self.last(x)))


class DenseNet(nnx.Module):
    """DenseNet: two dense blocks (BN-ReLU-conv pairs, growth 8, concatenate) and a transition."""

    def __init__(self, *, rngs: nnx.Rngs, growth: int = 8):
        self.stem = nnx.Conv(3, 16, (3, 3), padding="SAME", use_bias=False, rngs=rngs)
        self.block1 = nnx.List([_DenseLayer(16 + i * growth, growth, rngs=rngs) for i in range(3)])
        self.transition = _BNReLUConv(16 + 3 * growth, 24, 1, rngs=rngs)
        self.block2 = nnx.List([_DenseLayer(24 + i * growth, growth, rngs=rngs) for i in range(3)])
        self.norm = nnx.BatchNorm(24 + 3 * growth, use_running_average=True, rngs=rngs)
        self.head = nnx.Linear(24 + 3 * growth, _CLASSES, rngs=rngs)

    def __call__(self, x):
        x = self.stem(x)
        for layer in self.block1:
            x = layer(x)
        # keywords: jax2onnx 0.17.1 patches nnx.avg_pool with a keyword-only window_shape
        x = nnx.avg_pool(self.transition(x), window_shape=(2, 2), strides=(2, 2))
        for layer in self.block2:
            x = layer(x)
        return self.head(_global_average(nnx.relu(self.norm(x))))


class ViT(nnx.Module):
    """ViT: 4x4 patches to 32 dims, 2 blocks of MultiHeadAttention (4 heads) and a GELU MLP."""

    def __init__(self, *, rngs: nnx.Rngs, dim: int = 32, patch: int = 4):
        tokens = (_IMAGE[0] // patch) * (_IMAGE[1] // patch)
        self.patches = nnx.Conv(3, dim, (patch, patch), strides=patch, padding="VALID", rngs=rngs)
        self.position = nnx.Param(jnp.zeros((1, tokens, dim)))  # drawn by init_model
        self.blocks = nnx.List([_EncoderBlock(dim, heads=4, mlp_dim=2 * dim, rngs=rngs) for _ in range(2)])
        self.norm = nnx.LayerNorm(dim, epsilon=1e-6, rngs=rngs)
        self.head = nnx.Linear(dim, _CLASSES, rngs=rngs)

    def __call__(self, x):
        x = self.patches(x)
        _, height, width, dim = x.shape
        x = x.reshape(x.shape[0], height * width, dim) + self.position[...]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(axis=1))


def resnet(seed: int = 0) -> ResNet:
    """ResNet: basic blocks at 16, 32, 64 channels; strided stages have a 1x1-conv shortcut."""
    return _initialized(ResNet, seed)


def resnet_projection(seed: int = 0) -> ProjectionResNet:
    """ResNet with 1x1-conv + BatchNorm projection shortcuts where channels change; Relu nodes."""
    return _initialized(ProjectionResNet, seed)


def mobilenet_v2(seed: int = 0) -> MobileNetV2:
    """MobileNetV2: inverted residuals (1x1 expand, 3x3 depthwise, 1x1 project), ReLU6."""
    return _initialized(MobileNetV2, seed)


def densenet(seed: int = 0) -> DenseNet:
    """DenseNet: two dense blocks (BN-ReLU-conv pairs, growth 8, concatenate) and a transition."""
    return _initialized(DenseNet, seed)


def vit(seed: int = 0) -> ViT:
    """ViT: 4x4 patches to 32 dims, 2 blocks of nnx.MultiHeadAttention (4 heads) and a GELU MLP."""
    return _initialized(ViT, seed)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

FLAX_ZOO: dict[str, ZooEntry] = {
    fn.__name__: entry(fn, (2, *_IMAGE))
    for fn in (resnet, resnet_projection, mobilenet_v2, densenet, vit)
}


def build(name: str, seed: int = 0) -> nnx.Module:
    """Build a zoo model by name."""
    if name not in FLAX_ZOO:
        raise KeyError(f"unknown Flax zoo model {name!r}; known: {sorted(FLAX_ZOO)}")
    return FLAX_ZOO[name].build(seed=seed)
