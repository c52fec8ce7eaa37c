"""Layers with weights: Conv (plain, grouped, depthwise), ConvTranspose, Gemm, MatMul, Einsum."""
from __future__ import annotations

import numpy as np
import pytest

import spa
from graphs import (Builder, check_prune, conv_params, group_of, init_shape, node_attr, params, sandwich, units)


# ----------------------------------------------------------------------------- Conv
@pytest.mark.parametrize("ratio, kept", [(0.25, 6), (0.5, 4), (0.8, 2)])
def test_conv_local_ratio(ratio, kept):
    model = sandwich(lambda b, h: b.op("Relu", [h]))
    group = group_of(model, "l1.W", 0)
    assert params(group) == conv_params("l1") | {("l2.W", 1)} and group.units == 8
    pruned, report = check_prune(model, ratio=ratio)
    assert init_shape(pruned, "l1.W") == (kept, 4, 1, 1)
    assert init_shape(pruned, "l1.B") == (kept,)
    assert init_shape(pruned, "l2.W") == (4, kept, 1, 1)
    assert report.channels == [{"group": group.id, "kind": "channels", "before": 8, "after": kept}]


@pytest.mark.parametrize("criterion", ["l1", "l2", "random"])
def test_conv_criteria_and_global_scope(criterion):
    model = sandwich(lambda b, h: b.conv(b.op("Relu", [h]), 6, k=3, name="mid"))
    check_prune(model, criterion=criterion, scope="global")


def test_conv_removes_the_lowest_l1_channels():
    model = sandwich(lambda b, h: b.op("Relu", [h]))
    weights = {t.name: np.frombuffer(t.raw_data, np.float32).reshape(t.dims) for t in model.graph.initializer}
    score = (np.abs(weights["l1.W"]).mean(axis=(1, 2, 3)) + np.abs(weights["l1.B"])
             + np.abs(weights["l2.W"]).mean(axis=(0, 2, 3)))
    _, report = check_prune(model)
    assert report.removed[0]["tensor"] == "l1.W"
    assert report.removed[0]["indices"] == sorted(np.argsort(score)[:4].tolist())


def test_conv_3d_and_1d():
    for shape in [(2, 3, 4, 4, 4), (2, 3, 10)]:
        model = sandwich(lambda b, h: b.conv(h, 6, k=3, name="mid"), shape=shape)
        assert group_of(model, "l1.W", 0).prunable
        check_prune(model)


def test_grouped_conv_removes_whole_groups():
    model = sandwich(lambda b, h: b.conv(h, 8, k=3, group=2, name="g"))
    group = group_of(model, "l1.W", 0)
    assert group.prunable and group.units == 2
    assert params(group) == conv_params("l1", "g") | {("l2.W", 1)}
    assert units(group, "l1.W", 0) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert units(group, "g.W", 0) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    pruned, _ = check_prune(model)
    assert node_attr(pruned, "g", "group") == 1
    assert init_shape(pruned, "g.W") == (4, 4, 3, 3)


def test_grouped_conv_with_four_groups():
    model = sandwich(lambda b, h: b.conv(h, 12, k=3, group=4, name="g"))
    group = group_of(model, "l1.W", 0)
    assert group.units == 4 and units(group, "g.W", 0)[1] == [3, 4, 5]
    pruned, _ = check_prune(model)
    assert node_attr(pruned, "g", "group") == 2 and init_shape(pruned, "g.W") == (6, 2, 3, 3)


def test_depthwise_conv_with_multiplier_two():
    model = sandwich(lambda b, h: b.conv(h, 16, k=3, group=8, name="dw"))
    group = group_of(model, "l1.W", 0)
    assert group.prunable and group.units == 8
    assert params(group) == conv_params("l1", "dw") | {("l2.W", 1)}
    assert units(group, "dw.W", 0)[3] == [6, 7]
    assert units(group, "l2.W", 1)[3] == [6, 7]
    pruned, _ = check_prune(model)
    assert node_attr(pruned, "dw", "group") == 4
    assert init_shape(pruned, "dw.W") == (8, 1, 3, 3) and init_shape(pruned, "l2.W") == (4, 8, 1, 1)


def test_grouped_conv_on_a_graph_input_is_blocked():
    """The input's channels cannot change, so neither can the groups the conv's outputs form."""
    b = Builder()
    x = b.input((2, 8, 6, 6))
    b.output(b.conv(b.conv(x, 8, k=3, group=2, name="g"), 4, name="l2"))
    group = group_of(spa.analyze(b.build()), "g.W", 0)
    assert group.blocked and any("graph input 'X'" in r for r in group.blocked)


def test_conv_transpose_plain():
    model = sandwich(lambda b, h: b.conv(h, 6, k=2, transpose=True, strides=[2, 2], name="ct"))
    analysis = spa.analyze(model)
    into = group_of(analysis, "l1.W", 0)
    assert params(into) == conv_params("l1") | {("ct.W", 0)} and into.units == 8
    out = group_of(analysis, "ct.W", 1)
    assert params(out) == {("ct.W", 1), ("ct.B", 0), ("l2.W", 1)} and out.units == 6
    pruned, _ = check_prune(model)
    assert init_shape(pruned, "ct.W") == (4, 3, 2, 2)


def test_conv_transpose_grouped():
    model = sandwich(lambda b, h: b.conv(h, 8, k=2, group=2, transpose=True, strides=[2, 2], name="ct"))
    group = group_of(model, "l1.W", 0)
    assert group.units == 2
    assert params(group) == conv_params("l1") | {("ct.W", 0), ("ct.B", 0), ("l2.W", 1)}
    assert units(group, "ct.W", 0) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    pruned, _ = check_prune(model)
    assert node_attr(pruned, "ct", "group") == 1 and init_shape(pruned, "ct.W") == (4, 4, 2, 2)


# ----------------------------------------------------------------------------- Gemm
def _gemm(b, x, n, name, trans_a, trans_b, c_shape):
    k = b.shape(x)[0 if trans_a else 1]
    w = b.weight(f"{name}.W", (n, k) if trans_b else (k, n))
    inputs = [x, w] + ([b.weight(f"{name}.C", c_shape)] if c_shape else [])
    return b.op("Gemm", inputs, name=name, transA=trans_a, transB=trans_b)


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("c_shape", [(8,), (1, 8), None])
def test_gemm(trans_a, trans_b, c_shape):
    b = Builder()
    x = b.input((6, 2) if trans_a else (2, 6))
    h = b.op("Relu", [_gemm(b, x, 8, "g1", trans_a, trans_b, c_shape)])
    if trans_a:
        h = b.op("Transpose", [h], perm=[1, 0])
    b.output(_gemm(b, h, 3, "g2", trans_a, trans_b, (3,)))
    model = b.build()
    group = group_of(model, "g1.W", 0 if trans_b else 1)
    expected = {("g1.W", 0 if trans_b else 1), ("g2.W", 1 if trans_b else 0)}
    if c_shape:
        expected.add(("g1.C", len(c_shape) - 1))
    assert group.prunable and group.units == 8 and params(group) == expected
    pruned, _ = check_prune(model)
    assert init_shape(pruned, "g2.W") == ((3, 4) if trans_b else (4, 3))


def test_gemm_with_a_full_bias_matrix():
    b = Builder()
    x = b.input((2, 6))
    h = b.op("Gemm", [x, b.weight("g1.W", (6, 8)), b.weight("g1.C", (2, 8))], name="g1")
    b.output(b.op("Gemm", [h, b.weight("g2.W", (8, 4))], name="g2"))
    model = b.build()
    assert params(group_of(model, "g1.W", 1)) == {("g1.W", 1), ("g1.C", 1), ("g2.W", 0)}
    check_prune(model)


# ----------------------------------------------------------------------------- MatMul
def test_matmul_weight_on_the_right():
    model = sandwich(lambda b, h: b.op("Relu", [h]), shape=(2, 5, 6), kind="linear")
    group = group_of(model, "l1.W", 1)
    assert group.units == 8 and params(group) == {("l1.W", 1), ("l2.W", 0)}
    pruned, _ = check_prune(model)
    assert init_shape(pruned, "l1.W") == (6, 4) and init_shape(pruned, "l2.W") == (4, 4)


def test_matmul_with_bias_and_symbolic_batch():
    b = Builder()
    x = b.input(("N", 5, 6))
    h = b.op("Tanh", [b.linear(x, 8, name="l1", bias=True)])
    b.output(b.linear(h, 4, name="l2"))
    model = b.build()
    assert params(group_of(model, "l1.W", 1)) == {("l1.W", 1), ("l1.B", 0), ("l2.W", 0)}
    check_prune(model)


def test_matmul_weight_on_the_left():
    b = Builder()
    x = b.input((2, 5, 6))
    h = b.op("Relu", [b.op("MatMul", [b.weight("L1.W", (8, 5)), x], name="L1")])
    b.output(b.op("MatMul", [b.weight("L2.W", (4, 8)), h], name="L2"))
    model = b.build()
    group = group_of(model, "L1.W", 0)
    assert group.units == 8 and params(group) == {("L1.W", 0), ("L2.W", 1)}
    pruned, _ = check_prune(model)
    assert init_shape(pruned, "L1.W") == (4, 5) and init_shape(pruned, "L2.W") == (4, 4)


def _transposed_weight_model(n: int, k: int):
    """A weight stored (N, K) and transposed in the graph, as exporters write nn.Linear."""
    b = Builder()
    x = b.input((2, k))
    w = b.op("Transpose", [b.weight("fc.W", (n, k))], perm=[1, 0], name="fc_t")
    h = b.op("Relu", [b.op("MatMul", [x, w], name="fc")])
    b.output(b.op("MatMul", [h, b.weight("out.W", (n, 3))], name="out"))
    return b.build()


def test_matmul_behind_a_transpose():
    model = _transposed_weight_model(n=64, k=72)  # more elements than SPA folds ahead of time
    group = group_of(model, "fc.W", 0)
    assert group.prunable and group.units == 64
    assert params(group) == {("fc.W", 0), ("out.W", 0)}
    pruned, report = check_prune(model)
    assert init_shape(pruned, "fc.W") == (32, 72)
    assert {e["tensor"] for e in report.removed} == {"fc.W", "out.W"}


def test_matmul_behind_a_transpose_names_the_stored_weight():
    model = _transposed_weight_model(n=8, k=6)
    _, report = check_prune(model)
    names = {i.name for i in model.graph.initializer}
    assert all(e["tensor"] in names for e in report.removed), report.removed
    assert params(group_of(model, "fc.W", 0)) == {("fc.W", 0), ("out.W", 0)}


def test_matmul_behind_a_transpose_leaves_no_dead_weight_and_honours_keep():
    model = _transposed_weight_model(n=8, k=6)
    pruned, _ = check_prune(model)
    read = {i for n in pruned.graph.node for i in n.input}
    assert all(t.name in read for t in pruned.graph.initializer), [t.name for t in pruned.graph.initializer]
    _, kept = spa.prune(model, ratio=0.5, keep=["fc.W"])
    assert kept.removed == []


def _attention(b, x, d):
    q, k, v = (b.linear(x, d, name=n) for n in ("q", "k", "v"))
    scores = b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 2, 1])], name="qk")
    probs = b.op("Softmax", [scores], axis=-1)
    return b.op("MatMul", [probs, v], name="pv")


def test_batched_matmul_of_two_activations_couples_both():
    b = Builder()
    x = b.input((2, 5, 6))
    b.output(b.linear(_attention(b, x, 8), 6, name="o"))
    model = b.build()
    analysis = spa.analyze(model)
    qk = group_of(analysis, "q.W", 1)
    assert qk.prunable and qk.units == 8 and params(qk) == {("q.W", 1), ("k.W", 1)}
    vo = group_of(analysis, "v.W", 1)
    assert vo.prunable and params(vo) == {("v.W", 1), ("o.W", 0)}
    pruned, _ = check_prune(model)
    assert init_shape(pruned, "q.W") == init_shape(pruned, "k.W") == (6, 4)


def test_matmul_of_two_activations_without_weights_seeds_nothing():
    b = Builder()
    x = b.input((2, 5, 6))
    b.output(b.op("MatMul", [x, b.op("Transpose", [x], perm=[0, 2, 1])]))
    assert spa.analyze(b.build()).groups == []


# ----------------------------------------------------------------------------- Einsum
@pytest.mark.parametrize("first, second", [("bij,jk->bik", "bij,jk->bik"), ("...j,jk->...k", "bij,jk"),
                                           ("bij,kj->bik", "...j,jk->...k")])
def test_einsum(first, second):
    def layer(b, x, n, name, equation):
        k = b.shape(x)[-1]
        w = b.weight(f"{name}.W", (n, k) if equation.split(",")[1].startswith("kj") else (k, n))
        return b.op("Einsum", [x, w], name=name, equation=equation)

    b = Builder(opset=17)
    x = b.input((2, 5, 6))
    h = b.op("Relu", [layer(b, x, 8, "e1", first)])
    b.output(layer(b, h, 4, "e2", second))
    model = b.build()
    group = group_of(model, "e1.W", 0 if "kj" in first else 1)
    assert group.prunable and group.units == 8
    assert params(group) == {("e1.W", 0 if "kj" in first else 1), ("e2.W", 0)}
    check_prune(model)


def test_einsum_diagonal_blocks():
    b = Builder()
    x = b.input((2, 6))
    h = b.op("Relu", [b.op("MatMul", [x, b.weight("l1.W", (6, 8))], name="l1")])
    square = b.op("Einsum", [b.op("Unsqueeze", [h, b.const("ax", [1])]), b.weight("m", (8, 8))],
                  equation="bij,jj->bij", name="diag")
    b.output(b.op("MatMul", [square, b.weight("l2.W", (8, 3))], name="l2"))
    model = b.build()
    group = group_of(model, "l1.W", 1)
    assert group.blocked and any("diagonal" in r for r in group.blocked)


def test_matmul_whose_operands_disagree_on_the_contracted_size_blocks():
    """Only a size-1 axis broadcasts: a contracted axis of 8 against a weight said to have 6 rows
    means the shapes SPA was given contradict each other. The seed's channels block at the MatMul
    instead of going without the consumer's rows."""
    from spa.graph import Graph

    graph = Graph.load(sandwich(lambda b, h: b.op("Relu", [h]), shape=(2, 4), kind="linear"))
    graph.tensors["l2.W"].shape = (6, 4)
    group = group_of(spa.analyze(graph), "l1.W", 1)
    assert not group.prunable
    assert any("'l2'" in r and "disagree" in r for r in group.blocked), group.blocked
