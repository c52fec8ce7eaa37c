"""Operators that move, cut, join or re-view data: Concat, Split, Slice, Reshape, Flatten, Squeeze,
Unsqueeze, Transpose, Expand, Tile, Gather, DepthToSpace, SpaceToDepth, Shape."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import spa
from spa.oracle import max_relative_error
from graphs import (Builder, assert_blocked, check_prune, conv_params, group_of, groups_of, init_shape, member,
                    node, node_input_value, params, removed, sandwich, units)

SEED_AND_CONSUMER = conv_params("l1") | {("l2.W", 1)}


def _kept(report, tensor, axis, size):
    return np.setdiff1d(np.arange(size), removed(report).get((tensor, axis), []))


# ----------------------------------------------------------------------------- Concat
def test_concat_of_two_producers_offsets_the_consumer():
    b = Builder()
    x = b.input((2, 4, 6, 6))
    h = b.op("Concat", [b.conv(x, 8, name="a"), b.conv(x, 4, name="b")], axis=1)
    b.output(b.conv(h, 3, name="l2"))
    model = b.build()
    analysis = spa.analyze(model)
    a, c = group_of(analysis, "a.W", 0), group_of(analysis, "b.W", 0)
    assert a.id != c.id and a.units == 8 and c.units == 4
    assert params(a) == conv_params("a") | {("l2.W", 1)} and params(c) == conv_params("b") | {("l2.W", 1)}
    assert member(a, "l2.W", 1).indices.tolist() == list(range(8))
    assert member(c, "l2.W", 1).indices.tolist() == [8, 9, 10, 11]
    pruned, report = check_prune(model)
    assert init_shape(pruned, "l2.W") == (3, 6, 1, 1)
    assert max(removed(report)[("l2.W", 1)]) >= 8  # some of b's channels went, at their offset


def test_concat_on_a_non_channel_axis_couples_both_producers():
    b = Builder()
    x = b.input((2, 4, 6, 6))
    h = b.op("Concat", [b.conv(x, 8, name="a"), b.conv(x, 8, name="b")], axis=2)
    b.output(b.conv(h, 3, name="l2"))
    model = b.build()
    assert params(group_of(model, "a.W", 0)) == conv_params("a", "b") | {("l2.W", 1)}
    check_prune(model)


def test_concat_with_a_constant_on_channels():
    """A constant's channels are parameters too: they form a group with the consumer's columns."""
    model = sandwich(lambda b, h: b.op("Concat", [h, b.weight("extra", (2, 3, 6, 6))], axis=1))
    assert params(group_of(model, "l1.W", 0)) == SEED_AND_CONSUMER
    assert params(group_of(model, "extra", 1)) == {("extra", 1), ("l2.W", 1)}
    check_prune(model)


def test_concat_of_a_tensor_with_itself():
    model = sandwich(lambda b, h: b.op("Concat", [h, h], axis=1))
    assert units(group_of(model, "l1.W", 0), "l2.W", 1)[5] == [5, 13]
    pruned, _ = check_prune(model)
    assert init_shape(pruned, "l2.W") == (4, 8, 1, 1)


# ----------------------------------------------------------------------------- Split
def _split_model(opset, sizes=None, num_outputs=None):
    b = Builder(opset)
    x = b.input((2, 4, 6, 6))
    h = b.conv(x, 8, name="l1")
    if num_outputs:
        parts = b.op("Split", [h], outputs=num_outputs, axis=1, num_outputs=num_outputs, name="split")
    else:
        parts = b.op("Split", [h, b.const("sizes", sizes)], outputs=len(sizes), axis=1, name="split")
    ys = [b.conv(p, 3, name=f"c{i}") for i, p in enumerate(parts)]
    b.output(b.op("Sum", ys))
    return b.build()


def _by_first_channel(groups, tensor="l1.W", axis=0):
    return sorted(groups, key=lambda g: member(g, tensor, axis).indices.min())


@pytest.mark.parametrize("opset, sizes, num_outputs", [(13, [3, 5], None), (18, None, 2), (18, None, 3)])
def test_split_rewrites_its_sizes(opset, sizes, num_outputs):
    """Each output's channels run through their own consumer: one group per output."""
    model = _split_model(opset, sizes, num_outputs)
    n = num_outputs or len(sizes)
    expected_sizes = sizes or {2: [4, 4], 3: [3, 3, 2]}[n]
    starts = np.cumsum([0] + expected_sizes)
    groups = _by_first_channel(groups_of(spa.analyze(model), "l1.W", 0))
    assert len(groups) == n
    for i, group in enumerate(groups):
        assert group.prunable and group.units == expected_sizes[i]
        assert params(group) == conv_params("l1") | {(f"c{i}.W", 1)}
        assert member(group, "l1.W", 0).indices.tolist() == list(range(starts[i], starts[i + 1]))
        assert member(group, f"c{i}.W", 1).indices.tolist() == list(range(expected_sizes[i]))
    pruned, report = check_prune(model)
    kept = _kept(report, "l1.W", 0, 8)
    new_sizes = [int(np.sum((kept >= lo) & (kept < hi))) for lo, hi in zip(starts, starts[1:])]
    assert new_sizes == [s - s // 2 for s in expected_sizes]
    assert node_input_value(pruned, "split", 1).tolist() == new_sizes
    assert all(a.name != "num_outputs" for a in node(pruned, "split").attribute)


def test_equal_split_at_opset_13_gets_a_sizes_input():
    b = Builder(13)
    parts = b.op("Split", [b.conv(b.input((2, 4, 6, 6)), 8, name="l1")], outputs=2, axis=1, name="split")
    b.output(b.op("Add", [b.conv(parts[0], 3, name="c0"), b.conv(parts[1], 3, name="c1")]))
    pruned, _ = check_prune(b.build())
    assert node_input_value(pruned, "split", 1).tolist() == [2, 2]


def test_split_with_an_unused_output_blocks():
    """Conservative: the sizes come from the outputs' shapes, and an unused output has none (even
    when the sizes input is a constant). Analysis only: onnxruntime 1.31 crashes (SIGSEGV) running a
    Split with an empty output name, so neither spa.prune nor the oracle can be run on it."""
    b = Builder(18)
    h = b.conv(b.input((2, 4, 6, 6)), 8, name="l1")
    b.nodes.append(helper.make_node("Split", [h, b.const("sizes", [4, 4])], ["s0", ""], axis=1, name="split"))
    b.output(b.conv("s0", 3, name="c0"))
    group = group_of(b.build(), "l1.W", 0)
    assert group.blocked and any("'split'" in r and "unused output" in r for r in group.blocked)


# ----------------------------------------------------------------------------- Slice
def _slice(starts, ends, axes=(1,), steps=None, name="sl"):
    def middle(b, h):
        inputs = [h, b.const("starts", starts), b.const("ends", ends), b.const("sl_axes", list(axes))]
        return b.op("Slice", inputs + ([b.const("steps", steps)] if steps else []), name=name)
    return middle


@pytest.mark.parametrize("starts, ends, inside", [([2], [6], [2, 3, 4, 5]), ([-6], [-2], [2, 3, 4, 5]),
                                                 ([3], [np.iinfo(np.int64).max], [3, 4, 5, 6, 7])])
def test_slice_on_channels_rewrites_its_bounds(starts, ends, inside):
    """The sliced channels go with the consumer; the ones cut away are a group of their own (unused)."""
    model = sandwich(_slice(starts, ends))
    used, unused = sorted(groups_of(spa.analyze(model), "l1.W", 0), key=lambda g: len(g.members), reverse=True)
    assert used.prunable and params(used) == SEED_AND_CONSUMER
    assert member(used, "l1.W", 0).indices.tolist() == inside
    assert member(used, "l2.W", 1).indices.tolist() == list(range(len(inside)))
    assert unused.prunable and params(unused) == conv_params("l1")
    assert sorted(member(unused, "l1.W", 0).indices.tolist()) == sorted(set(range(8)) - set(inside))
    pruned, report = check_prune(model)
    kept = _kept(report, "l1.W", 0, 8)
    start = int(np.sum(kept < inside[0]))
    assert node_input_value(pruned, "sl", 1).tolist() == [start]
    assert node_input_value(pruned, "sl", 2).tolist() == [start + init_shape(pruned, "l2.W")[1]]


def test_slice_with_a_negative_axis():
    model = sandwich(_slice([1], [7], axes=(-3,)))
    assert member(group_of(spa.analyze(model), "l2.W", 1), "l1.W", 0).indices.tolist() == [1, 2, 3, 4, 5, 6]
    check_prune(model)


def test_slice_on_a_spatial_axis_passes_channels():
    model = sandwich(_slice([1], [5], axes=(2,)))
    assert params(group_of(model, "l1.W", 0)) == SEED_AND_CONSUMER
    check_prune(model)


def test_slice_with_step_two_on_channels_blocks():
    assert_blocked(sandwich(_slice([0], [8], steps=[2])), "l1.W", 0, "'sl'", "every 2th")


def test_slice_with_computed_starts_blocks():
    def middle(b, h):
        starts = b.input((1,), name="S", dtype=7)  # int64, fed at run time
        return b.op("Slice", [h, starts, b.const("ends", [4]), b.const("sl_axes", [1])], name="sl", shape=(2, 4, 6, 6))

    assert_blocked(sandwich(middle), "l1.W", 0, "starts", "'sl'", "run time")


def test_slice_over_every_axis_with_a_symbolic_batch_rewrites_the_channel_bounds():
    """Keras' ZeroPadding2D + Cropping2D (NASNet's factorized reduction) through tf2onnx: a Pad, then
    a Slice whose starts, ends and axes list all four axes, the symbolic batch among them. Pruning
    the channels rewrites their bounds only; the batch's size is never needed."""
    big = np.iinfo(np.int32).max

    def middle(b, h):
        padded = b.op("Pad", [h, b.const("pads", [0, 0, 0, 0, 0, 0, 1, 1])], name="pad")
        inputs = [padded, b.const("starts", [0, 1, 1, 0]), b.const("ends", [big] * 4), b.const("sl_axes", [0, 2, 3, 1])]
        return b.op("Slice", inputs, name="sl")

    model = sandwich(middle, shape=("batch", 4, 6, 6))
    assert params(group_of(model, "l1.W", 0)) == SEED_AND_CONSUMER
    pruned, report = check_prune(model)
    channels = init_shape(pruned, "l1.W")[0]
    assert node_input_value(pruned, "sl", 1).tolist() == [0, 1, 1, 0]
    assert node_input_value(pruned, "sl", 2).tolist() == [big, big, big, channels]


def test_slice_cutting_a_digit_of_a_symbolic_axis_blocks():
    """Heads merged into the batch ("4*batch") and sliced there: a cut of the merged axis is no cut
    of the head digit, so the heads stay."""
    def middle(b, h):
        heads = b.op("Reshape", [h, b.const("to_heads", [-1, 6, 6])], name="heads")  # (4 * batch, 6, 6)
        cut = b.op("Slice", [heads, b.const("starts", [1]), b.const("ends", [3]), b.const("sl_axes", [0])], name="sl")
        return b.op("Reshape", [cut, b.const("back", [-1, 2, 6, 6])], name="back")

    group = group_of(sandwich(middle, shape=("batch", 4, 6, 6), channels=2), "l1.W", 0)
    assert not group.prunable and any("'sl'" in r and "symbolic size" in r for r in group.blocked), group.blocked


# ----------------------------------------------------------------------------- Reshape, Flatten
def _flatten_into_gemm(flatten, batch=2):
    b = Builder()
    x = b.input((batch, 4, 3, 3))
    h = flatten(b, b.conv(x, 8, name="l1"))
    b.output(b.op("Gemm", [h, b.weight("l2.W", (5, 72)), b.weight("l2.C", (5,))], transB=1, name="l2"))
    return b.build()


FLATTENS = {
    "Reshape[0,-1] N": (lambda b, h: b.op("Reshape", [h, b.const("shape", [0, -1])], name="flat"), "N"),
    "Reshape[-1,72] N": (lambda b, h: b.op("Reshape", [h, b.const("shape", [-1, 72])], name="flat"), "N"),
    "Flatten": (lambda b, h: b.op("Flatten", [h], axis=1, name="flat"), 2),
    "Reshape[2,-1]": (lambda b, h: b.op("Reshape", [h, b.const("shape", [2, -1])], name="flat"), 2),
    "Reshape[0,72]": (lambda b, h: b.op("Reshape", [h, b.const("shape", [0, 72])], name="flat"), 2),
    "Flatten N": (lambda b, h: b.op("Flatten", [h], axis=1, name="flat"), "N"),
}


@pytest.mark.parametrize("name", sorted(FLATTENS))
def test_flatten_into_gemm_bundles_spatial_positions(name):
    flatten, batch = FLATTENS[name]
    model = _flatten_into_gemm(flatten, batch)
    group = group_of(model, "l1.W", 0)
    assert group.prunable and group.units == 8
    assert params(group) == conv_params("l1") | {("l2.W", 1)}
    assert units(group, "l2.W", 1)[2] == list(range(18, 27))  # H * W = 9 columns per channel
    pruned, _ = check_prune(model)
    assert init_shape(pruned, "l2.W") == (5, 36)
    if name.startswith("Reshape") and "72" in name:
        assert node_input_value(pruned, "flat", 1).tolist()[1] == 36


def _heads_model(shape=(2, 5, 8), split=(2, 5, 2, 4)):
    """(B, T, 8) -> (B, T, heads=2, dim=4) -> per-head op -> back to (B, T, 8)."""
    def middle(b, h):
        heads = b.op("Reshape", [h, b.const("split_shape", list(split))], name="split_heads")
        heads = b.op("Softmax", [heads], axis=1)  # over T: per channel
        return b.op("Reshape", [heads, b.const("merge_shape", list(shape))], name="merge_heads")
    return sandwich(middle, shape=shape[:2] + (6,), kind="linear")


@pytest.mark.parametrize("carrier, n_units, unit1, new_split", [
    ("outer", 2, [4, 5, 6, 7], [2, 5, 1, 4]),  # whole heads go
    ("inner", 4, [1, 5], [2, 5, 2, 2]),  # the same position in every head goes
])
def test_reshape_into_heads_carrier(carrier, n_units, unit1, new_split):
    model = _heads_model()
    group = group_of(model, "l1.W", 1, carrier=carrier)
    assert group.prunable and group.units == n_units
    assert params(group) == {("l1.W", 1), ("l2.W", 0)}
    assert units(group, "l1.W", 1)[1] == unit1 and units(group, "l2.W", 0)[1] == unit1
    pruned, _ = check_prune(model, carrier=carrier)
    assert node_input_value(pruned, "split_heads", 1).tolist() == new_split
    assert node_input_value(pruned, "merge_heads", 1).tolist() == [2, 5, 4]


def _multi_head_attention(batch):
    """q, k, v = x W + b split into 2 heads of 4, softmax(q k^T) v, heads merged, projected."""
    b = Builder()
    x = b.input((batch, 5, 6))

    def heads(name):
        t = b.op("Reshape", [b.linear(x, 8, name=name, bias=True), b.const(f"{name}_shape", [0, 0, 2, 4])],
                 name=f"{name}_split")
        return b.op("Transpose", [t], perm=[0, 2, 1, 3])  # (B, heads, T, dim)

    q, k, v = heads("q"), heads("k"), heads("v")
    scores = b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 1, 3, 2])])
    probs = b.op("Softmax", [b.op("Mul", [scores, b.const("scale", np.array(0.5, np.float32))])], axis=-1)
    out = b.op("Transpose", [b.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
    b.output(b.linear(b.op("Reshape", [out, b.const("merge_shape", [0, 0, 8])], name="merge"), 6, name="o"))
    return b.build()


QKV = {(f"{n}.W", 1) for n in "qkv"} | {(f"{n}.B", 0) for n in "qkv"}


@pytest.mark.parametrize("batch", [2, "N"])
def test_multi_head_attention_outer_carrier_removes_whole_heads(batch):
    model = _multi_head_attention(batch)
    group = group_of(model, "q.W", 1)
    assert group.prunable and group.units == 2 and params(group) == QKV | {("o.W", 0)}
    pruned, _ = check_prune(model)
    assert init_shape(pruned, "q.W") == (6, 4)
    assert node_input_value(pruned, "q_split", 1).tolist() == [0, 0, 1, 4]


def test_multi_head_attention_inner_carrier_shrinks_every_head():
    """Within a head, q and k share the contracted dim; v and the projection share the output dim."""
    model = _multi_head_attention(2)
    analysis = spa.analyze(model, carrier="inner")
    qk, vo = group_of(analysis, "q.W", 1), group_of(analysis, "v.W", 1)
    assert qk.units == vo.units == 4
    assert params(qk) == {("q.W", 1), ("q.B", 0), ("k.W", 1), ("k.B", 0)}
    assert params(vo) == {("v.W", 1), ("v.B", 0), ("o.W", 0)}
    assert units(qk, "q.W", 1)[1] == [1, 5]
    pruned, _ = check_prune(model, carrier="inner")
    assert node_input_value(pruned, "q_split", 1).tolist() == [0, 0, 2, 2]


def test_reshape_into_heads_with_zero_and_minus_one_entries():
    b = Builder()
    x = b.input(("N", 5, 6))
    h = b.op("Reshape", [b.linear(x, 8, name="l1"), b.const("split_shape", [0, 0, 2, -1])], name="split_heads")
    h = b.op("Transpose", [h], perm=[0, 2, 1, 3])  # (N, heads, T, dim)
    h = b.op("Transpose", [b.op("Relu", [h])], perm=[0, 2, 1, 3])
    b.output(b.linear(b.op("Reshape", [h, b.const("merge_shape", [0, 0, -1])], name="merge_heads"), 3, name="l2"))
    model = b.build()
    assert group_of(model, "l1.W", 1).units == 2
    pruned, _ = check_prune(model)
    assert node_input_value(pruned, "split_heads", 1).tolist() == [0, 0, 1, -1]


def _shuffle(b, h):
    h = b.op("Reshape", [h, b.const("s1", [2, 2, 4, 6, 6])], name="r1")
    h = b.op("Transpose", [h], perm=[0, 2, 1, 3, 4])
    return b.op("Reshape", [h, b.const("s2", [2, 8, 6, 6])], name="r2")


@pytest.mark.parametrize("carrier", ["outer", "inner"])
def test_channel_shuffle_is_never_pruned_wrongly(carrier):
    model = sandwich(_shuffle)
    pruned, report = spa.prune(model, ratio=0.5, carrier=carrier)
    assert max_relative_error(model, pruned, report.removed) < 1e-5


@pytest.mark.parametrize("carrier", ["outer", "inner"])
def test_channel_shuffle_is_exact(carrier):
    model = sandwich(_shuffle)
    group = group_of(model, "l1.W", 0, carrier=carrier)
    assert group.prunable and params(group) == SEED_AND_CONSUMER
    if carrier == "outer":  # group g of the shuffle: channels 4g..4g+3 land at positions p with p % 2 == g
        assert units(group, "l1.W", 0) == [[0, 1, 2, 3], [4, 5, 6, 7]]
        assert units(group, "l2.W", 1) == [[0, 2, 4, 6], [1, 3, 5, 7]]
    else:  # position i inside both groups: channels i and 4 + i land at 2i and 2i + 1
        assert units(group, "l1.W", 0)[1] == [1, 5] and units(group, "l2.W", 1)[1] == [2, 3]
    pruned, _ = check_prune(model, carrier=carrier)
    assert node_input_value(pruned, "r2", 1).tolist() == [2, 4, 6, 6]


def test_shuffle_of_concatenated_branches_prunes_channel_pairs():
    """ShuffleNetV2: two branches concatenated, then shuffled. The digit numbering the branches
    would make each unit a whole branch (both always kept); the channel digit is taken instead:
    unit c is channel c of each branch."""
    b = Builder()
    x = b.input((2, 4, 6, 6))
    h = b.op("Concat", [b.conv(x, 4, name="a"), b.conv(x, 4, name="b")], axis=1)
    h = b.op("Reshape", [h, b.const("s1", [2, 2, 4, 6, 6])], name="r1")
    h = b.op("Transpose", [h], perm=[0, 2, 1, 3, 4])
    b.output(b.conv(b.op("Reshape", [h, b.const("s2", [2, 8, 6, 6])], name="r2"), 3, name="c"))
    model = b.build()
    group = group_of(model, "a.W", 0)
    assert group.prunable and group.units == 4
    assert units(group, "a.W", 0)[1] == [1] and units(group, "b.W", 0)[1] == [1] and units(group, "c.W", 1)[1] == [2, 3]
    pruned, _ = check_prune(model)
    assert node_input_value(pruned, "r1", 1).tolist() == [2, 2, 2, 6, 6]


def test_reshape_merging_channel_pairs_into_rows():
    """(2, 8, 6, 6) -> (2, 4, 12, 6): output channel k holds input channels 2k and 2k + 1."""
    model = sandwich(lambda b, h: b.op("Reshape", [h, b.const("shape", [2, 4, 12, 6])], name="mix"))
    group = group_of(model, "l1.W", 0)
    assert group.units == 4 and units(group, "l1.W", 0)[1] == [2, 3] and units(group, "l2.W", 1)[1] == [1]
    pruned, _ = check_prune(model)
    assert node_input_value(pruned, "mix", 1).tolist() == [2, 2, 12, 6]


def _straddle(name):
    """(2, 8, 6, 6) -> (2, 3, 16, 6): channel boundaries straddle the output axes."""
    return sandwich(lambda b, h: b.op("Reshape", [h, b.const("shape", [2, 3, 16, 6])], name=name))


def test_reshape_mixing_channels_with_space_blocks():
    assert_blocked(_straddle("fold_hw"), "l1.W", 0, "mixes", "'fold_hw'")


def test_block_reason_names_an_operator_whose_name_is_in_the_message():
    assert_blocked(_straddle("mix"), "l1.W", 0, "mixes", "'mix'")


def test_reshape_with_a_computed_shape_blocks():
    def middle(b, h):
        shape = b.input((4,), name="S", dtype=7)
        return b.op("Reshape", [h, shape], name="rs", shape=(2, 8, 6, 6))
    assert_blocked(sandwich(middle), "l1.W", 0, "'rs'")


# ----------------------------------------------------------------------------- Squeeze, Unsqueeze, Transpose
def test_squeeze_into_gemm_and_unsqueeze_into_conv():
    b = Builder()
    x = b.input((2, 4, 6, 6))
    h = b.op("Squeeze", [b.op("GlobalAveragePool", [b.conv(x, 8, name="l1")]), b.const("sq_axes", [2, 3])])
    h = b.op("Gemm", [h, b.weight("g.W", (6, 8)), b.weight("g.C", (6,))], transB=1, name="g")
    h = b.op("Unsqueeze", [b.op("Relu", [h]), b.const("unsq_axes", [-1, -2])])
    b.output(b.conv(h, 3, name="l2"))
    model = b.build()
    analysis = spa.analyze(model)
    assert params(group_of(analysis, "l1.W", 0)) == conv_params("l1") | {("g.W", 1)}
    assert params(group_of(analysis, "g.W", 0)) == {("g.W", 0), ("g.C", 0), ("l2.W", 1)}
    pruned, _ = check_prune(model)
    assert init_shape(pruned, "g.W") == (3, 4)


def test_transpose_nhwc_pairs_around_a_conv():
    b = Builder()
    x = b.input((2, 6, 6, 4))  # NHWC
    h = b.conv(b.op("Transpose", [x], perm=[0, 3, 1, 2]), 8, name="l1")
    h = b.op("Relu", [b.op("Transpose", [h], perm=[0, 2, 3, 1])])  # NHWC again
    h = b.op("Add", [h, b.weight("bias", (8,))])  # a channels-last bias
    b.output(b.conv(b.op("Transpose", [h], perm=[0, 3, 1, 2]), 3, name="l2"))
    model = b.build()
    group = group_of(model, "l1.W", 0)
    assert params(group) == SEED_AND_CONSUMER | {("bias", 0)}
    check_prune(model)


def test_transpose_with_default_perm():
    model = sandwich(lambda b, h: b.op("Transpose", [b.op("Transpose", [h])]), shape=(2, 5, 6), kind="linear")
    assert params(group_of(model, "l1.W", 1)) == {("l1.W", 1), ("l2.W", 0)}
    check_prune(model)


# ----------------------------------------------------------------------------- Expand, Tile
@pytest.mark.parametrize("shape, rewritten", [([2, 8, 6, 6], [2, 4, 6, 6]), ([1, 1, 6, 6], [1, 1, 6, 6]),
                                              ([6, 6], [6, 6]), ([8, 6, 6], [4, 6, 6])])
def test_expand(shape, rewritten):
    def middle(b, h):
        return b.op("Expand", [b.op("GlobalAveragePool", [h]), b.const("shape", shape)], name="ex")

    model = sandwich(middle)
    assert params(group_of(model, "l1.W", 0)) == SEED_AND_CONSUMER
    pruned, _ = check_prune(model)
    assert node_input_value(pruned, "ex", 1).tolist() == rewritten


def test_expand_creating_channels_rewrites_its_shape():
    """A (2, 1, 6, 6) tensor expanded to 8 channels and added to the conv output: the entry follows."""
    def middle(b, h):
        gate = b.op("Expand", [b.op("ReduceMean", [h], axes=[1]), b.const("shape", [2, 8, 6, 6])], name="ex")
        return b.op("Mul", [h, gate])

    model = sandwich(middle, opset=17)
    group = group_of(model, "l1.W", 0)
    assert group.approximate  # the mean over channels
    pruned, _ = spa.prune(model, ratio=0.5)
    assert node_input_value(pruned, "ex", 1).tolist() == [2, 4, 6, 6]


def test_tile_ties_every_copy():
    model = sandwich(lambda b, h: b.op("Tile", [h, b.const("repeats", [1, 2, 1, 1])]))
    group = group_of(model, "l1.W", 0)
    assert group.units == 8 and params(group) == SEED_AND_CONSUMER
    assert units(group, "l2.W", 1)[3] == [3, 11]
    pruned, _ = check_prune(model)
    assert init_shape(pruned, "l2.W") == (4, 8, 1, 1)


# ----------------------------------------------------------------------------- Gather
def test_gather_constant_indices_on_channels_are_remapped():
    picked = [6, 0, -5, 3, 1]  # -5 is channel 3 again

    model = sandwich(lambda b, h: b.op("Gather", [h, b.const("idx", picked)], axis=1, name="ga"))
    used, unused = sorted(groups_of(spa.analyze(model), "l1.W", 0), key=lambda g: len(g.members), reverse=True)
    assert used.prunable and used.units == 4 and params(used) == SEED_AND_CONSUMER
    assert units(used, "l1.W", 0) == [[0], [1], [3], [6]]
    assert units(used, "l2.W", 1) == [[1], [4], [2, 3], [0]]
    assert params(unused) == conv_params("l1") and member(unused, "l1.W", 0).indices.tolist() == [2, 4, 5, 7]
    pruned, report = check_prune(model)
    kept = _kept(report, "l1.W", 0, 8)
    expected = [int(np.searchsorted(kept, c % 8)) for c in picked if c % 8 in kept]
    assert node_input_value(pruned, "ga", 1).tolist() == expected


def test_gather_scalar_index_protects_that_channel():
    b = Builder()
    x = b.input((2, 4, 6, 6))
    picked = b.op("Gather", [b.conv(x, 8, name="l1"), b.const("idx", np.array(3))], axis=1, name="ga")
    b.output(b.op("Mul", [picked, b.op("Sigmoid", [picked])]))
    model = b.build()
    analysis = spa.analyze(model)
    blocked, free = sorted(groups_of(analysis, "l1.W", 0), key=lambda g: g.prunable)
    assert blocked.units == 1 and member(blocked, "l1.W", 0).indices.tolist() == [3]
    assert any("'ga'" in r and "channel 3" in r for r in blocked.blocked)
    assert free.prunable and free.units == 7 and 3 not in member(free, "l1.W", 0).indices
    pruned, report = check_prune(model)
    kept = _kept(report, "l1.W", 0, 8)
    assert 3 in kept and node_input_value(pruned, "ga", 1).tolist() == int(np.searchsorted(kept, 3))


def test_gather_two_dimensional_indices_on_channels_blocks():
    model = sandwich(lambda b, h: b.op("Reshape", [b.op("Gather", [h, b.const("idx", [[0, 1], [2, 3]])], axis=1,
                                                         name="ga"), b.const("shape", [2, 4, 6, 6])]))
    assert_blocked(model, "l1.W", 0, "'ga'", "2-D")


def test_gather_embedding_table_seeds_its_columns():
    b = Builder()
    ids = b.input((2, 5), name="ids", dtype=7)
    h = b.op("Gather", [b.weight("emb", (20, 8)), ids], name="embed")
    b.output(b.linear(b.op("Relu", [h]), 3, name="l2"))
    model = b.build()
    group = group_of(model, "emb", 1)
    assert group.prunable and group.units == 8 and params(group) == {("emb", 1), ("l2.W", 0)}
    feeds = {"ids": np.array([[0, 3, 19, 7, 7], [1, 2, 3, 4, 5]], dtype=np.int64)}
    pruned, report = spa.prune(model, ratio=0.5)
    assert max_relative_error(model, pruned, report.removed, feeds=feeds) < 1e-5
    assert init_shape(pruned, "emb") == (20, 4)


# ----------------------------------------------------------------------------- DepthToSpace, SpaceToDepth
@pytest.mark.parametrize("mode, unit1", [("DCR", [1, 3, 5, 7]), ("CRD", [4, 5, 6, 7])])
def test_depth_to_space(mode, unit1):
    model = sandwich(lambda b, h: b.op("DepthToSpace", [h], blocksize=2, mode=mode))
    group = group_of(model, "l1.W", 0)
    assert group.prunable and group.units == 2 and params(group) == SEED_AND_CONSUMER
    assert units(group, "l1.W", 0)[1] == unit1 and units(group, "l2.W", 1) == [[0], [1]]
    pruned, _ = check_prune(model, ratio=0.5)
    assert init_shape(pruned, "l1.W")[0] == 4 and init_shape(pruned, "l2.W")[1] == 1


def test_space_to_depth():
    model = sandwich(lambda b, h: b.op("SpaceToDepth", [h], blocksize=2), channels=4)
    group = group_of(model, "l1.W", 0)
    assert group.units == 4 and units(group, "l2.W", 1)[1] == [1, 5, 9, 13]
    pruned, _ = check_prune(model)
    assert init_shape(pruned, "l2.W") == (4, 8, 1, 1)


# ----------------------------------------------------------------------------- Shape
def _reshape_reading_batch(b, h):
    batch = b.op("Unsqueeze", [b.op("Gather", [b.op("Shape", [h], name="shape"), b.const("zero", np.array(0))]),
                               b.const("ax0", [0])])
    return b.op("Reshape", [h, b.op("Concat", [batch, b.const("minus1", [-1])], axis=0)], name="flat")


def test_shape_reading_only_the_batch():
    model = _flatten_into_gemm(_reshape_reading_batch, batch="N")
    group = group_of(model, "l1.W", 0)
    assert group.prunable and params(group) == conv_params("l1") | {("l2.W", 1)}
    check_prune(model)


def test_shape_read_into_a_reshape_that_keeps_the_channel_axis():
    """flatten(2) written as Reshape(x, Concat(Shape(x)[:2], [-1])): the channel count read follows."""
    def middle(b, h):
        first_two = b.op("Shape", [h], end=2, name="shape")
        flat = b.op("Reshape", [h, b.op("Concat", [first_two, b.const("minus1", [-1])], axis=0)], name="flat")
        return b.op("Unsqueeze", [b.op("Softmax", [flat], axis=-1), b.const("ax", [3])])  # (N, 8, 36, 1)

    model = sandwich(middle, shape=("N", 4, 6, 6))
    assert group_of(model, "l1.W", 0).prunable
    check_prune(model)


def test_shape_reading_a_channel_count_blocks():
    """Another tensor is reshaped to the conv output's shape, read at run time."""
    b = Builder()
    x = b.input(("N", 4, 6, 6))
    h = b.conv(x, 8, name="l1")
    other = b.op("Reshape", [b.conv(x, 8, name="o"), b.op("Shape", [h], name="shape")], name="rs")
    b.output(b.conv(b.op("Add", [other, b.weight("ones", (1, 1, 1, 1))]), 3, name="l2"),
             b.conv(h, 3, name="l3"))
    model = b.build()
    analysis = spa.analyze(model)
    assert_blocked(model, "l1.W", 0, "read at run time", "'shape'", analysis=analysis)
    assert group_of(analysis, "o.W", 0).blocked
