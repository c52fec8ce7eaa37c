"""TensorFlow front end: export Keras 3 models, SavedModels and TFLite files to ONNX with tf2onnx.

The exported graph takes NHWC float32 input named ``input`` (batch dim symbolic, ``batch``, by
default) and a single output is named ``output``. tf2onnx inserts a Transpose to NCHW before the
first Conv and keeps NCHW from there; it folds a BatchNormalization into the Conv before it when
that Conv is not grouped and has no bias, and writes it as Mul + Add with [1, C, 1, 1]
constants otherwise.
Since TensorFlow 2.16, ``tf.keras`` is Keras 3, so ``tf.keras`` models go through the same path.

Two gaps of tf2onnx 1.17 with Keras 3 are bridged here:

* Keras 3 runs grouped convolutions (``Conv2D(groups=g)``, as in ConvNeXt) through an
  XLA-compiled ``tf.function``; tf2onnx cannot inline that call and leaves a
  ``StatefulPartitionedCall`` node that onnxruntime rejects. The model is traced with a plain
  ``tf.nn.convolution`` instead (:func:`_grouped_convs_without_xla`), which becomes a grouped
  ONNX Conv.
* ``keras.activations.gelu`` (exact) lowers to ``Erfc``, which tf2onnx cannot convert; it is
  written as ``1 - Erf`` (:func:`_erfc_as_one_minus_erf`).

Importing this module does not import TensorFlow.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Any

# TensorFlow's C++ logging (CPU features, grappler) would bury the user's output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def load_llvm_users_in_order():
    """Import triton (torch's compiler) before TensorFlow. Both carry LLVM, and whichever registers
    its options second aborts the process: with triton first, torch (spa.to_torch) can still be
    used after TensorFlow in the same process."""
    import importlib.util
    import sys

    if "tensorflow" not in sys.modules and importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401

__all__ = ["export_keras", "export_saved_model", "export_tflite"]

_MISSING = "TensorFlow support needs the 'tf' extra: pip install -e '.[tf]'"


def export_keras(model: Any, path: str | os.PathLike, input_shape: Sequence[int | None] | None = None,
                 opset: int = 17, dynamic_batch: bool = True) -> str:
    """Export a single-input Keras 3 model (functional, Sequential or subclassed) to ``path``.

    Args:
        model: a ``keras.Model``, run in inference mode (``training=False``).
        path: the ``.onnx`` file to write (atomically); its folder is created if needed.
        input_shape: the NHWC input shape including the batch dim, e.g. ``(2, 32, 32, 3)``;
            ``None`` takes ``model.inputs[0].shape`` (a built functional or Sequential model).
        opset: ONNX opset to write.
        dynamic_batch: make the batch dim symbolic; otherwise it is ``input_shape[0]``.

    Returns:
        ``path`` as a ``str``.
    """
    tf, tf2onnx = _import_tensorflow()
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ValueError(f"export_keras needs the TensorFlow Keras backend, not {keras.backend.backend()!r}")
    shape = _export_shape(model, input_shape, dynamic_batch)
    inputs = keras.Input(batch_shape=shape, name="input")
    outputs = model(inputs)
    if isinstance(outputs, keras.KerasTensor):  # one output, not a list or dict of them
        outputs = keras.layers.Identity(name="output")(outputs)  # names the ONNX output "output"
    # tf2onnx maps outputs through Keras' output names, which only a functional model has right.
    functional = keras.Model(inputs, outputs)
    signature = (tf.TensorSpec(shape, tf.float32, name="input"),)
    with _grouped_convs_without_xla():
        proto, _ = tf2onnx.convert.from_keras(functional, input_signature=signature, opset=opset,
                                              custom_op_handlers=_CUSTOM_OP_HANDLERS)
    _rename_dim_param(proto, proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param, "batch")
    return _save(proto, path)


def export_saved_model(saved_model_dir: str | os.PathLike, path: str | os.PathLike, opset: int = 17,
                       signature: str = "serving_default") -> str:
    """Export one signature of a TensorFlow SavedModel (e.g. from ``keras.Model.export``) to ``path``.

    Input and output names are the signature's argument and output names. A SavedModel written by
    Keras 3 keeps its grouped convolutions as XLA calls; those cannot be converted (a clear error
    says so): export such a model from its Keras object with :func:`export_keras` instead.
    """
    tf, tf2onnx = _import_tensorflow()

    loaded = tf.saved_model.load(os.fspath(saved_model_dir))  # owns the variables: keep it alive
    serving = loaded.signatures[signature]
    specs = serving.structured_input_signature[1]
    names = sorted(specs)

    @tf.function(input_signature=[tf.TensorSpec(specs[n].shape, specs[n].dtype, name=n) for n in names])
    def call(*args):
        return serving(**dict(zip(names, args, strict=True)))

    proto, _ = tf2onnx.convert.from_function(call, input_signature=call.input_signature, opset=opset,
                                             custom_op_handlers=_CUSTOM_OP_HANDLERS)
    return _save(proto, path)


def export_tflite(tflite_path: str | os.PathLike, path: str | os.PathLike, opset: int = 17) -> str:
    """Export a TFLite flatbuffer (``.tflite``) to ``path``.

    Input and output names are the TFLite tensors' names; a symbolic batch dim is named ``batch``.
    Float models convert exactly. Dynamic-range quantized ones (int8 weights, float activations)
    keep their int8 weights behind ``DequantizeLinear``; TFLite's hybrid kernels also quantize the
    activations on the fly, so the ONNX model (float activations) differs from TFLite's output by
    about the activations' quantization step.
    """
    source = os.fspath(tflite_path)
    if not os.path.isfile(source):
        raise ValueError(f"no TFLite file at {source}")
    _, tf2onnx = _import_tensorflow()
    try:
        proto, _ = tf2onnx.convert.from_tflite(source, opset=opset)
    except Exception as error:  # tf2onnx raises whatever its flatbuffer parser or op handlers raise
        raise ValueError(f"tf2onnx could not convert {source}: {type(error).__name__}: {error}") from None
    for value in proto.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims:
            _rename_dim_param(proto, dims[0].dim_param, "batch")
    return _save(proto, path)


def _import_tensorflow():
    load_llvm_users_in_order()
    try:
        import tensorflow as tf
        import tf2onnx
    except ImportError as error:
        raise ImportError(_MISSING) from error
    return tf, tf2onnx


def _export_shape(model, input_shape, dynamic_batch: bool) -> tuple[int | None, ...]:
    """The input shape to trace: the given or the model's own, with the batch dim as asked."""
    if input_shape is None:
        model_inputs = getattr(model, "inputs", None) or []
        if len(model_inputs) != 1:
            raise ValueError("export_keras needs input_shape for a model without exactly one known input")
        input_shape = tuple(model_inputs[0].shape)
    batch = None if dynamic_batch else input_shape[0]
    if batch is None and not dynamic_batch:
        raise ValueError("dynamic_batch=False needs an input_shape with a batch size")
    return (batch, *input_shape[1:])


@contextlib.contextmanager
def _grouped_convs_without_xla():
    """Trace Keras' grouped convolutions as one plain ``tf.nn.convolution`` (see module docstring).

    The traced graph is only converted, never run by TensorFlow, so the missing CPU kernel for
    grouped convolutions does not matter. Other convolutions keep Keras' own implementation.
    """
    import keras
    import tensorflow as tf
    from keras.src.backend.tensorflow import nn as keras_tf_nn

    keras_conv = keras_tf_nn.conv
    data_formats = {3: "NWC", 4: "NHWC", 5: "NDHWC"}

    def conv(inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
        rank = len(inputs.shape)
        channels_last = (data_format or keras.config.image_data_format()) == "channels_last"
        grouped = inputs.shape[-1] != kernel.shape[-2]
        if not (channels_last and grouped and rank in data_formats):
            return keras_conv(inputs, kernel, strides, padding, data_format, dilation_rate)
        return tf.nn.convolution(inputs, kernel, strides, padding.upper(),
                                 data_format=data_formats[rank], dilations=dilation_rate)

    keras_tf_nn.conv = conv
    try:
        yield
    finally:
        keras_tf_nn.conv = keras_conv


def _erfc_as_one_minus_erf(ctx, node, name, args):
    """tf2onnx handler for TF's ``Erfc``: turn the node into ``Erf`` and subtract it from 1."""
    import numpy as np
    from tf2onnx import utils

    node.type = "Erf"
    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.output[0]))
    one = ctx.make_const(utils.make_name(f"{name}_one"), np.array(1, dtype))
    ctx.insert_new_node_on_output("Sub", node.output[0], inputs=[one.output[0], node.output[0]])


_CUSTOM_OP_HANDLERS = {"Erfc": (_erfc_as_one_minus_erf, [])}

# What an op left unconverted usually means, for the error message.
_UNCONVERTED_HINTS = {
    "StatefulPartitionedCall": "an XLA-compiled function, e.g. a Keras 3 grouped convolution in a SavedModel;"
                               " export the Keras model with export_keras instead",
}


def _rename_dim_param(proto, old: str, new: str) -> None:
    """Rename the symbolic dim ``old`` (tf2onnx writes e.g. ``unk__30``) in every tensor type."""
    if not old:
        return
    graph = proto.graph
    for value in (*graph.input, *graph.output, *graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == old:
                dim.dim_param = new


def _save(proto, path) -> str:
    """Check that every node is a standard ONNX op, then write ``proto`` atomically."""
    import onnx

    from spa.io import save_model

    # tf2onnx keeps TF ops it cannot convert as they are; onnxruntime would reject them later.
    unconverted = sorted({n.op_type for n in proto.graph.node if not onnx.defs.has(n.op_type, n.domain)})
    if unconverted:
        described = [f"{op} ({_UNCONVERTED_HINTS[op]})" if op in _UNCONVERTED_HINTS else op for op in unconverted]
        raise ValueError(f"tf2onnx could not convert these TensorFlow ops to ONNX: {', '.join(described)}")
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return save_model(proto, path)
