"""The fused Attention operator (opset 23): scaled dot-product attention with grouped-query heads.

Q (B, q_heads, S, head_size), K (B, kv_heads, S', head_size), V (B, kv_heads, S', v_head_size) ->
Y (B, q_heads, S, v_head_size); or the 3-D form (B, S, heads * head_size) with `q_num_heads` and
`kv_num_heads` attributes. Query head h uses key/value head h // (q_heads / kv_heads), so a unit
is a key/value head with its query heads (a GQA group; one head each without GQA); the head
counts are rewritten. The head size of Q and K is summed over by the scores, and the default scale
1/sqrt(head_size) is made explicit when it shrinks; V's head size passes to Y.
"""
from __future__ import annotations

import math

from . import register
from .base import Block, NodeView, Role, Rule, Summed, same, whole_group_links

Q, K, V, MASK, PAST_K, PAST_V = range(6)
Y, PRESENT_K, PRESENT_V, SCORES = range(4)


def _present(names, positions):
    return [names[p] for p in positions if p < len(names) and names[p]]


@register("Attention")
class Attention(Rule):
    def links(self, view: NodeView, tensor: str, axis: int):
        if view.rank(view.inputs[Q]) == 3:
            return self.links_3d(view, tensor, axis)
        ins, outs = view.inputs, view.outputs
        q_heads, kv_heads = view.size(ins[Q], 1), view.size(ins[K], 1)
        query_side = _present(ins, [Q]) + _present(outs, [Y, SCORES])
        kv_side = _present(ins, [K, V, PAST_K, PAST_V]) + _present(outs, [PRESENT_K, PRESENT_V])
        mask = _present(ins, [MASK])
        if axis == 0 or (mask and tensor == mask[0] and axis == view.rank(tensor) - 4):
            dims = [(t, 0) for t in query_side + kv_side]
            return [same(t, a, view.size(tensor, axis)) for t, a in dims if (t, a) != (tensor, axis)]
        heads = {(t, 1): q_heads // kv_heads for t in query_side} | {(t, 1): 1 for t in kv_side}
        if mask and view.rank(mask[0]) == 4 and view.size(mask[0], 1) == q_heads:
            heads[(mask[0], 1)] = q_heads // kv_heads
        if (tensor, axis) in heads:
            return whole_group_links(view, heads, tensor, axis) + [Role("attention")]
        scored = [(t, 3) for t in _present(ins, [Q, K, PAST_K]) + _present(outs, [PRESENT_K])]
        valued = [(t, 3) for t in _present(ins, [V, PAST_V]) + _present(outs, [Y, PRESENT_V])]
        for dims, summed in ((scored, True), (valued, False)):
            if (tensor, axis) in dims:
                ties = [same(t, a, view.size(tensor, axis)) for t, a in dims if (t, a) != (tensor, axis)]
                ties.append(Role("attention"))
                return ties + ([Summed(f"Attention '{view.name}' sums over the pruned head size", code="sum_over_nonzero")] if summed else [])
        return [Block(f"Attention '{view.name}' attends over axis {axis} of '{tensor}'", code="mixes_axis")]

    def links_3d(self, view: NodeView, tensor: str, axis: int):
        """(B, S, heads * head_size): whole GQA groups of a hidden axis, as bundles."""
        ins, outs = view.inputs, view.outputs
        kv_heads = view.attr("kv_num_heads")
        if axis == 0:
            dims = [(t, 0) for t in _present(ins, [Q, K, V]) + _present(outs, [Y])]
            return [same(t, a, view.size(tensor, axis)) for t, a in dims if (t, a) != (tensor, axis)]
        if axis != 2 or tensor not in _present(ins, [Q, K, V]) + _present(outs, [Y]) or _present(ins, [PAST_K, PAST_V]):
            return [Block(f"Attention '{view.name}' attends over axis {axis} of '{tensor}'", code="mixes_axis")]
        per_group = {(t, 2): view.size(t, 2) // kv_heads for t in _present(ins, [Q, K, V]) + _present(outs, [Y])}
        summed = [Summed(f"Attention '{view.name}' sums over the pruned head size", code="sum_over_nonzero")] if tensor in ins[:2] else []
        return whole_group_links(view, per_group, tensor, axis) + summed + [Role("attention")]

    def zero_output(self, view: NodeView, tensor: str, axis: int, tied_inputs) -> bool:
        """Y is a weighted sum of V's rows: zero where V is."""
        v_axis = axis if view.rank(view.inputs[Q]) == 4 else 2
        return tensor == view.outputs[Y] and tied_inputs.get((view.inputs[V], v_axis), False)

    def rewrite(self, view: NodeView, edit):
        q, k = view.inputs[Q], view.inputs[K]
        if view.rank(q) == 3:  # whole heads went: the head counts shrink, the head size stays
            if edit.changed(q, 2):
                for tensor, attr in ((q, "q_num_heads"), (k, "kv_num_heads")):
                    per_head = view.size(tensor, 2) // view.attr(attr)
                    edit.set_attr(view.index, attr, edit.new_size(tensor, 2) // per_head)
        elif edit.changed(q, 3) and view.attr("scale") is None:
            # the default scale follows the head size: keep the one the model was trained with
            edit.set_attr(view.index, "scale", 1.0 / math.sqrt(view.size(q, 3)))
