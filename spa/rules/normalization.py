"""Normalizations. What each one couples:

- BatchNormalization: channel c of X and Y with element c of scale, B, mean, var (and of the
  running statistics in training mode). Per-channel and affine at inference: exact.
- InstanceNormalization: channel c of X and Y with scale[c], B[c]. Statistics run over the spatial
  axes only, so removing channels is exact; the spatial axes cannot shrink.
- GroupNormalization: whole groups of channels go together with their scale and bias entries
  (per group at opset 18, per channel at opset 21); `num_groups` is rewritten. Exact.
- LayerNormalization and RMSNormalization: each normalized axis of X and Y with the same axis of
  Scale (and B). Statistics run over the pruned channels, so pruning them is *approximate*: the
  group stays prunable (that is how a transformer's hidden size is pruned) and is flagged.
- LpNormalization: the norm over the axis gets no contribution from a zeroed channel: exact
  where the removed channels are zero (see `Summed`).
"""
from __future__ import annotations

from . import register
from .base import Approximate, Block, NodeView, Rule, Summed, normalize_axis, same, whole_group_links


class AffineNormalization(Rule):
    """A normalization ending in scale * normalized + bias: zero where scale and bias are."""

    def zero_output(self, view: NodeView, tensor: str, axis: int, tied_inputs) -> bool:
        scale, bias = view.input(1), view.input(2)
        scale_zero = any(zero for (name, _), zero in tied_inputs.items() if name == scale)
        bias_zero = not bias or any(zero for (name, _), zero in tied_inputs.items() if name == bias)
        return scale_zero and bias_zero


def batch_and_spatial(view: NodeView, tensor: str, axis: int, spatial_ok: bool):
    """Axes other than the channel axis of X and Y: they pass through (or block, if statistics run over them)."""
    x, y = view.inputs[0], view.outputs[0]
    if axis == 0 or spatial_ok:
        return [same(y if tensor == x else x, axis, view.size(tensor, axis))]
    return [Block(f"{view.op_type} '{view.name}' takes statistics over axis {axis}", code="reduction_over_channels")]


@register("BatchNormalization")
class BatchNormalization(AffineNormalization):
    def links(self, view: NodeView, tensor: str, axis: int):
        x, y = view.inputs[0], view.outputs[0]
        channel_dims = [(x, 1), (y, 1)] + [(n, 0) for n in view.inputs[1:] + view.outputs[1:] if n]
        if (tensor, axis) in channel_dims:
            return [same(n, a, view.size(tensor, axis)) for n, a in channel_dims if (n, a) != (tensor, axis)]
        return batch_and_spatial(view, tensor, axis, spatial_ok=True)


@register("InstanceNormalization")
class InstanceNormalization(AffineNormalization):
    def links(self, view: NodeView, tensor: str, axis: int):
        x, y = view.inputs[0], view.outputs[0]
        channel_dims = [(x, 1), (y, 1)] + [(n, 0) for n in view.inputs[1:] if n]
        if (tensor, axis) in channel_dims:
            return [same(n, a, view.size(tensor, axis)) for n, a in channel_dims if (n, a) != (tensor, axis)]
        return batch_and_spatial(view, tensor, axis, spatial_ok=False)


@register("GroupNormalization")
class GroupNormalization(AffineNormalization):
    def channels_per_group(self, view: NodeView) -> int:
        return view.size(view.inputs[0], 1) // view.attr("num_groups")

    def links(self, view: NodeView, tensor: str, axis: int):
        x, y = view.inputs[0], view.outputs[0]
        per_group = self.channels_per_group(view)
        dims = {(x, 1): per_group, (y, 1): per_group}
        for param in view.inputs[1:3]:
            # opset 18: one scale and bias per group; opset 21: one per channel
            per_param = 1 if view.size(param, 0) == view.attr("num_groups") else per_group
            dims[(param, 0)] = per_param
        if (tensor, axis) in dims:
            return whole_group_links(view, dims, tensor, axis)
        return batch_and_spatial(view, tensor, axis, spatial_ok=False)

    def rewrite(self, view: NodeView, edit):
        x = view.inputs[0]
        if edit.changed(x, 1):
            edit.set_attr(view.index, "num_groups", edit.new_size(x, 1) // self.channels_per_group(view))


@register("LayerNormalization", "RMSNormalization")
class LayerNormalization(AffineNormalization):
    """X, Scale, [B] -> Y, [Mean, InvStdDev]; statistics over axes `axis`.. of X."""

    def links(self, view: NodeView, tensor: str, axis: int):
        x, y = view.inputs[0], view.outputs[0]
        rank = view.rank(x)
        first = normalize_axis(view.attr("axis", -1), rank)
        params = [n for n in view.inputs[1:3] if n]
        stats = [n for n in view.outputs[1:] if n]
        # Express the live axis as an axis of X; params are right-aligned against X.
        if tensor in params:
            x_axis = axis + rank - view.rank(tensor)
        else:
            x_axis = axis
        size = view.size(x, x_axis)
        dims = [(x, x_axis), (y, x_axis)]
        dims += [(p, x_axis - rank + view.rank(p)) for p in params if x_axis - rank + view.rank(p) >= 0]
        if x_axis < first:
            dims += [(s, x_axis) for s in stats]
        verdicts = [same(n, a, size) for n, a in dims if (n, a) != (tensor, axis) and view.size(n, a) == size]
        if x_axis >= first:
            verdicts.append(Approximate(f"{view.op_type} '{view.name}' normalizes over the pruned channels", code="normalization_over_channels"))
        return verdicts


@register("LpNormalization")
class LpNormalization(Rule):
    def links(self, view: NodeView, tensor: str, axis: int):
        other = view.outputs[0] if tensor == view.inputs[0] else view.inputs[0]
        verdicts = [same(other, axis, view.size(tensor, axis))]
        if axis == normalize_axis(view.attr("axis", -1), view.rank(tensor)):
            verdicts.append(Summed(f"LpNormalization '{view.name}' takes the norm over the pruned channels", code="sum_over_nonzero"))
        return verdicts
