"""Quantization: QuantizeLinear and DequantizeLinear pass every axis through; a per-axis scale and
zero point along the pruned axis are members. Blocked quantization (block_size) blocks that axis.

In a QDQ model, a pruned weight is an integer initializer behind a DequantizeLinear; its
per-channel scale and zero point go with its channels. Zero is the zero point: a zeroed channel
stays zero through a Quantize-Dequantize pair.
"""
from __future__ import annotations

from . import register
from .base import Block, NodeView, Rule, normalize_axis, same


@register("QuantizeLinear", "DequantizeLinear")
class QuantizeDequantize(Rule):
    def links(self, view: NodeView, tensor: str, axis: int):
        x, scale, zero_point, y = view.input(0), view.input(1), view.input(2), view.outputs[0]
        if tensor not in (x, y):
            return []  # a scale or zero point ties through the data axis it runs along
        size = view.size(tensor, axis)
        along = normalize_axis(view.attr("axis", 1), view.rank(x))
        per_axis = [p for p in (scale, zero_point) if p and view.rank(p) == 1 and view.size(p, 0) == size]
        verdicts = [same(y if tensor == x else x, axis, size)]
        if axis == along and view.attr("block_size", 0):
            verdicts.append(Block(f"{view.op_type} '{view.name}' quantizes axis {axis} in blocks", code="block_quantization"))
        elif axis == along:
            verdicts += [same(p, 0, size) for p in per_axis]
        return verdicts

    def zero_output(self, view: NodeView, tensor: str, axis: int, tied_inputs) -> bool:
        return tied_inputs.get((view.input(0), axis), False)
