"""Element-wise operators: every axis passes through; broadcasting ties only full-size axes."""
from __future__ import annotations

import numpy as np

from . import register
from .base import NodeView, Rule, Unknown, positions, same

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


# Unary operators with f(0) = 0: a zeroed channel stays zero through them.
ZERO_AT_ZERO = {
    "Abs", "Asin", "Asinh", "Atan", "Atanh", "Cast", "CastLike", "Ceil", "Celu", "Dropout", "Elu", "Erf", "Floor",
    "Gelu", "HardSwish", "Identity", "LeakyRelu", "Mish", "Neg", "Relu", "Round", "Selu", "Shrink", "Sign", "Sin",
    "Sinh", "Softsign", "Sqrt", "Swish", "Tan", "Tanh", "ThresholdedRelu",
}


@register(*UNARY)
class Unary(Rule):
    """Output i has the shape of input 0 (Dropout's optional mask too): axis k ties to axis k."""

    def links(self, view: NodeView, tensor: str, axis: int):
        size = view.size(tensor, axis)
        data = [view.inputs[0]] + [o for o in view.outputs if o]
        return [same(t, axis, size) for t in data if t != tensor] if tensor in data else []

    def zero_output(self, view: NodeView, tensor: str, axis: int, tied_inputs) -> bool:
        if view.op_type == "Clip":  # zero stays zero when the bounds hold it
            low, high = (view.value(view.input(i)) for i in (1, 2))
            if (view.input(1) and low is None) or (view.input(2) and high is None):
                return False
            if (low is not None and low > 0) or (high is not None and high < 0):
                return False
        elif view.op_type not in ZERO_AT_ZERO:
            return False
        return tied_inputs.get((view.inputs[0], axis), False)


def _check_broadcast(view: NodeView, tensor: str, axis: int, size: int):
    """An input axis whose size differs from the output's is broadcast only if it has size 1.
    Any other size means the shapes SPA was given contradict each other (a stale declaration):
    treating the axis as broadcast would silently cut the channels' ties."""
    if view.size(tensor, axis) != 1:
        raise Unknown(f"{view.op_type} '{view.name}' sees sizes that disagree: axis {axis} of '{tensor}' has "
                      f"{view.size(tensor, axis)} elements where the output has {size}", code="shapes_disagree")


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
                _check_broadcast(view, tensor, axis, view.size(out, out_axis))
                return []  # this input is broadcast along the axis: nothing else depends on its elements
        size = view.size(out, out_axis)
        verdicts = [] if out == tensor else [same(out, out_axis, size)]
        for name in view.inputs:
            if not name:
                continue
            in_axis = out_axis - (out_rank - view.rank(name))
            if in_axis < 0 or (name, in_axis) == (tensor, axis):
                continue
            if view.size(name, in_axis) == size:
                verdicts.append(same(name, in_axis, size))
            else:
                _check_broadcast(view, name, in_axis, size)
        return verdicts

    def zero_output(self, view: NodeView, tensor: str, axis: int, tied_inputs) -> bool:
        out_rank = view.rank(tensor)
        zero = []  # per input: True/False if tied along the axis, None if broadcast along it
        for name in view.inputs:
            in_axis = axis - (out_rank - view.rank(name)) if name else -1
            zero.append(tied_inputs.get((name, in_axis)) if in_axis >= 0 else None)
        op = view.op_type
        if op in ("Mul", "And", "BitwiseAnd"):
            return any(zero)
        if op in ("PRelu", "Div", "Mod", "Pow"):  # zero when the first input is, if the second keeps it so
            second = view.value(view.inputs[1])
            keeps = second is not None and (op != "Pow" or np.all(second > 0)) and (op == "Pow" or np.all(second != 0))
            return bool(zero[0]) and (op == "PRelu" or keeps)
        if op == "Where":
            return bool(zero[1]) and bool(zero[2])
        if op in ("Add", "Sub", "Max", "Min", "Sum", "Mean", "BitwiseOr", "Or", "Xor", "BitwiseXor"):
            return all(z is True for z in zero)
        return False  # comparisons and the like do not give zero for zero
