"""Element-wise rules: unary operators pass every axis through; broadcasting operators tie only the
axes that are not broadcast (a per-channel constant becomes a member, a [1,1,H,W] one does not)."""
from __future__ import annotations

import numpy as np
import pytest

import spa
from spa.rules import elementwise
from graphs import Builder, check_prune, conv_params, group_of, init_shape, params, sandwich

SEED_AND_CONSUMER = conv_params("l1") | {("l2.W", 1)}


def _scalar(b, name, value):
    return b.const(name, np.array(value, dtype=np.float32))


UNARY = {
    "Relu": lambda b, h: b.op("Relu", [h]),
    "Sigmoid": lambda b, h: b.op("Sigmoid", [h]),
    "LeakyRelu": lambda b, h: b.op("LeakyRelu", [h], alpha=0.2),
    "HardSwish": lambda b, h: b.op("HardSwish", [h]),
    "Identity": lambda b, h: b.op("Identity", [h]),
    "Cast": lambda b, h: b.op("Cast", [b.op("Cast", [h], to=10)], to=1),  # float16 and back
    "Dropout": lambda b, h: b.op("Dropout", [h], outputs=2)[0],  # the mask output is tied too
    "Clip": lambda b, h: b.op("Clip", [h, _scalar(b, "lo", -0.5), _scalar(b, "hi", 0.7)]),
    "Clip-min-only": lambda b, h: b.op("Clip", [h, _scalar(b, "lo", 0.0)]),
    "Neg-Abs-Tanh": lambda b, h: b.op("Tanh", [b.op("Abs", [b.op("Neg", [h])])]),
}


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_passes_channels_through(name):
    model = sandwich(UNARY[name])
    group = group_of(model, "l1.W", 0)
    assert group.prunable and group.units == 8 and not group.approximate
    assert params(group) == SEED_AND_CONSUMER
    pruned, _ = check_prune(model)
    assert init_shape(pruned, "l1.W")[0] == init_shape(pruned, "l2.W")[1] == 4


def test_unary_with_symbolic_batch():
    model = sandwich(UNARY["Clip"], shape=("N", 4, 6, 6))
    assert group_of(model, "l1.W", 0).prunable
    check_prune(model)


def _two_producers(op_type: str):
    b = Builder()
    x = b.input((2, 4, 6, 6))
    h = b.op(op_type, [b.conv(x, 8, name="a"), b.op("Sigmoid", [b.conv(x, 8, name="b")])])
    b.output(b.conv(h, 4, name="l2"))
    return b.build()


@pytest.mark.parametrize("op_type", ["Add", "Mul", "Sub", "Max"])
def test_binary_couples_both_producers(op_type):
    model = _two_producers(op_type)
    group = group_of(model, "a.W", 0)
    assert group.prunable and group.units == 8
    assert params(group) == conv_params("a", "b") | {("l2.W", 1)}
    assert all(group.units == len(m.indices) for m in group.members)  # one index per member per unit
    _, report = check_prune(model)
    cut = {e["tensor"]: e["indices"] for e in report.removed}
    assert cut["a.W"] == cut["b.W"] == cut["b.B"] == cut["l2.W"]


def test_residual_add_couples_block_input_and_output():
    b = Builder()
    x = b.input((2, 4, 6, 6))
    h = b.conv(x, 8, name="c1")
    r = b.conv(b.op("Relu", [h]), 8, k=3, name="c2")
    b.output(b.conv(b.op("Add", [h, r]), 4, name="c3"))
    model = b.build()
    group = group_of(model, "c1.W", 0)
    assert group.prunable and group.units == 8
    assert params(group) == conv_params("c1", "c2") | {("c2.W", 1), ("c3.W", 1)}
    pruned, _ = check_prune(model)
    assert init_shape(pruned, "c2.W") == (4, 4, 3, 3)


def test_squeeze_excitation_gate_couples_expand_conv_with_the_trunk():
    """h * sigmoid(expand(relu(squeeze(gap(h))))): the (2, 8, 1, 1) gate is not broadcast on channels."""
    def middle(b, h):
        gate = b.conv(b.op("Relu", [b.conv(b.op("GlobalAveragePool", [h]), 2, name="sq")]), 8, name="ex")
        return b.op("Mul", [h, b.op("Sigmoid", [gate])])

    model = sandwich(middle)
    analysis = spa.analyze(model)
    trunk = group_of(analysis, "l1.W", 0)
    assert trunk.prunable and params(trunk) == SEED_AND_CONSUMER | conv_params("ex") | {("sq.W", 1)}
    squeeze = group_of(analysis, "sq.W", 0)
    assert squeeze.prunable and squeeze.units == 2 and params(squeeze) == conv_params("sq") | {("ex.W", 1)}
    pruned, _ = check_prune(model)
    assert init_shape(pruned, "ex.W") == (4, 1, 1, 1) and init_shape(pruned, "sq.W") == (1, 4, 1, 1)


@pytest.mark.parametrize("shape, axis", [((1, 8, 1, 1), 1), ((8, 1, 1), 0)])
def test_per_channel_constant_is_a_member(shape, axis):
    model = sandwich(lambda b, h: b.op("Mul", [h, b.weight("s", shape)]))
    group = group_of(model, "l1.W", 0)
    assert params(group) == SEED_AND_CONSUMER | {("s", axis)}
    pruned, _ = check_prune(model)
    assert init_shape(pruned, "s")[axis] == 4


@pytest.mark.parametrize("shape", [(1, 1, 6, 6), (6,), (1,), ()])
def test_broadcast_constant_is_not_a_member(shape):
    model = sandwich(lambda b, h: b.op("Add", [h, b.weight("s", shape)]))
    group = group_of(model, "l1.W", 0)
    assert params(group) == SEED_AND_CONSUMER
    pruned, _ = check_prune(model)
    assert init_shape(pruned, "s") == shape


def test_division_by_a_scalar():
    check_prune(sandwich(lambda b, h: b.op("Div", [h, _scalar(b, "two", 2.0)])))


def test_where_with_a_per_channel_branch():
    def middle(b, h):
        positive = b.op("Greater", [h, _scalar(b, "zero", 0.0)])
        return b.op("Where", [positive, h, b.weight("neg", (1, 8, 1, 1))])

    model = sandwich(middle)
    group = group_of(model, "l1.W", 0)
    assert params(group) == SEED_AND_CONSUMER | {("neg", 1)}
    check_prune(model)


def test_prelu_per_channel_slope():
    model = sandwich(lambda b, h: b.op("PRelu", [h, b.weight("slope", (8, 1, 1))]))
    assert params(group_of(model, "l1.W", 0)) == SEED_AND_CONSUMER | {("slope", 0)}
    pruned, _ = check_prune(model)
    assert init_shape(pruned, "slope") == (4, 1, 1)


def test_prelu_shared_slope_is_not_a_member():
    model = sandwich(lambda b, h: b.op("PRelu", [h, b.weight("slope", (1,))]))
    assert params(group_of(model, "l1.W", 0)) == SEED_AND_CONSUMER
    check_prune(model)


def test_binary_on_channels_last_tensors():
    """Broadcasting is right-aligned: a (8,) bias on a (B, T, 8) tensor is per channel."""
    model = sandwich(lambda b, h: b.op("Add", [h, b.weight("bias", (8,))]), shape=(2, 5, 6), kind="linear")
    group = group_of(model, "l1.W", 1)
    assert params(group) == {("l1.W", 1), ("bias", 0), ("l2.W", 0)}
    check_prune(model)


def test_mismatched_sizes_do_not_tie_unrelated_axes():
    """A (6,) constant on a (2, 8, 6, 6) tensor runs along W: it must not join the channel group even
    where another axis has its size (here H)."""
    model = sandwich(lambda b, h: b.op("Mul", [h, b.weight("w_scale", (6,))]))
    assert ("w_scale", 0) not in params(group_of(model, "l1.W", 0))
    assert not any(m.tensor == "w_scale" for g in spa.analyze(model).groups for m in g.members)


# ----------------------------------------------------------------------------- every registered operator
FLOAT16, INT32, UINT32, BOOL = 10, 6, 12, 9


def _typed(b, h, to, op_type, *others, **attrs):
    """Cast h to `to`, apply the operator, cast back to float."""
    y = b.op(op_type, [b.op("Cast", [h], to=to), *others], **attrs)
    return b.op("Cast", [y], to=1)


def _unary(op_type):
    """h -> op, with h moved into the operator's domain first (and zeros kept where possible)."""
    special = {
        "Acos": lambda b, h: b.op("Acos", [b.op("Tanh", [h])]),
        "Asin": lambda b, h: b.op("Asin", [b.op("Tanh", [h])]),
        "Atanh": lambda b, h: b.op("Atanh", [b.op("Mul", [b.op("Tanh", [h]), _scalar(b, "half", 0.5)])]),
        "Acosh": lambda b, h: b.op("Acosh", [b.op("Exp", [b.op("Abs", [h])])]),
        "Log": lambda b, h: b.op("Log", [b.op("Exp", [h])]),
        "Sqrt": lambda b, h: b.op("Sqrt", [b.op("Abs", [h])]),
        "Reciprocal": lambda b, h: b.op("Reciprocal", [b.op("Exp", [h])]),
        "Not": lambda b, h: _typed(b, h, BOOL, "Not"),
        "BitwiseNot": lambda b, h: _typed(b, h, INT32, "BitwiseNot"),
        "IsInf": lambda b, h: b.op("Cast", [b.op("IsInf", [h])], to=1),
        "IsNaN": lambda b, h: b.op("Cast", [b.op("IsNaN", [h])], to=1),
        "CastLike": lambda b, h: b.op("Cast", [b.op("CastLike", [h, b.const("like", np.zeros(1, np.float16))])], to=1),
    }
    return special.get(op_type, lambda b, h: b.op(op_type, [h]))


def _binary(op_type):
    """h op c, c a per-channel constant (1, 8, 1, 1) of the type the operator takes; arranged so that
    zeroed channels stay finite (the oracle compares with the model whose slices are zero)."""
    def constant(b, dtype, low=-1.0, high=1.0):
        return b.const("c", b.rng.uniform(low, high, (1, 8, 1, 1)).astype(dtype))

    def cmp(b, h):
        return b.op("Cast", [b.op(op_type, [h, constant(b, np.float32)])], to=1)

    special = {
        "Div": lambda b, h: b.op("Div", [constant(b, np.float32), b.op("Exp", [h])]),
        "Pow": lambda b, h: b.op("Pow", [b.op("Exp", [h]), constant(b, np.float32)]),
        "Mod": lambda b, h: b.op("Mod", [constant(b, np.float32), b.op("Exp", [h])], fmod=1),
        "And": lambda b, h: _typed(b, h, BOOL, op_type, constant(b, bool)),
        "Or": lambda b, h: _typed(b, h, BOOL, op_type, constant(b, bool)),
        "Xor": lambda b, h: _typed(b, h, BOOL, op_type, constant(b, bool)),
        "BitwiseAnd": lambda b, h: _typed(b, h, INT32, op_type, constant(b, np.int32, -8, 8)),
        "BitwiseOr": lambda b, h: _typed(b, h, INT32, op_type, constant(b, np.int32, -8, 8)),
        "BitwiseXor": lambda b, h: _typed(b, h, INT32, op_type, constant(b, np.int32, -8, 8)),
        "BitShift": lambda b, h: _typed(b, b.op("Abs", [h]), UINT32, op_type, constant(b, np.uint32, 0, 3),
                                        direction="LEFT"),
        "Where": lambda b, h: b.op("Where", [b.op("Greater", [h, _scalar(b, "zero", 0.0)]), h, constant(b, np.float32)]),
    }
    for name in ("Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual"):
        special[name] = cmp
    return special.get(op_type, lambda b, h: b.op(op_type, [h, constant(b, np.float32)]))


def _every(ops, opset=20):
    """The operators that exist at `opset` (Swish came in opset 24, which SPA does not take yet)."""
    from onnx import defs
    return [op for op in ops if defs.has(op) and defs.get_schema(op).since_version <= opset]


@pytest.mark.parametrize("op_type", _every(sorted(elementwise.UNARY)))
def test_every_unary_operator(op_type):
    model = sandwich(_unary(op_type), opset=20)
    group = group_of(model, "l1.W", 0)
    assert group.prunable and params(group) == SEED_AND_CONSUMER
    check_prune(model)


@pytest.mark.parametrize("op_type", sorted(elementwise.BROADCAST))
def test_every_broadcast_operator_ties_a_per_channel_constant(op_type):
    model = sandwich(_binary(op_type), opset=20)
    group = group_of(model, "l1.W", 0)
    assert group.prunable and params(group) == SEED_AND_CONSUMER | {("c", 1)}
    pruned, _ = check_prune(model)
    assert init_shape(pruned, "c") == (1, 4, 1, 1)


def test_broadcast_that_sees_sizes_disagree_blocks_instead_of_untying():
    """A Max whose output is said to be NHWC (2, 6, 6, 8) while its input is NCHW (2, 8, 6, 6), as
    jax2onnx's stale value_info says: axis 1 has 8 elements in, 6 out. Only a size-1 axis is
    broadcast; reading this as a broadcast dropped the tie to the consumer and pruned the seed
    alone (a broken model). It blocks, naming the operator."""
    from spa.graph import Graph

    graph = Graph.load(sandwich(lambda b, h: b.op("Max", [h, _scalar(b, "zero", 0.0)], name="mx")))
    graph.tensors["mx.y"].shape = (2, 6, 6, 8)
    group = group_of(spa.analyze(graph), "l1.W", 0)
    assert not group.prunable
    assert any("'mx'" in r and "disagree" in r for r in group.blocked), group.blocked
