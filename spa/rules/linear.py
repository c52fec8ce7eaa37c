"""Operators with weights that create channels: Conv, ConvTranspose, Gemm, MatMul, Einsum.

Gemm, MatMul and Einsum are all described by index letters (einsum notation): an axis ties to
every axis of the other operands with the same letter, whether the letter survives in the output
or is summed over (removing a summed index from both factors drops exactly its terms).
"""
from __future__ import annotations

import string

from . import register
from .base import Block, NodeView, Role, Rule, Summed, Unknown, same, whole_group_links


# ----------------------------------------------------------------------------- letter notation
def letter_links(view: NodeView, operands: list[tuple[str, str]], tensor: str, axis: int):
    """Ties for a live axis given each operand's letters; size-1 axes are broadcast and tie nothing."""
    size = view.size(tensor, axis)
    verdicts = []
    for name, letters in operands:
        if name != tensor:
            continue
        letter = letters[axis]
        if letters.count(letter) > 1:
            return [Block(f"{view.op_type} '{view.name}' takes a diagonal over the axis", code="mixes_axis")]
        if letter not in operands[-1][1]:
            verdicts.append(Summed(f"{view.op_type} '{view.name}' sums over the pruned channels", code="sum_over_nonzero"))
        if _product_of_activations(view, operands, letter):
            verdicts.append(Role("attention"))
        for other, other_letters in operands:
            for a, l in enumerate(other_letters):
                if l != letter or (other, a) == (tensor, axis):
                    continue
                if view.size(other, a) == size:
                    verdicts.append(same(other, a, size))
                elif view.size(other, a) != 1:  # only a size-1 axis is broadcast
                    raise Unknown(f"{view.op_type} '{view.name}' sees sizes that disagree: axis {a} of '{other}' has "
                                  f"{view.size(other, a)} elements where axis {axis} of '{tensor}' has {size}", code="shapes_disagree")
    return verdicts


def _product_of_activations(view: NodeView, operands, letter: str) -> bool:
    """Whether two run-time tensors both carry the letter: attention scores (Q K^T) or values (P V)."""
    *inputs, _ = operands
    carriers = [name for name, letters in inputs if letter in letters and not view.graph.is_constant_derived(name)]
    return len(carriers) >= 2


def gemm_operands(view: NodeView) -> list[tuple[str, str]]:
    a, b, c = view.input(0), view.input(1), view.input(2)
    operands = [(a, "km" if view.attr("transA", 0) else "mk"), (b, "nk" if view.attr("transB", 0) else "kn")]
    if c:
        operands.append((c, "mn"[2 - view.rank(c):]))
    return operands + [(view.outputs[0], "mn")]


def matmul_operands(view: NodeView) -> list[tuple[str, str]]:
    a, b, y = view.inputs[0], view.inputs[1], view.outputs[0]
    ra, rb = view.rank(a), view.rank(b)
    batch = string.ascii_uppercase[: max(ra, rb, 2) - 2]
    a_letters = "k" if ra == 1 else batch[len(batch) - (ra - 2):] + "mk"
    b_letters = "k" if rb == 1 else batch[len(batch) - (rb - 2):] + "kn"
    y_letters = batch + ("m" if ra > 1 else "") + ("n" if rb > 1 else "")
    return [(a, a_letters), (b, b_letters), (y, y_letters)]


def einsum_operands(view: NodeView) -> list[tuple[str, str]]:
    equation = view.attr("equation").decode() if isinstance(view.attr("equation"), bytes) else view.attr("equation")
    equation = equation.replace(" ", "")
    lhs, _, rhs = equation.partition("->")
    terms = lhs.split(",")
    if "->" not in equation:
        counts = {c: lhs.count(c) for c in lhs if c.isalpha()}
        rhs = ("..." if "..." in lhs else "") + "".join(sorted(c for c, n in counts.items() if n == 1))
    # An ellipsis stands for the leading axes; name them with digits, right-aligned like numpy.
    ellipsis_rank = max((view.rank(n) - len(t.replace("...", "")) for n, t in zip(view.inputs, terms) if "..." in t), default=0)
    digits = "0123456789"[:ellipsis_rank]

    def expand(term, rank):
        if "..." not in term:
            return term
        n = rank - len(term.replace("...", ""))
        return term.replace("...", digits[len(digits) - n:])

    operands = [(n, expand(t, view.rank(n))) for n, t in zip(view.inputs, terms)]
    return operands + [(view.outputs[0], rhs.replace("...", digits))]


def free_letter_seeds(view: NodeView, operands: list[tuple[str, str]]):
    """Output axes whose letter comes only from constant operands: new channels are born there."""
    *inputs, (out, out_letters) = operands
    graph = view.graph
    runtime_letters = {l for name, letters in inputs if not graph.is_constant_derived(name) for l in letters}
    constant_letters = {l for name, letters in inputs if graph.is_constant_derived(name) for l in letters}
    if not runtime_letters:
        return []
    return [(out, a) for a, l in enumerate(out_letters) if l in constant_letters and l not in runtime_letters]


class LetterRule(Rule):
    operands = staticmethod(lambda view: [])

    def links(self, view: NodeView, tensor: str, axis: int):
        return letter_links(view, self.operands(view), tensor, axis)

    def zero_output(self, view: NodeView, tensor: str, axis: int, tied_inputs) -> bool:
        """A product is zero where one factor is; an added input not tied here (a broadcast Gemm
        bias) is not."""
        *inputs, (_, out_letters) = self.operands(view)
        letter = out_letters[axis]
        factors = [tied_inputs.get((name, letters.index(letter))) if letter in letters else None
                   for name, letters in inputs]
        if view.op_type == "Gemm" and len(inputs) == 3:
            *factors, bias = factors
            if bias is not True:
                return False
        return any(factors)

    def seeds(self, view: NodeView):
        return free_letter_seeds(view, self.operands(view))


@register("Gemm")
class Gemm(LetterRule):
    operands = staticmethod(gemm_operands)


@register("MatMul")
class MatMul(LetterRule):
    operands = staticmethod(matmul_operands)


@register("Einsum")
class Einsum(LetterRule):
    operands = staticmethod(einsum_operands)


# ----------------------------------------------------------------------------- convolutions
class Convolution(Rule):
    """X (N, C_in, *spatial), weight W, optional bias B (C_out), Y (N, C_out, *spatial).

    With group > 1, W's axis 1 runs within one group only, so it cannot shrink: whole groups go
    (for a depthwise Conv, one input channel with its multiplier outputs) and `group` is rewritten.
    Quantized convolutions carry per-output-channel weight scales and zero points as well.
    """

    weight_in_axis: int  # the axis of W that runs over input channels
    weight_out_axis: int  # the axis of W that runs over output channels
    x_input, w_input, bias_input = 0, 1, 2
    per_channel_inputs: tuple[int, ...] = ()  # inputs whose axis 0 runs over output channels, when not scalars

    def channel_dims(self, view: NodeView):
        x, w, b, y = view.input(self.x_input), view.input(self.w_input), view.input(self.bias_input), view.outputs[0]
        in_dims = [(x, 1), (w, self.weight_in_axis)]
        out_dims = [(y, 1), (w, self.weight_out_axis)] + ([(b, 0)] if b else [])
        out_dims += [(view.input(i), 0) for i in self.per_channel_inputs
                     if view.input(i) and view.rank(view.input(i)) == 1 and view.size(view.input(i), 0) > 1]
        return in_dims, out_dims

    def links(self, view: NodeView, tensor: str, axis: int):
        x, w, y = view.input(self.x_input), view.input(self.w_input), view.outputs[0]
        live = (tensor, axis)
        if live in ((x, 0), (y, 0)):
            return [same(y if tensor == x else x, 0, view.size(tensor, 0))]
        groups = view.attr("group", 1)
        in_dims, out_dims = self.channel_dims(view)
        if live not in in_dims + out_dims:
            if tensor not in (x, w, y):
                return []  # a scale or zero point that holds one value for all channels
            return [Block(f"{view.op_type} '{view.name}' slides over axis {axis} of '{tensor}'", code="mixes_axis")]
        if groups == 1:
            side = in_dims if live in in_dims else out_dims
            summed = [Summed(f"{view.op_type} '{view.name}' sums over the pruned channels", code="sum_over_nonzero")] if side is in_dims else []
            return [same(n, a, view.size(tensor, axis)) for n, a in side if (n, a) != live] + summed
        if live == (w, 1):
            return [Block(f"the within-group axis of grouped {view.op_type} '{view.name}' cannot be pruned", code="grouped_conv")]
        per_group = {d: view.size(*d) // groups for d in in_dims + out_dims if d != (w, 1)}
        return whole_group_links(view, per_group, tensor, axis)

    def seeds(self, view: NodeView):
        return [(view.outputs[0], 1)] if view.graph.is_constant_derived(view.input(self.w_input)) else []

    def zero_output(self, view: NodeView, tensor: str, axis: int, tied_inputs) -> bool:
        """An output channel is zero when its filter and bias are."""
        w, b = view.input(self.w_input), view.input(self.bias_input)
        return axis == 1 and tied_inputs.get((w, self.weight_out_axis), False) and (not b or tied_inputs.get((b, 0), False))

    def rewrite(self, view: NodeView, edit):
        groups, x = view.attr("group", 1), view.input(self.x_input)
        if groups > 1 and edit.changed(x, 1):
            edit.set_attr(view.index, "group", edit.new_size(x, 1) // (view.size(x, 1) // groups))


@register("Conv")
class Conv(Convolution):
    """W is (C_out, C_in / group, *kernel)."""

    weight_in_axis, weight_out_axis = 1, 0


@register("ConvTranspose")
class ConvTranspose(Convolution):
    """W is (C_in, C_out / group, *kernel)."""

    weight_in_axis, weight_out_axis = 0, 1


@register("ConvInteger")
class ConvInteger(Convolution):
    """Conv on integers: x, w, x_zero_point, w_zero_point (per output channel or one)."""

    weight_in_axis, weight_out_axis = 1, 0
    bias_input = 99  # none
    per_channel_inputs = (3,)


@register("QLinearConv")
class QLinearConv(Convolution):
    """x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, B: a quantized
    Conv whose weight scales and zero points may be per output channel."""

    weight_in_axis, weight_out_axis = 1, 0
    x_input, w_input, bias_input = 0, 3, 8
    per_channel_inputs = (4, 5)
