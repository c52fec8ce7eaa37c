"""Element-wise operators: every axis passes through; broadcasting ties only full-size axes."""
from __future__ import annotations

from . import register
from .base import NodeView, Rule, positions, same

# One input carries the data; the other inputs, if any, are scalars (Clip's min and max).
UNARY = (
    "Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "BitwiseNot", "Cast", "CastLike", "Ceil", "Celu",
    "Clip", "Cos", "Cosh", "Dropout", "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid", "HardSwish",
    "Identity", "IsInf", "IsNaN", "LeakyRelu", "Log", "Mish", "Neg", "Not", "Reciprocal", "Relu", "Round",
    "Selu", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Softplus", "Softsign", "Sqrt", "Swish", "Tan", "Tanh",
    "ThresholdedRelu",
)

# Several inputs broadcast against each other (numpy rules, right-aligned).
BROADCAST = (
    "Add", "And", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "Div", "Equal", "Greater",
    "GreaterOrEqual", "Less", "LessOrEqual", "Max", "Mean", "Min", "Mod", "Mul", "Or", "Pow", "PRelu", "Sub",
    "Sum", "Where", "Xor",
)


@register(*UNARY)
class Unary(Rule):
    """Output i has the shape of input 0 (Dropout's optional mask too): axis k ties to axis k."""

    def links(self, view: NodeView, tensor: str, axis: int):
        size = view.size(tensor, axis)
        data = [view.inputs[0]] + [o for o in view.outputs if o]
        return [same(t, axis, size) for t in data if t != tensor] if tensor in data else []


@register(*BROADCAST)
class Broadcast(Rule):
    """Inputs broadcast to the output. An input axis of the output's size ties to the output axis;
    an axis of size 1 is broadcast and ties to nothing (removing output channels leaves it as is)."""

    def links(self, view: NodeView, tensor: str, axis: int):
        out = view.outputs[0]
        out_rank = view.rank(out)
        in_pos, out_pos = positions(view, tensor)
        if out_pos:
            out_axis = axis
        else:
            out_axis = axis + out_rank - view.rank(tensor)
            if view.size(tensor, axis) != view.size(out, out_axis):
                return []  # this input is broadcast along the axis: nothing else depends on its elements
        size = view.size(out, out_axis)
        verdicts = [] if out == tensor else [same(out, out_axis, size)]
        for name in view.inputs:
            if not name:
                continue
            in_axis = out_axis - (out_rank - view.rank(name))
            if in_axis >= 0 and view.size(name, in_axis) == size and (name, in_axis) != (tensor, axis):
                verdicts.append(same(name, in_axis, size))
        return verdicts
