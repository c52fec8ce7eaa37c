"""The fused Attention operator (opset 23): heads, grouped-query heads, head sizes, 3-D form."""
from __future__ import annotations

import math

import pytest
from graphs import Builder, assert_blocked, check_prune, group_of, init_shape, node_attr, params, units

import spa


def _attention(q_heads=4, kv_heads=4, head=4, v_head=4, three_d=False, mask_per_head=False, scale=None):
    """X (2, 6, 16) -> q, k, v projections -> Attention -> output projection "o" -> Y."""
    b = Builder(23)
    x = b.input((2, 6, 16))
    q, k, v = (b.linear(x, n, name=name) for name, n in
               (("q", q_heads * head), ("k", kv_heads * head), ("v", kv_heads * v_head)))
    attrs = {"scale": scale} if scale is not None else {}
    if three_d:
        attrs.update(q_num_heads=q_heads, kv_num_heads=kv_heads)
        inputs = [q, k, v]
    else:
        def heads(t, n, size, name):
            return b.op("Transpose", [b.op("Reshape", [t, b.const(f"{name}.shape", [2, 6, n, size])])], perm=[0, 2, 1, 3])
        inputs = [heads(q, q_heads, head, "q"), heads(k, kv_heads, head, "k"), heads(v, kv_heads, v_head, "v")]
        if mask_per_head:
            inputs.append(b.weight("mask", (1, q_heads, 6, 6)))
    y = b.op("Attention", inputs, name="att", **attrs)
    if not three_d:
        y = b.op("Reshape", [b.op("Transpose", [y], perm=[0, 2, 1, 3]), b.const("merge", [2, 6, q_heads * v_head])])
    b.output(b.linear(y, 8, name="o"))
    return b.build()


def test_heads_go_whole():
    model = _attention()
    group = group_of(model, "q.W", 1)
    assert group.kind == "heads" and group.units == 4 and not group.approximate
    assert params(group) == {("q.W", 1), ("k.W", 1), ("v.W", 1), ("o.W", 0)}
    assert units(group, "q.W", 1)[1] == [4, 5, 6, 7]
    pruned, _ = check_prune(model)
    assert init_shape(pruned, "o.W") == (8, 8)


def test_grouped_query_heads_go_with_their_key_value_head():
    model = _attention(q_heads=4, kv_heads=2)
    group = group_of(model, "k.W", 1)
    assert group.units == 2  # a unit: one key/value head and its two query heads
    assert units(group, "q.W", 1)[1] == list(range(8, 16)) and units(group, "k.W", 1)[1] == [4, 5, 6, 7]
    pruned, _ = check_prune(model)
    assert init_shape(pruned, "q.W") == (16, 8) and init_shape(pruned, "k.W") == (16, 4)


def test_a_per_head_mask_is_a_member():
    model = _attention(mask_per_head=True)
    assert ("mask", 1) in params(group_of(model, "q.W", 1))
    check_prune(model)


def test_head_size_with_the_inner_carrier_keeps_the_scale():
    model = _attention(head=4)
    analysis = spa.analyze(model, carrier="inner")
    scores = group_of(analysis, "q.W", 1)
    assert scores.kind == "head_dims" and scores.units == 4  # the within-head index, across heads
    assert params(scores) == {("q.W", 1), ("k.W", 1)}
    pruned, _ = check_prune(model, carrier="inner")
    assert math.isclose(node_attr(pruned, "att", "scale"), 1 / math.sqrt(4), rel_tol=1e-6)


def test_value_head_size_passes_to_the_output():
    model = _attention(v_head=6)
    group = group_of(spa.analyze(model, carrier="inner"), "v.W", 1)
    assert params(group) == {("v.W", 1), ("o.W", 0)} and group.units == 6
    check_prune(model, carrier="inner")


def test_three_d_form_rewrites_head_counts():
    model = _attention(q_heads=4, kv_heads=2, three_d=True)
    group = group_of(model, "k.W", 1)
    assert group.kind == "heads" and group.units == 2
    pruned, _ = check_prune(model)
    assert node_attr(pruned, "att", "q_num_heads") == 2 and node_attr(pruned, "att", "kv_num_heads") == 1


@pytest.mark.parametrize("three_d", [False, True])
def test_sequence_axis_is_blocked(three_d):
    """A projection over the sequence axis would reach Attention's sequence axis."""
    b = Builder(23)
    x = b.input((2, 16, 6))  # channels of the seed run along the sequence axis of the attention
    s = b.op("Transpose", [b.linear(x, 6, name="seq")], perm=[0, 2, 1])
    q = b.op("Reshape", [s, b.const("shape", [2, 1, 6, 16])]) if not three_d else s
    attrs = {"q_num_heads": 1, "kv_num_heads": 1} if three_d else {}
    b.output(b.op("Attention", [q, q, q], name="att", **attrs))
    assert_blocked(b.build(), "seq.W", 1, "'att'")
