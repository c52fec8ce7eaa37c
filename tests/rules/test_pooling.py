"""Pooling, reductions, Softmax, Resize and Pad: channels pass where the operator works per channel,
and block (or go approximate) where it computes across channels."""
from __future__ import annotations

import numpy as np
import pytest

import spa
from spa.oracle import max_relative_error
from graphs import (Builder, assert_blocked, check_prune, conv_params, group_of, init_shape, node_input_value,
                    member, params, sandwich, units)

SEED_AND_CONSUMER = conv_params("l1") | {("l2.W", 1)}


def _passes(middle, **kw):
    model = sandwich(middle, **kw)
    group = group_of(model, "l1.W", 0)
    assert group.prunable and group.units == 8 and not group.approximate
    assert params(group) == SEED_AND_CONSUMER
    return check_prune(model)


# ----------------------------------------------------------------------------- pooling
POOLS = {
    "MaxPool": lambda b, h: b.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2]),
    "AveragePool": lambda b, h: b.op("AveragePool", [h], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    "LpPool": lambda b, h: b.op("LpPool", [h], kernel_shape=[2, 2], p=2),
    "GlobalAveragePool": lambda b, h: b.op("GlobalAveragePool", [h]),
    "GlobalMaxPool": lambda b, h: b.op("GlobalMaxPool", [h]),
    "GlobalLpPool": lambda b, h: b.op("GlobalLpPool", [h], p=2),
}


@pytest.mark.parametrize("name", sorted(POOLS))
def test_pool_passes_channels(name):
    _passes(POOLS[name], shape=("N", 4, 6, 6))


def test_maxpool_with_indices_blocks():
    model = sandwich(lambda b, h: b.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2], outputs=2, name="mp")[0])
    assert_blocked(model, "l1.W", 0, "indices", "'mp'")


# ----------------------------------------------------------------------------- reductions
def _reduce(op_type, axes, keepdims, opset):
    """Reduce `axes` of the conv output; axes as an attribute before opset 18 (13 for ReduceSum)."""
    as_input = opset >= 18 or op_type == "ReduceSum"

    def middle(b, h):
        if as_input:
            return b.op(op_type, [h, b.const("axes", axes)], keepdims=keepdims, name="red")
        return b.op(op_type, [h], axes=axes, keepdims=keepdims, name="red")
    return middle


@pytest.mark.parametrize("op_type, opset", [("ReduceMean", 13), ("ReduceMean", 18), ("ReduceSum", 13),
                                            ("ReduceMax", 18), ("ReduceL2", 18)])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_over_spatial_axes_passes_channels(op_type, opset, keepdims):
    b = Builder(opset)
    x = b.input((2, 4, 6, 6))
    h = _reduce(op_type, [2, 3], keepdims, opset)(b, b.conv(x, 8, name="l1"))
    if keepdims:
        y = b.conv(h, 4, name="l2")
    else:
        y = b.op("Gemm", [h, b.weight("l2.W", (4, 8))], transB=1, name="l2")
    b.output(y)
    model = b.build()
    group = group_of(model, "l1.W", 0)
    assert group.prunable and not group.approximate and params(group) == SEED_AND_CONSUMER
    pruned, _ = check_prune(model)
    assert init_shape(pruned, "l2.W")[1] == 4


def test_reduce_with_negative_axes_on_a_sequence():
    model = sandwich(_reduce("ReduceMean", [-2], 0, 18), shape=(2, 5, 6), kind="linear", opset=18)
    assert group_of(model, "l1.W", 1).prunable
    check_prune(model)


def _reduce_channels(op_type, opset=18):
    """Reduce over the channel axis (of |conv|, so that ReduceLogSum is defined): nothing consumes
    channels after it."""
    b = Builder(opset)
    x = b.input((2, 4, 6, 6))
    b.output(_reduce(op_type, [1], 1, opset)(b, b.op("Abs", [b.conv(x, 8, name="l1")])))
    return b.build()


@pytest.mark.parametrize("op_type", ["ReduceSum", "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSum"])
def test_reduce_over_channels_exact(op_type):
    model = _reduce_channels(op_type)
    group = group_of(model, "l1.W", 0)
    assert group.prunable and not group.approximate and params(group) == conv_params("l1")
    check_prune(model)


@pytest.mark.parametrize("opset", [13, 18])
def test_reduce_mean_over_channels_is_approximate(opset):
    model = _reduce_channels("ReduceMean", opset)
    group = group_of(model, "l1.W", 0)
    assert group.prunable and any("'red'" in r for r in group.approximate)
    pruned, report = spa.prune(model, ratio=0.5)
    assert report.approximate == [group.id] and init_shape(pruned, "l1.W")[0] == 4


@pytest.mark.parametrize("op_type", ["ReduceMax", "ReduceMin", "ReduceProd", "ReduceLogSumExp"])
def test_reduce_over_channels_blocked(op_type):
    assert_blocked(_reduce_channels(op_type), "l1.W", 0, op_type, "reduces over the pruned axis")


def test_reduce_over_all_axes_by_default():
    b = Builder(18)
    x = b.input((2, 4, 6, 6))
    b.output(b.op("ReduceMax", [b.conv(x, 8, name="l1")], name="red"))
    assert_blocked(b.build(), "l1.W", 0, "'red'")


def _sum_over_channels_after_sigmoid(reduction, activation="Sigmoid"):
    b = Builder(18)
    x = b.input((2, 5, 6))
    q = b.op(activation, [b.linear(x, 8, name="l1")])
    if reduction == "ReduceSum":
        y = b.op("ReduceSum", [q, b.const("axes", [-1])], keepdims=1)
    elif reduction == "LpNormalization":
        y = b.linear(b.op("LpNormalization", [q], axis=-1, p=2), 3, name="l2")
    else:  # an attention-like contraction: both factors are sigmoids of the pruned channels
        k = b.op(activation, [b.linear(x, 8, name="k")])
        y = b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 2, 1])])
    b.output(y)
    return b.build()


@pytest.mark.parametrize("reduction", ["ReduceSum", "LpNormalization", "MatMul"])
def test_sum_over_channels_after_a_non_zero_preserving_op_is_approximate(reduction):
    """sigmoid(0) = 0.5: zeroed channels still add to the sum, so removing them is not exact."""
    model = _sum_over_channels_after_sigmoid(reduction)
    group = group_of(model, "l1.W", 1)
    assert group.prunable and group.approximate
    assert any("not zero there" in r for r in group.approximate)
    pruned, report = spa.prune(model, ratio=0.5)
    assert report.approximate and init_shape(pruned, "l1.W")[1] == 4


@pytest.mark.parametrize("reduction", ["ReduceSum", "LpNormalization", "MatMul"])
def test_sum_over_channels_after_relu_is_exact(reduction):
    model = _sum_over_channels_after_sigmoid(reduction, activation="Relu")
    group = group_of(model, "l1.W", 1)
    assert group.prunable and not group.approximate
    check_prune(model)


@pytest.mark.parametrize("op_type", ["ArgMax", "ArgMin"])
def test_argmax_over_channels_blocked(op_type):
    b = Builder()
    x = b.input((2, 4, 6, 6))
    b.output(b.op(op_type, [b.conv(x, 8, name="l1")], axis=1, name="arg"))
    assert_blocked(b.build(), "l1.W", 0, "'arg'", "positions")


def test_argmax_over_a_spatial_axis_passes_channels_to_the_output():
    b = Builder()
    x = b.input((2, 4, 6, 6))
    b.output(b.op("ArgMax", [b.conv(x, 8, name="l1")], axis=3, keepdims=0, name="arg"))
    group = assert_blocked(b.build(), "l1.W", 0, "graph output 'arg.y'")
    assert ("arg.y", 1) in {(m.tensor, m.axis) for m in group.members}


# ----------------------------------------------------------------------------- Softmax
@pytest.mark.parametrize("op_type", ["Softmax", "LogSoftmax", "Hardmax"])
def test_softmax_over_a_non_channel_axis(op_type):
    _passes(lambda b, h: b.op(op_type, [h], axis=-1))


@pytest.mark.parametrize("op_type", ["Softmax", "LogSoftmax"])
def test_softmax_over_channels_blocked(op_type):
    model = sandwich(lambda b, h: b.op(op_type, [h], axis=1, name="sm"))
    assert_blocked(model, "l1.W", 0, "'sm'", "normalizes over the pruned axis")


def test_softmax_default_axis_over_channels_last_blocked():
    model = sandwich(lambda b, h: b.op("Softmax", [h], name="sm"), shape=(2, 5, 6), kind="linear")
    assert_blocked(model, "l1.W", 1, "'sm'")


# ----------------------------------------------------------------------------- Resize
def _resize(scales=None, sizes=None, **attrs):
    def middle(b, h):
        s = b.const("scales", np.array(scales, np.float32)) if scales is not None else ""
        z = b.const("sizes", sizes) if sizes is not None else ""
        return b.op("Resize", [h, "", s, z] if z else [h, "", s], mode="nearest", name="rs", **attrs)
    return middle


def test_resize_with_scales():
    pruned, _ = _passes(_resize(scales=[1, 1, 2, 2]))
    assert node_input_value(pruned, "rs", 2).tolist() == [1, 1, 2, 2]


def test_resize_with_sizes_is_rewritten():
    pruned, _ = _passes(_resize(sizes=[2, 8, 12, 12]))
    assert node_input_value(pruned, "rs", 3).tolist() == [2, 4, 12, 12]


def test_resize_with_sizes_on_spatial_axes_only():
    pruned, _ = _passes(_resize(sizes=[9, 9], axes=[2, 3]), opset=18)
    assert node_input_value(pruned, "rs", 3).tolist() == [9, 9]


def test_resize_scaling_channels_blocks():
    assert_blocked(sandwich(_resize(scales=[1, 2, 1, 1])), "l1.W", 0, "'rs'", "rescales axis 1")


# ----------------------------------------------------------------------------- Pad
def _pad(pads, mode="constant", value=None):
    def middle(b, h):
        inputs = [h, b.const("pads", pads)] + ([b.const("pad_value", np.array(value, np.float32))] if value else [])
        return b.op("Pad", inputs, mode=mode, name="pad")
    return middle


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad_without_channel_pads(mode):
    _passes(_pad([0, 0, 1, 2, 0, 0, 2, 1], mode))


def _constant_channel_pad_model(value=None):
    return sandwich(_pad([0, 1, 0, 0, 0, 2, 0, 0], value=value))


def test_constant_channel_pad_shifts_the_consumer():
    model = _constant_channel_pad_model()
    group = group_of(model, "l1.W", 0)
    assert group.prunable and group.units == 8 and params(group) == SEED_AND_CONSUMER
    assert units(group, "l2.W", 1) == [[c + 1] for c in range(8)]  # channel c lands at c + 1
    assert member(group, "l2.W", 1).size == 11


@pytest.mark.parametrize("value", [None, 0.5])
def test_constant_channel_pad_prunes(value):
    model = _constant_channel_pad_model(value)
    pruned, _ = check_prune(model)
    assert init_shape(pruned, "l1.W")[0] == 4 and init_shape(pruned, "l2.W")[1] == 7


def test_constant_channel_pad_prunes_the_real_channels():
    """Pruning only the group born at the seed conv (the pad's own channels left alone) is exact."""
    model = _constant_channel_pad_model()
    analysis = spa.analyze(model)
    group = group_of(analysis, "l1.W", 0)
    pruned, report = spa.apply(analysis, {group.id: np.array([1, 4, 5, 6])})
    assert init_shape(pruned, "l2.W") == (4, 7, 1, 1)
    assert max_relative_error(model, pruned, report.removed) < 1e-5


@pytest.mark.parametrize("mode", ["reflect", "edge"])
def test_non_constant_channel_pad_blocks(mode):
    assert_blocked(sandwich(_pad([0, 1, 0, 0, 0, 1, 0, 0], mode)), "l1.W", 0, "'pad'", "axis 1")


def test_negative_channel_pad_blocks():
    assert_blocked(sandwich(_pad([0, -1, 0, 0, 0, 0, 0, 0])), "l1.W", 0, "'pad'")


def _pad_axes(pads, axes, mode):
    return lambda b, h: b.op("Pad", [h, b.const("pads", pads), "", b.const("pad_axes", axes)], mode=mode, name="pad")


def test_pad_with_an_axes_input():
    _passes(_pad_axes([1, 2], [-1], "reflect"), opset=18)


def test_pad_with_an_axes_input_on_channels():
    model = sandwich(_pad_axes([2, 0], [1], "constant"), opset=18)
    assert units(group_of(model, "l1.W", 0), "l2.W", 1)[0] == [2]
    assert_blocked(sandwich(_pad_axes([2, 0], [1], "reflect"), opset=18), "l1.W", 0, "'pad'")
