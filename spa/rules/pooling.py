"""Operators that pool, reduce, normalize over an axis, resize or pad.

Batch and channel axes pass through pooling; the spatial axes a window slides over cannot shrink.
A reduction over the pruned axis is exact when a zeroed channel adds nothing to it (sum, L1, L2,
sum of squares, log of sum), approximate for a mean (the divisor changes), and blocked otherwise.
"""
from __future__ import annotations

import numpy as np

from . import register
from .base import Approximate, Block, Link, NodeView, Rule, Summed, normalize_axis, same, shifted

POOLS = ("AveragePool", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "LpPool", "MaxPool")
REDUCE_EXACT = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceSum", "ReduceSumSquare")
REDUCE_APPROXIMATE = ("ReduceMean",)
REDUCE_BLOCKED = ("ReduceLogSumExp", "ReduceMax", "ReduceMin", "ReduceProd")


@register(*POOLS)
class Pool(Rule):
    """Batch and channel axes pass through; a window slides over the others. A global pool
    reduces every axis from 2 on: on a 3-D tensor (N, T, C) that includes the channels C, so it
    acts as a reduction over them (Keras writes LayerNorm's mean this way)."""

    def links(self, view: NodeView, tensor: str, axis: int):
        x, y = view.inputs[0], view.outputs[0]
        if axis >= 2:
            if view.op_type.startswith("Global") and tensor == x:
                return self.on_reduced_axis(view)
            return [Block(f"{view.op_type} '{view.name}' slides over axis {axis}", code="mixes_axis")]
        if axis == 1 and len(view.outputs) > 1 and view.outputs[1]:
            return [Block(f"the indices output of {view.op_type} '{view.name}' count over channels", code="returns_positions")]
        return [same(y if tensor == x else x, axis, view.size(tensor, axis))]

    def on_reduced_axis(self, view: NodeView):
        if view.op_type == "GlobalAveragePool":
            return [Approximate(f"GlobalAveragePool '{view.name}' averages over the pruned channels", code="mean_over_channels")]
        if view.op_type == "GlobalLpPool":
            return [Summed(f"GlobalLpPool '{view.name}' takes the norm over the pruned channels", code="sum_over_nonzero")]
        return [Block(f"{view.op_type} '{view.name}' reduces over the pruned axis", code="reduction_over_channels")]


class Reduction(Rule):
    """Input axes that are not reduced map to output axes (shifted left when keepdims=0)."""

    def reduced_axes(self, view: NodeView) -> set[int]:
        raise NotImplementedError

    def on_reduced_axis(self, view: NodeView):
        raise NotImplementedError

    def links(self, view: NodeView, tensor: str, axis: int):
        x, y = view.inputs[0], view.outputs[0]
        rank = view.rank(x)
        reduced = self.reduced_axes(view)
        keep = [a for a in range(rank) if a not in reduced]
        keepdims = view.attr("keepdims", 1)
        if tensor == x:
            if axis in reduced:
                return self.on_reduced_axis(view)
            y_axis = axis if keepdims else keep.index(axis)
            return [same(y, y_axis, view.size(x, axis))]
        x_axis = axis if keepdims else keep[axis]
        return [same(x, x_axis, view.size(y, axis))]


@register(*REDUCE_EXACT, *REDUCE_APPROXIMATE, *REDUCE_BLOCKED)
class Reduce(Reduction):
    def reduced_axes(self, view: NodeView) -> set[int]:
        rank = view.rank(view.inputs[0])
        axes = view.axes_input_or_attr(1)
        if not axes:
            return set() if view.attr("noop_with_empty_axes", 0) else set(range(rank))
        return {normalize_axis(a, rank) for a in axes}

    def zero_output(self, view: NodeView, tensor: str, axis: int, tied_inputs) -> bool:
        return view.op_type not in ("ReduceLogSum", "ReduceLogSumExp") and super().zero_output(view, tensor, axis, tied_inputs)

    def on_reduced_axis(self, view: NodeView):
        if view.op_type in REDUCE_EXACT:  # the pruned channels stop contributing: exact if they were zero
            return [Summed(f"{view.op_type} '{view.name}' sums over the pruned channels", code="sum_over_nonzero")]
        if view.op_type in REDUCE_APPROXIMATE:
            return [Approximate(f"{view.op_type} '{view.name}' averages over the pruned channels", code="mean_over_channels")]
        return [Block(f"{view.op_type} '{view.name}' reduces over the pruned axis", code="reduction_over_channels")]


@register("ArgMax", "ArgMin")
class ArgReduce(Reduction):
    def reduced_axes(self, view: NodeView) -> set[int]:
        return {normalize_axis(view.attr("axis", 0), view.rank(view.inputs[0]))}

    def on_reduced_axis(self, view: NodeView):
        return [Block(f"{view.op_type} '{view.name}' returns positions along the pruned axis", code="returns_positions")]

    def zero_output(self, view: NodeView, tensor: str, axis: int, tied_inputs) -> bool:
        return False


@register("Softmax", "LogSoftmax", "Hardmax")
class Softmax(Rule):
    def links(self, view: NodeView, tensor: str, axis: int):
        x, y = view.inputs[0], view.outputs[0]
        if axis == normalize_axis(view.attr("axis", -1), view.rank(x)):
            return [Block(f"{view.op_type} '{view.name}' normalizes over the pruned axis", code="reduction_over_channels")]
        return [same(y if tensor == x else x, axis, view.size(tensor, axis))]

    def zero_output(self, view: NodeView, tensor: str, axis: int, tied_inputs) -> bool:
        return False  # a softmax over zeros is uniform, not zero


@register("Resize")
class Resize(Rule):
    """Batch and channel axes pass through when their scale is 1; `sizes` entries are rewritten."""

    def per_axis(self, view: NodeView, input_pos: int) -> dict[int, float] | None:
        name = view.input(input_pos)
        if not name or view.size(name, 0) == 0:
            return None
        values = view.const(name, "the scales" if input_pos == 2 else "the sizes")
        rank = view.rank(view.inputs[0])
        axes = [normalize_axis(a, rank) for a in view.attr("axes", list(range(rank)))]
        return dict(zip(axes, values.tolist()))

    def links(self, view: NodeView, tensor: str, axis: int):
        x, y = view.inputs[0], view.outputs[0]
        if tensor not in (x, y):
            return []
        size = view.size(x, axis)
        scales, sizes = self.per_axis(view, 2), self.per_axis(view, 3)
        # the sizes seen from either end: the output's size is its `sizes` entry, never a change
        if (scales or {}).get(axis, 1.0) != 1.0 or (sizes or {}).get(axis, size) != size \
                or view.size(y, axis) != size:
            return [Block(f"Resize '{view.name}' rescales axis {axis}", code="mixes_axis")]
        return [same(y if tensor == x else x, axis, size)]

    def rewrite(self, view: NodeView, edit):
        x = view.inputs[0]
        sizes = self.per_axis(view, 3)
        if sizes is None:
            return
        new = [edit.new_size(x, a) if edit.changed(x, a) else int(v) for a, v in sizes.items()]
        edit.set_input_value(view.index, 3, np.array(new, dtype=np.int64))


@register("Pad")
class Pad(Rule):
    """Unpadded axes pass through; a constant-padded axis shifts by its leading pad."""

    def pads_of(self, view: NodeView, x_axis: int) -> tuple[int, int]:
        x = view.inputs[0]
        rank = view.rank(x)
        pads = view.const(view.input(1), "the pads") if view.input(1) else np.array(view.attr("pads"))
        axes = view.axes_input_or_attr(3) or list(range(rank))
        axes = [normalize_axis(a, rank) for a in axes]
        if x_axis not in axes:
            return 0, 0
        i = axes.index(x_axis)
        return int(pads[i]), int(pads[i + len(axes)])

    def links(self, view: NodeView, tensor: str, axis: int):
        x, y = view.inputs[0], view.outputs[0]
        if tensor not in (x, y):
            return []
        begin, end = self.pads_of(view, axis)
        if begin == end == 0:
            return [same(y if tensor == x else x, axis, view.size(tensor, axis))]
        if begin < 0 or end < 0:
            return [Block(f"Pad '{view.name}' crops axis {axis}", code="padding")]
        if view.attr("mode", b"constant") not in (b"constant", "constant"):
            return [Block(f"Pad '{view.name}' pads axis {axis} with copies of its channels", code="padding")]
        n = view.size(x, axis)
        if tensor == x:
            return [shifted(y, axis, n, begin)]
        # The channels Pad adds cannot be removed without changing the pads: they stay.
        added = np.concatenate([np.arange(begin), np.arange(begin + n, begin + n + end)])
        return [Link(x, axis, np.arange(n) + begin, np.arange(n)),
                Block(f"Pad '{view.name}' adds these channels", added, code="padding")]

    def zero_output(self, view: NodeView, tensor: str, axis: int, tied_inputs) -> bool:
        # A removed channel padded along another axis with a nonzero value is nonzero at the border.
        if view.attr("mode", b"constant") in (b"constant", "constant") and view.input(2):
            value = view.value(view.input(2))
            rank = view.rank(view.inputs[0])
            padded = any(self.pads_of(view, a) != (0, 0) for a in range(rank) if a != axis)
            if padded and (value is None or np.any(value != 0)):
                return False
        return super().zero_output(view, tensor, axis, tied_inputs)
