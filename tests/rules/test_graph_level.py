"""What holds for every rule: operators without a rule block, graph outputs block, shared weights
couple, Identity copies of a weight do not, --keep blocks; and every registered rule is covered."""
from __future__ import annotations

import pathlib
import re

import numpy as np
from onnx import helper

import spa
from graphs import Builder, assert_blocked, check_prune, group_of, init_shape, params, sandwich
from spa.rules import supported_operators


def test_operator_without_a_rule_blocks():
    model = sandwich(lambda b, h: b.op("LRN", [h], size=3, name="lrn"))
    assert "LRN" not in supported_operators()
    assert_blocked(model, "l1.W", 0, "LRN", "'lrn'", "no pruning rule")


def test_custom_domain_operator_blocks():
    b = Builder()
    x = b.input((2, 4, 6, 6))
    b.op("Relu", [b.conv(x, 8, name="l1")], name="relu")
    model = b.build()
    model.graph.node.append(helper.make_node("Relu", ["relu.y"], ["custom.y"], name="custom", domain="com.example"))
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    model.graph.output.append(helper.make_tensor_value_info("custom.y", 1, [2, 8, 6, 6]))
    group = group_of(model, "l1.W", 0)
    assert group.blocked and any("Relu (domain com.example) 'custom'" in r and "no pruning rule" in r
                                 for r in group.blocked)


def test_reaching_a_graph_output_blocks():
    b = Builder()
    x = b.input((2, 4, 6, 6))
    b.output(b.op("Relu", [b.conv(x, 8, name="l1")], name="act"))
    assert_blocked(b.build(), "l1.W", 0, "graph output 'act.y'")


def test_a_side_output_blocks_the_group_it_reaches_only():
    b = Builder()
    x = b.input((2, 4, 6, 6))
    h = b.conv(b.op("Relu", [b.conv(x, 8, name="l1")]), 6, name="mid")
    b.output(b.conv(h, 3, name="l2"), h)
    model = b.build()
    analysis = spa.analyze(model)
    assert group_of(analysis, "l1.W", 0).prunable
    assert_blocked(model, "mid.W", 0, "graph output 'mid.y'", analysis=analysis)


def test_reaching_a_graph_input_blocks():
    """A residual Add with a graph input: the input's channels cannot change."""
    b = Builder()
    x = b.input((2, 8, 6, 6))
    b.output(b.conv(b.op("Add", [b.conv(x, 8, name="l1"), x], name="res"), 3, name="l2"))
    assert_blocked(b.build(), "l1.W", 0, "graph input 'X'")


def test_weight_given_as_a_graph_input_is_not_a_parameter():
    b = Builder()
    x = b.input((2, 4, 6, 6))
    w = b.input((8, 4, 1, 1), name="W_in")
    h = b.op("Relu", [b.op("Conv", [x, w], name="l1")])
    b.output(b.conv(h, 3, name="l2"))
    assert spa.analyze(b.build()).prunable == []


def test_shared_initializer_couples_two_convs():
    b = Builder()
    x1, x2 = b.input((2, 4, 6, 6), "X1"), b.input((2, 4, 6, 6), "X2")
    w = b.weight("shared.W", (8, 4, 3, 3))
    h1 = b.op("Relu", [b.op("Conv", [x1, w], pads=[1, 1, 1, 1], name="ca")])
    h2 = b.op("Sigmoid", [b.op("Conv", [x2, w], pads=[1, 1, 1, 1], name="cb")])
    b.output(b.conv(h1, 3, name="la"), b.conv(h2, 3, name="lb"))
    model = b.build()
    group = group_of(model, "shared.W", 0)
    assert group.prunable and group.units == 8
    assert params(group) == {("shared.W", 0), ("la.W", 1), ("lb.W", 1)}
    pruned, _ = check_prune(model)
    assert init_shape(pruned, "la.W") == init_shape(pruned, "lb.W") == (3, 4, 1, 1)


def test_identity_copies_of_a_weight_do_not_couple():
    b = Builder()
    x1, x2 = b.input((2, 4, 6, 6), "X1"), b.input((2, 4, 6, 6), "X2")
    w = b.weight("shared.W", (8, 4, 1, 1))
    copy = b.op("Identity", [w], name="copy")
    b.output(b.conv(b.op("Relu", [b.op("Conv", [x1, w], name="ca")]), 3, name="la"),
             b.conv(b.op("Relu", [b.op("Conv", [x2, copy], name="cb")]), 3, name="lb"))
    model = b.build()
    analysis = spa.analyze(model)
    a, c = group_of(analysis, "shared.W", 0), group_of(analysis, "copy.y", 0)
    assert a.id != c.id
    assert params(a) == {("shared.W", 0), ("la.W", 1)} and params(c) == {("copy.y", 0), ("lb.W", 1)}
    pruned, _ = check_prune(model)
    assert init_shape(pruned, "copy.y") == (4, 4, 1, 1)


def test_constant_node_weight():
    b = Builder()
    x = b.input((2, 5, 6))
    w = b.op("Constant", [], value=helper.make_tensor("w", 1, [6, 8], np.random.default_rng(1).standard_normal(48)),
             name="w_const")
    h = b.op("Relu", [b.op("MatMul", [x, w], name="l1")])
    b.output(b.linear(h, 3, name="l2"))
    model = b.build()
    assert params(group_of(model, "w_const.y", 1)) == {("w_const.y", 1), ("l2.W", 0)}
    check_prune(model)


def test_keep_blocks_a_group():
    model = sandwich(lambda b, h: b.op("Relu", [h], name="act"))
    assert_blocked(model, "l1.W", 0, "--keep act", analysis=spa.analyze(model, keep=["act"]), keep=["act"])


def test_every_registered_rule_is_exercised():
    """Each operator with a rule appears in at least one test graph of this directory."""
    here = pathlib.Path(__file__).parent
    text = "\n".join(p.read_text() for p in [here / "graphs.py", *here.glob("test_*.py")])
    quoted = set(re.findall(r'"([A-Z][A-Za-z0-9]+)"', text))
    from spa.rules.elementwise import BROADCAST, UNARY  # test_elementwise runs each of these
    missing = set(supported_operators()) - quoted - set(UNARY) - set(BROADCAST)
    assert not missing, sorted(missing)
