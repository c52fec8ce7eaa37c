"""The Keras zoo exports through tf2onnx and runs in onnxruntime like the Keras model."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info logs, before its import
tf = pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")
keras = pytest.importorskip("keras")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from frontends.tensorflow import export_keras, export_saved_model  # noqa: E402
from models_zoo.keras_models import KERAS_ZOO  # noqa: E402

RTOL = 1e-4   # of the output scale: max|a - b| <= RTOL * max|a| + ATOL
ATOL = 1e-5
OTHER_BATCH = 3


def _assert_close(actual, expected):
    assert actual.shape == expected.shape
    error = float(np.abs(actual - expected).max())
    assert error <= RTOL * float(np.abs(expected).max()) + ATOL, f"max abs error {error}"


def _random_input(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _keras_output(model, x):
    return np.asarray(model(x, training=False))


def _onnx_output(path, x):
    session = ort.InferenceSession(str(path))
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _zoo_params():
    return [pytest.param(name, marks=pytest.mark.slow) if entry.large else name
            for name, entry in KERAS_ZOO.items()]


@pytest.mark.parametrize("name", _zoo_params())
def test_zoo_export_matches_keras(name, tmp_path):
    entry = KERAS_ZOO[name]
    model = entry.build()
    path = export_keras(model, tmp_path / f"{name}.onnx")

    proto = onnx.load(path)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["output"]
    for batch in (entry.input_shape[0], OTHER_BATCH):
        x = _random_input((batch, *entry.input_shape[1:]), seed=batch)
        _assert_close(_onnx_output(path, x), _keras_output(model, x))


def _small_sequential(groups=1):
    return keras.Sequential([
        keras.Input((8, 8, 4)),
        keras.layers.Conv2D(8, 3, groups=groups, padding="same"),
        keras.layers.Activation("gelu"),  # exact GELU: TensorFlow's Erfc
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(3),
    ])


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv = keras.layers.Conv2D(4, 3)
        self.dense = keras.layers.Dense(2)

    def call(self, x):
        return self.dense(tf.reduce_mean(self.conv(x), axis=(1, 2)))


@pytest.mark.parametrize("groups", [1, 2])
def test_sequential_with_grouped_conv_and_exact_gelu(groups, tmp_path):
    """Sequential models trip tf2onnx's Keras output lookup; grouped convs its XLA inlining."""
    model = _small_sequential(groups)
    path = export_keras(model, tmp_path / "model.onnx")
    convs = [n for n in onnx.load(path).graph.node if n.op_type == "Conv"]
    assert [a.i for a in convs[0].attribute if a.name == "group"] == [groups]
    x = _random_input((OTHER_BATCH, 8, 8, 4))
    _assert_close(_onnx_output(path, x), _keras_output(model, x))


def test_subclassed_model_needs_and_takes_input_shape(tmp_path):
    model = _Subclassed()
    with pytest.raises(ValueError, match="input_shape"):
        export_keras(model, tmp_path / "model.onnx")
    path = export_keras(model, tmp_path / "model.onnx", input_shape=(2, 8, 8, 3))
    x = _random_input((2, 8, 8, 3))
    _assert_close(_onnx_output(path, x), _keras_output(model, x))


def test_static_batch(tmp_path):
    path = export_keras(_small_sequential(), tmp_path / "model.onnx", input_shape=(5, 8, 8, 4),
                        dynamic_batch=False)
    dims = onnx.load(path).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [5, 8, 8, 4]


def test_saved_model(tmp_path):
    model = _small_sequential()
    model.export(str(tmp_path / "saved"), verbose=False)
    path = export_saved_model(tmp_path / "saved", tmp_path / "model.onnx")
    x = _random_input((OTHER_BATCH, 8, 8, 4))
    _assert_close(_onnx_output(path, x), _keras_output(model, x))


def test_unconvertible_saved_model_fails_clearly_and_writes_nothing(tmp_path):
    """A Keras 3 SavedModel keeps a grouped convolution as an XLA call tf2onnx cannot convert."""
    _small_sequential(groups=2).export(str(tmp_path / "saved"), verbose=False)
    with pytest.raises(ValueError, match="StatefulPartitionedCall .*export_keras"):
        export_saved_model(tmp_path / "saved", tmp_path / "model.onnx")
    assert not any(p.suffix in (".onnx", ".tmp") for p in tmp_path.iterdir())


def test_missing_tensorflow_is_a_clear_import_error(monkeypatch, tmp_path):
    model = _Subclassed()
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # makes `import tensorflow` fail
    with pytest.raises(ImportError, match=r"pip install -e '\.\[tf\]'"):
        export_keras(model, tmp_path / "model.onnx", input_shape=(1, 8, 8, 3))
