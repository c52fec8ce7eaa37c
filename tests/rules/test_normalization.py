"""Normalizations: BatchNormalization, InstanceNormalization, GroupNormalization (opsets 18 and 21),
LayerNormalization and RMSNormalization (approximate over the pruned axis), LpNormalization."""
from __future__ import annotations

import numpy as np
import pytest

import spa
from graphs import (check_prune, ort_zeroing_error, conv_params, group_of, init_shape, node_attr, params, sandwich, units)

SEED_AND_CONSUMER = conv_params("l1") | {("l2.W", 1)}


def _positive(b, name, shape):
    return b.const(name, np.abs(b.rng.standard_normal(shape)) + 0.5)


def _batchnorm(b, h):
    return b.op("BatchNormalization", [h, b.weight("bn.scale", (8,)), b.weight("bn.B", (8,)),
                                       b.weight("bn.mean", (8,)), _positive(b, "bn.var", (8,))], name="bn")


def test_batchnorm_running_statistics_are_members():
    model = sandwich(_batchnorm, shape=("N", 4, 6, 6))
    group = group_of(model, "l1.W", 0)
    assert group.prunable and group.units == 8 and not group.approximate
    assert params(group) == SEED_AND_CONSUMER | {(f"bn.{p}", 0) for p in ("scale", "B", "mean", "var")}
    pruned, _ = check_prune(model)
    assert all(init_shape(pruned, f"bn.{p}") == (4,) for p in ("scale", "B", "mean", "var"))


def test_batchnorm_on_a_sequence():
    """(N, C, L) input after a 1-D conv."""
    model = sandwich(_batchnorm, shape=(2, 4, 10))
    assert len(params(group_of(model, "l1.W", 0))) == 7
    check_prune(model)


def test_instance_norm():
    model = sandwich(lambda b, h: b.op("InstanceNormalization", [h, b.weight("in.scale", (8,)), b.weight("in.B", (8,))]))
    group = group_of(model, "l1.W", 0)
    assert params(group) == SEED_AND_CONSUMER | {("in.scale", 0), ("in.B", 0)} and not group.approximate
    pruned, _ = check_prune(model)
    assert init_shape(pruned, "in.scale") == (4,)


def _group_norm(opset: int, stated_shape: bool = True):
    """GroupNormalization with 4 groups of 2 channels: scale and bias per group at opset 18, per
    channel at opset 21. ONNX shape inference cannot type its output, so the model states it."""
    size = 4 if opset < 21 else 8

    def middle(b, h):
        return b.op("GroupNormalization", [h, b.weight("gn.scale", (size,)), b.weight("gn.B", (size,))],
                    num_groups=4, name="gn", shape=(2, 8, 6, 6))

    # onnx.checker refuses GroupNormalization-18 (deprecated), while onnxruntime still runs it
    model = sandwich(middle, opset=opset, check=opset >= 21)
    if not stated_shape:
        del model.graph.value_info[:]
    return model


def _check_group_norm_group(group, opset):
    assert group.prunable and group.units == 4 and not group.approximate
    assert params(group) == SEED_AND_CONSUMER | {("gn.scale", 0), ("gn.B", 0)}
    assert units(group, "l1.W", 0)[1] == [2, 3]
    assert units(group, "gn.scale", 0)[1] == ([1] if opset < 21 else [2, 3])


def test_group_norm_per_channel_opset21_removes_whole_groups():
    model = _group_norm(21)
    _check_group_norm_group(group_of(model, "l1.W", 0), 21)
    pruned, _ = check_prune(model)
    assert node_attr(pruned, "gn", "num_groups") == 2
    assert init_shape(pruned, "gn.scale") == (4,) and init_shape(pruned, "l1.W")[0] == 4


def test_group_norm_per_group_opset18_removes_whole_groups():
    """The public API refuses the model (onnx.checker), so the rule is driven through a Graph and
    the result is compared with the zeroed original in onnxruntime directly."""
    model = _group_norm(18)
    analysis = spa.analyze(spa.Graph(model))
    group = group_of(analysis, "l1.W", 0)
    _check_group_norm_group(group, 18)
    pruned, report = spa.apply(analysis, {group.id: np.array([0, 2])}, check=False)
    assert node_attr(pruned, "gn", "num_groups") == 2
    assert init_shape(pruned, "gn.scale") == (2,) and init_shape(pruned, "l1.W") == (4, 4, 1, 1)
    assert ort_zeroing_error(model, pruned, report.removed) < 1e-5


def test_group_norm_without_stated_shapes_is_prunable():
    """ONNX's shape inference leaves GroupNormalization's output untyped; SPA must still know it."""
    model = _group_norm(21, stated_shape=False)
    _check_group_norm_group(group_of(model, "l1.W", 0), 21)
    check_prune(model)


def _layer_norm(op_type, axis=-1, shape=(8,), bias=True):
    def middle(b, h):
        inputs = [h, b.weight("ln.scale", shape)] + ([b.weight("ln.B", shape)] if bias else [])
        return b.op(op_type, inputs, axis=axis, name="ln")
    return middle


@pytest.mark.parametrize("op_type, opset", [("LayerNormalization", 17), ("RMSNormalization", 23)])
def test_norm_over_the_pruned_axis_is_approximate(op_type, opset):
    model = sandwich(_layer_norm(op_type, bias=op_type == "LayerNormalization"), shape=(2, 5, 6), kind="linear",
                     opset=opset)
    group = group_of(model, "l1.W", 1)
    assert group.prunable and group.approximate and any("'ln'" in r for r in group.approximate)
    norm_params = {("ln.scale", 0)} | ({("ln.B", 0)} if op_type == "LayerNormalization" else set())
    assert params(group) == {("l1.W", 1), ("l2.W", 0)} | norm_params
    pruned, report = spa.prune(model, ratio=0.5)
    assert report.approximate == [group.id]
    assert init_shape(pruned, "l1.W") == (6, 4) and init_shape(pruned, "ln.scale") == (4,)


def test_layer_norm_over_spatial_axes_keeps_channels_exact():
    """Statistics over (H, W) only: the channel axis (before `axis`) passes, with the Mean output."""
    def middle(b, h):
        y, mean, inv = b.op("LayerNormalization", [h, b.weight("ln.scale", (6, 6)), b.weight("ln.B", (6, 6))],
                            axis=2, outputs=3, name="ln")
        return b.op("Add", [b.op("Mul", [y, inv]), mean])

    model = sandwich(middle)
    group = group_of(model, "l1.W", 0)
    assert group.prunable and not group.approximate
    assert params(group) == SEED_AND_CONSUMER
    assert {("ln.y1", 1), ("ln.y2", 1)} <= {(m.tensor, m.axis) for m in group.members}
    check_prune(model)


@pytest.mark.parametrize("axis", [1, -1])
def test_lp_normalization(axis):
    model = sandwich(lambda b, h: b.op("LpNormalization", [h], axis=axis, p=2))
    group = group_of(model, "l1.W", 0)
    assert group.prunable and not group.approximate and params(group) == SEED_AND_CONSUMER
    check_prune(model)
