"""Crashes users met on models built the way they build them, each reproduced here and pruned.

1. Keras' ZeroPadding2D + Cropping2D (NASNet's factorized reductions) through tf2onnx: a Slice over
   all four axes, the symbolic batch among them; its rewrite asked for the batch's static size.
2. A Flax nnx ResNet as jax2onnx writes it: value_info keeps the NHWC shapes of tensors it made
   NCHW. Shapes were taken from that stale value_info where inference disagreed (a Relu's input
   16 channels, its output 32: "rule for Relu tied indices out of range"), and the pruned model
   carried the stale shapes on (onnxruntime then refuses it).
3. An initializer whose dims say more (or fewer) values than its data holds: onnx.checker sees only
   small initializers in SPA's skeleton, so the model got through to the analysis ("rule for Conv
   tied indices out of range"), then to numpy ("cannot reshape"). It is refused at load.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import spa
from spa.errors import SpaError
from spa.oracle import max_relative_error

TOL = 1e-4


def _prune_exactly(path_or_model, ratio):
    pruned, report = spa.prune(path_or_model, ratio=ratio)
    assert report.removed, "nothing was removed"
    assert max_relative_error(path_or_model, pruned, report.removed) < TOL
    return pruned, report


def _only_output_group_blocked(report):
    reasons = [r for b in report.blocked for r in b["reasons"]]
    assert all("reaches the graph output" in r for r in reasons), reasons


# ------------------------------------------------------------------ 1. Keras crop after pad
def _keras_pad_then_crop():
    pytest.importorskip("tensorflow")
    import keras
    from keras import layers

    from models_zoo.keras_models import randomize

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = layers.ReLU()(layers.Conv2D(8, 3, padding="same")(inputs))
    x = layers.Cropping2D(((1, 0), (1, 0)))(layers.ZeroPadding2D(((0, 1), (0, 1)))(x))  # as NASNet's adjust block
    x = layers.Conv2D(8, 1)(layers.AveragePooling2D(1, strides=2)(x))
    outputs = layers.Dense(10)(layers.GlobalAveragePooling2D()(x))
    return randomize(keras.Model(inputs, outputs), 0)


def test_keras_zero_padding_then_cropping_prunes(tmp_path):
    """tf2onnx writes Cropping2D as a Slice with starts, ends and axes for all four axes of the
    NCHW tensor, the symbolic batch first; pruning the channels rewrites only their bounds."""
    model = _keras_pad_then_crop()
    from frontends.tensorflow import export_keras

    path = export_keras(model, tmp_path / "crop.onnx")
    pruned, report = _prune_exactly(path, 0.5)
    _only_output_group_blocked(report)
    crop = next(n for n in pruned.graph.node if n.op_type == "Slice")
    axes = numpy_helper.to_array(next(t for t in pruned.graph.initializer if t.name == crop.input[3])).tolist()
    ends = numpy_helper.to_array(next(t for t in pruned.graph.initializer if t.name == crop.input[2])).tolist()
    conv = next(t for t in pruned.graph.initializer if t.name == pruned.graph.node[1].input[1])
    assert ends[axes.index(1)] == conv.dims[0] < 8  # the channel bound follows the prune


@pytest.mark.slow
def test_keras_nasnet_mobile_prunes(tmp_path):
    pytest.importorskip("tensorflow")
    import keras

    from frontends.tensorflow import export_keras
    from models_zoo.keras_models import randomize

    keras.utils.set_random_seed(0)
    model = randomize(keras.applications.NASNetMobile(weights=None, input_shape=(32, 32, 3), classes=10), 0)
    path = export_keras(model, tmp_path / "nasnet.onnx")
    _, report = _prune_exactly(path, 0.3)
    assert report.groups_pruned >= 100 and report.params_after < 0.6 * report.params_before


# ------------------------------------------------------------------ 2. jax2onnx's stale value_info
def test_flax_resnet_with_jax2onnx_stale_value_info_prunes_exactly(tmp_path):
    """The model as jax2onnx writes it, without export_flax's clean-up of its value_info: Relu
    nodes between NCHW Convs whose value_info still says NHWC. The shapes inference finds win,
    and the pruned model keeps none of the stale ones."""
    pytest.importorskip("jax2onnx")
    import jax2onnx
    from flax import nnx

    from models_zoo.flax_models import FLAX_ZOO

    entry = FLAX_ZOO["resnet_projection"]
    module = nnx.view(entry.build(), use_running_average=True, deterministic=True, raise_if_not_found=False)
    proto = jax2onnx.to_onnx(module, [("batch", *entry.input_shape[1:])], opset=17,
                             input_names=["input"], output_names=["output"])
    proto.ir_version = min(proto.ir_version, 10)
    declared = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in proto.graph.value_info}
    relu = next(n for n in proto.graph.node if n.op_type == "Relu")
    assert declared[relu.output[0]][1:] == [32, 32, 8], "jax2onnx no longer writes NHWC shapes on NCHW tensors"
    path = tmp_path / "raw.onnx"
    onnx.save(proto, path)

    pruned, report = _prune_exactly(str(path), 0.3)
    _only_output_group_blocked(report)
    onnx.checker.check_model(pruned, full_check=True)  # no declared shape contradicts the graph


# ------------------------------------------------------------------ 3. declared shapes against the data
def _conv_chain(w1_dims=None, y1_declared=None):
    """x -> Conv w0 (16) -> Conv w1 (16, large) -> Relu -> Conv w2 (8) -> y."""
    rng = np.random.default_rng(0)
    w0, w1, w2 = (rng.standard_normal(s).astype(np.float32) for s in ((16, 3, 3, 3), (16, 16, 3, 3), (8, 16, 3, 3)))
    inits = [numpy_helper.from_array(w, n) for w, n in ((w0, "w0"), (w1, "w1"), (w2, "w2"))]
    if w1_dims is not None:
        del inits[1].dims[:]
        inits[1].dims.extend(w1_dims)
    nodes = [helper.make_node("Conv", ["x", "w0"], ["y0"], pads=[1] * 4),
             helper.make_node("Conv", ["y0", "w1"], ["y1"], pads=[1] * 4),
             helper.make_node("Relu", ["y1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["y"], pads=[1] * 4)]
    value_info = [] if y1_declared is None else [helper.make_tensor_value_info("y1", TensorProto.FLOAT, y1_declared)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], inits,
                              value_info=value_info)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("dims", [(64, 16, 3, 3), (8, 16, 3, 3)])
def test_initializer_whose_data_does_not_fill_its_dims_is_refused(dims):
    """w1 holds 16 x 16 x 3 x 3 values, more than the 4,096 SPA's skeleton keeps inline: the
    checker never saw its data. No shape is its true one; the model is refused in one line."""
    model = _conv_chain(w1_dims=dims)
    with pytest.raises(SpaError, match=r"initializer 'w1' declares shape \[" + ", ".join(map(str, dims))) as error:
        spa.analyze(model)
    assert "\n" not in str(error.value)
    with pytest.raises(SpaError, match="initializer 'w1'"):
        spa.prune(model, ratio=0.5)


def test_conv_output_with_a_stale_value_info_takes_the_inferred_shape():
    """The model declares 64 channels for a Conv whose weight makes 16 (onnxruntime runs it,
    merging leniently): the weight is right, and the prune is exact."""
    model = _conv_chain(y1_declared=[1, 64, 8, 8])
    analysis = spa.analyze(model)
    assert not [g for g in analysis.groups if g.blocked and not any("graph output" in r for r in g.blocked)]
    pruned, report = _prune_exactly(model, 0.5)
    assert {(e["tensor"], e["axis"]) for e in report.removed} >= {("w1", 0), ("w2", 1)}
    onnx.checker.check_model(pruned, full_check=True)
