"""Small random-initialized Keras 3 models (TensorFlow backend) for testing SPA.

Every builder takes ``seed=0`` and returns a functional ``keras.Model`` whose normalization
parameters, BatchNorm moving statistics and biases are random (see :func:`randomize`), so that
a folded BatchNormalization is not an identity and no bias is zero. Inputs are NHWC with batch 2
and 32x32 images. Entries flagged ``large`` wrap ``keras.applications`` models (random weights):
they are for the slower sweeps.

Importing this module imports Keras (and so TensorFlow): it needs the 'tf' extra.
"""
from __future__ import annotations

from collections.abc import Callable
from models_zoo.entry import ZooEntry, entry

from frontends.tensorflow import load_llvm_users_in_order

load_llvm_users_in_order()

import keras  # noqa: E402
import numpy as np
from keras import layers

__all__ = ["ZooEntry", "KERAS_ZOO", "build", "randomize",
           "resnet", "mobilenet_v2", "densenet", "vit",
           "keras_resnet50", "keras_mobilenet_v2", "keras_efficientnet_b0", "keras_densenet121",
           "keras_convnext_tiny"]

_IMAGE = (32, 32, 3)
_CLASSES = 10


# --------------------------------------------------------------------------------------------
# Initialization
# --------------------------------------------------------------------------------------------

def _uniform(low: float, high: float):
    return lambda rng, shape: rng.uniform(low, high, shape)


def _normal(std: float):
    return lambda rng, shape: rng.normal(0.0, std, shape)


# Keras 3 variable names -> how to draw them (as the PyTorch zoo draws its counterparts).
_DRAWS = {
    "gamma": _uniform(0.5, 1.5),            # BatchNormalization / LayerNormalization scale
    "beta": _normal(0.1),                    # ... and shift
    "moving_mean": _normal(0.1),
    "moving_variance": _uniform(0.5, 1.5),
    "bias": _normal(0.05),
}


def randomize(model: keras.Model, seed: int = 0) -> keras.Model:
    """Draw normalization scales/shifts, BatchNorm moving statistics and biases at random.

    gamma ~ U(0.5, 1.5), beta ~ N(0, 0.1), moving_mean ~ N(0, 0.1),
    moving_variance ~ U(0.5, 1.5), bias ~ N(0, 0.05); ConvNeXt layer scales ~ U(0.5, 1.5).
    Kernels keep Keras' seeded initializers.
    """
    rng = np.random.default_rng(seed)
    for variable in model.variables:
        draw = _DRAWS.get(variable.name)
        if draw is not None:
            variable.assign(draw(rng, tuple(variable.shape)).astype(variable.dtype))
    for layer in model.layers:
        # ConvNeXt's LayerScale (an unnamed weight) starts at 1e-6, muting every residual branch.
        if type(layer).__name__ == "LayerScale":
            layer.gamma.assign(_DRAWS["gamma"](rng, tuple(layer.gamma.shape)).astype(layer.gamma.dtype))
    return model


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------

def _activation(x, kind: str | None):
    if kind == "relu":
        return layers.ReLU()(x)
    if kind == "relu6":
        return layers.ReLU(max_value=6.0)(x)
    return x


def _conv_bn(x, channels: int, kernel: int, stride: int = 1, activation: str | None = "relu"):
    x = layers.Conv2D(channels, kernel, strides=stride, padding="same", use_bias=False)(x)
    return _activation(layers.BatchNormalization()(x), activation)


def _basic_block(x, channels: int, stride: int):
    y = _conv_bn(x, channels, 3, stride)
    y = _conv_bn(y, channels, 3, activation=None)
    shortcut = x
    if stride != 1 or x.shape[-1] != channels:
        shortcut = _conv_bn(x, channels, 1, stride, activation=None)
    return layers.ReLU()(layers.Add()([y, shortcut]))


def _inverted_residual(x, channels: int, stride: int, expand: int):
    y = x
    if expand != 1:
        y = _conv_bn(y, x.shape[-1] * expand, 1, activation="relu6")
    y = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(y)
    y = _activation(layers.BatchNormalization()(y), "relu6")
    y = _conv_bn(y, channels, 1, activation=None)
    if stride == 1 and x.shape[-1] == channels:
        y = layers.Add()([x, y])
    return y


def _bn_relu_conv(x, channels: int, kernel: int):
    x = layers.ReLU()(layers.BatchNormalization()(x))
    return layers.Conv2D(channels, kernel, padding="same", use_bias=False)(x)


def _dense_block(x, n_layers: int, growth: int):
    for _ in range(n_layers):
        y = _bn_relu_conv(x, 4 * growth, 1)
        y = _bn_relu_conv(y, growth, 3)
        x = layers.Concatenate()([x, y])
    return x


class _AddPositionEmbedding(layers.Layer):
    """Adds a learned embedding of shape (1, tokens, dim)."""

    def build(self, input_shape):
        self.embedding = self.add_weight(
            shape=(1, *input_shape[1:]), name="position_embedding",
            initializer=keras.initializers.RandomNormal(stddev=0.02))

    def call(self, x):
        return x + self.embedding


def _encoder_block(x, heads: int, mlp_dim: int):
    dim = x.shape[-1]
    y = layers.LayerNormalization(epsilon=1e-6)(x)
    y = layers.MultiHeadAttention(num_heads=heads, key_dim=dim // heads)(y, y)
    x = layers.Add()([x, y])
    y = layers.LayerNormalization(epsilon=1e-6)(x)
    y = layers.Dense(mlp_dim, activation="gelu")(y)
    y = layers.Dense(dim)(y)
    return layers.Add()([x, y])


def _classifier(x):
    return layers.Dense(_CLASSES)(layers.GlobalAveragePooling2D()(x))


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------

def resnet(seed: int = 0) -> keras.Model:
    """ResNet: basic blocks at 16, 32, 64 channels; strided stages have a 1x1-conv shortcut."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(_IMAGE)
    x = _conv_bn(inputs, 16, 3)
    for channels, stride in ((16, 1), (32, 2), (64, 2)):
        x = _basic_block(x, channels, stride)
    return randomize(keras.Model(inputs, _classifier(x), name="resnet"), seed)


def mobilenet_v2(seed: int = 0) -> keras.Model:
    """MobileNetV2: inverted residuals (1x1 expand, 3x3 depthwise, 1x1 project), ReLU6."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(_IMAGE)
    x = _conv_bn(inputs, 16, 3, stride=2, activation="relu6")
    for channels, stride, expand in ((16, 1, 1), (24, 2, 4), (24, 1, 4), (32, 2, 4), (32, 1, 4)):
        x = _inverted_residual(x, channels, stride, expand)
    x = _conv_bn(x, 64, 1, activation="relu6")
    return randomize(keras.Model(inputs, _classifier(x), name="mobilenet_v2"), seed)


def densenet(seed: int = 0) -> keras.Model:
    """DenseNet: two dense blocks (BN-ReLU-conv pairs, growth 8, Concatenate) and a transition."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(_IMAGE)
    x = layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    x = _dense_block(x, n_layers=3, growth=8)
    x = layers.AveragePooling2D(2)(_bn_relu_conv(x, 24, 1))  # transition
    x = _dense_block(x, n_layers=3, growth=8)
    x = layers.ReLU()(layers.BatchNormalization()(x))
    return randomize(keras.Model(inputs, _classifier(x), name="densenet"), seed)


def vit(seed: int = 0) -> keras.Model:
    """ViT: 4x4 patches to 32 dims, 2 blocks of MultiHeadAttention (4 heads) and a GELU MLP."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(_IMAGE)
    x = layers.Conv2D(32, 4, strides=4)(inputs)
    x = layers.Reshape((-1, 32))(x)
    x = _AddPositionEmbedding()(x)
    for _ in range(2):
        x = _encoder_block(x, heads=4, mlp_dim=64)
    x = layers.LayerNormalization(epsilon=1e-6)(x)
    outputs = layers.Dense(_CLASSES)(layers.GlobalAveragePooling1D()(x))
    return randomize(keras.Model(inputs, outputs, name="vit"), seed)


def _application(factory: Callable[..., keras.Model], seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = factory(weights=None, input_shape=_IMAGE, classes=_CLASSES, classifier_activation=None)
    return randomize(model, seed)


def keras_resnet50(seed: int = 0) -> keras.Model:
    """keras.applications.ResNet50 (random weights, 32x32 input, 10 classes)."""
    return _application(keras.applications.ResNet50, seed)


def keras_mobilenet_v2(seed: int = 0) -> keras.Model:
    """keras.applications.MobileNetV2 (random weights, 32x32 input, 10 classes)."""
    return _application(keras.applications.MobileNetV2, seed)


def keras_efficientnet_b0(seed: int = 0) -> keras.Model:
    """keras.applications.EfficientNetB0 (random weights, 32x32 input, 10 classes)."""
    return _application(keras.applications.EfficientNetB0, seed)


def keras_densenet121(seed: int = 0) -> keras.Model:
    """keras.applications.DenseNet121 (random weights, 32x32 input, 10 classes)."""
    return _application(keras.applications.DenseNet121, seed)


def keras_convnext_tiny(seed: int = 0) -> keras.Model:
    """keras.applications.ConvNeXtTiny (random weights, 32x32 input, 10 classes)."""
    return _application(keras.applications.ConvNeXtTiny, seed)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

def _entry(fn: Callable[..., keras.Model], large: bool = False) -> ZooEntry:
    return entry(fn, (2, *_IMAGE), large)


KERAS_ZOO: dict[str, ZooEntry] = {
    **{fn.__name__: _entry(fn) for fn in (resnet, mobilenet_v2, densenet, vit)},
    **{fn.__name__: _entry(fn, large=True)
       for fn in (keras_resnet50, keras_mobilenet_v2, keras_efficientnet_b0, keras_densenet121,
                  keras_convnext_tiny)},
}
"""Small models, then ``large`` keras.applications models (for the slower sweeps)."""


def build(name: str, seed: int = 0) -> keras.Model:
    """Build a zoo model by name."""
    if name not in KERAS_ZOO:
        raise KeyError(f"unknown Keras zoo model {name!r}; known: {sorted(KERAS_ZOO)}")
    return KERAS_ZOO[name].build(seed=seed)
