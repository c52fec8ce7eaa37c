"""What a rule is, and what it can say.

A rule knows one kind of operator. Given a *live* dimension (tensor, axis) of one of the
operator's inputs or outputs, it says which elements of the operator's other dimensions are tied
to which elements of the live one (`Link`), or that the live dimension cannot be pruned here
(`Block`), or that pruning it is allowed but changes more than zeroing would (`Approximate`,
e.g. a LayerNorm whose statistics run over the pruned channels), or that the live dimension is
summed over here (`Summed`: exact only where removed channels are zero, which `zero_output`
follows through the graph).

A rule also names the dimensions where new prunable channels are born (`seeds`, e.g. the output
channels of a Conv), and fixes the operator after channels are removed (`rewrite`: attributes
such as Conv `group`, constant inputs such as Reshape shapes or Split sizes).

Links are element-level: index i of the live dimension is tied to index j of the other one. Ties
are symmetric and transitive; their closure is computed in spa.groups. A link that ties many
elements of one side to one element of the other bundles them: they can only go together.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import onnx
from onnx import helper

from ..reasons import OTHER


@dataclass
class Link:
    """Elements `src` of the live dimension are tied to elements `dst` of (tensor, axis).

    `digit` is for an axis of symbolic size (a batch merged with heads, "4*batch"): its elements
    are the values of one digit of the flat index, (stride, size), and the symbolic rest of the
    axis is never pruned."""

    tensor: str
    axis: int
    src: np.ndarray
    dst: np.ndarray
    digit: tuple[int, int] | None = None


@dataclass
class Block:
    """The live dimension (or only its elements `indices`) must not be pruned, for `reason`;
    `code` says why in one stable word (spa.reasons.REASON_CODES; "other" when not given)."""

    reason: str
    indices: np.ndarray | None = None
    code: str = OTHER


@dataclass
class Approximate:
    """Pruning the live dimension is allowed, but it changes the result beyond zeroing it."""

    reason: str
    code: str = OTHER


@dataclass
class Summed:
    """The live dimension is summed over here (a contraction or a sum reduction). Removing its
    channels equals zeroing them only if they are zero when their parameters are: otherwise the
    prune is approximate, with `reason` (and `code`)."""

    reason: str
    code: str = OTHER


@dataclass
class Role:
    """What the live dimension is for the model, as far as the operator can tell: "attention"
    for the heads or head size of an attention (a product of two activations, a fused Attention)."""

    name: str


@dataclass
class Requires:
    """Index i of (tensor, axis) must end up tied to index i of each of `others`, or the live
    dimension is blocked with `reason`: a size computed at run time from those axes (the larger
    of two head counts) follows a prune only if they all shrink together. Checked once every tie
    is known."""

    tensor: str
    axis: int
    others: list[tuple[str, int]]
    reason: str
    code: str = OTHER


Verdict = Link | Block | Approximate | Summed | Role | Requires


class Unknown(Exception):
    """Raised inside a rule when a fact it needs (a static size, a constant) is not known: the
    live dimension is blocked with the message as its reason, and `code` (spa.reasons)."""

    def __init__(self, message: str, code: str = OTHER):
        super().__init__(message)
        self.code = code


def same(tensor: str, axis: int, size: int) -> Link:
    """Index i tied to index i: the dimension passes through unchanged."""
    idx = np.arange(size)
    return Link(tensor, axis, idx, idx)


def shifted(tensor: str, axis: int, size: int, offset: int) -> Link:
    """Index i tied to index i + offset (Concat inputs into their output, Split outputs from the input)."""
    idx = np.arange(size)
    return Link(tensor, axis, idx, idx + offset)


def whole_group_links(view: "NodeView", per_group: dict[tuple[str, int], int], tensor: str, axis: int) -> list[Link]:
    """Channels that can only go in whole groups (grouped Conv, GroupNormalization).

    Element e of each dimension D belongs to group e // per_group[D]; it is tied to the first
    element of the same group on the live dimension (whose own elements are tied that way too).
    """
    live_per_group = per_group[(tensor, axis)]
    links = []
    for (name, a), p in per_group.items():
        e = np.arange(view.size(name, a))
        links.append(Link(name, a, (e // p) * live_per_group, e))
    return links


class NodeView:
    """One operator, with the graph facts a rule needs."""

    def __init__(self, graph, index: int, carrier: str = "outer"):
        self.graph = graph
        self.carrier = carrier  # which digit carries the channels when a reshape splits an axis (spa.rules.shape)
        self.is_live = lambda tensor, axis: False  # set during propagation: is (tensor, axis) live yet
        self.digit_of = lambda tensor, axis: None  # set during propagation: the digit of a symbolic axis
        self.index = index
        self.node: onnx.NodeProto = graph.nodes[index]
        self.op_type = self.node.op_type
        self.inputs = list(self.node.input)
        self.outputs = list(self.node.output)
        self.opset = graph.opset

    @property
    def name(self) -> str:
        return self.graph.node_name(self.index)

    def attr(self, name: str, default=None):
        for a in self.node.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default

    def input(self, i: int) -> str:
        """The i-th input name, or '' when it is absent."""
        return self.inputs[i] if i < len(self.inputs) else ""

    def shape(self, tensor: str) -> tuple:
        shape = self.graph.shape(tensor)
        if shape is None:
            raise Unknown(f"the shape of '{tensor}' is unknown", code="unknown_size")
        return shape

    def rank(self, tensor: str) -> int:
        return len(self.shape(tensor))

    def size(self, tensor: str, axis: int) -> int:
        """The number of elements of an axis; for a symbolic axis whose prunable digit is known
        (see Link.digit), the size of that digit."""
        shape = self.shape(tensor)
        dim = shape[axis]
        if isinstance(dim, int):
            return dim
        digit = self.digit_of(tensor, axis)
        if digit is None:
            raise Unknown(f"axis {axis} of '{tensor}' has no static size", code="unknown_size")
        return digit[1]

    def value(self, tensor: str) -> np.ndarray | None:
        return self.graph.value(tensor) if tensor else None

    def const(self, tensor: str, what: str) -> np.ndarray:
        """The constant value of an input that the rule needs; Unknown when it is computed at run time."""
        value = self.value(tensor)
        if value is None:
            raise Unknown(f"{what} of {self.op_type} '{self.name}' is computed at run time", code="runtime_shape")
        return value

    def axes_input_or_attr(self, input_pos: int, attr: str = "axes") -> list[int] | None:
        """Axes given either as an attribute (older opsets) or as a constant input (newer ones)."""
        if self.input(input_pos):
            return [int(a) for a in self.const(self.inputs[input_pos], "the axes input")]
        value = self.attr(attr)
        return None if value is None else [int(a) for a in value]


def positions(view: NodeView, tensor: str) -> tuple[list[int], list[int]]:
    """Input positions and output positions at which `tensor` appears in the operator."""
    return [i for i, n in enumerate(view.inputs) if n == tensor], [i for i, n in enumerate(view.outputs) if n == tensor]


def normalize_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


class Rule:
    """Base class: an operator with no ties, no seeds and nothing to rewrite.

    A rule answers for one operator type (`spa.rules.register`): `links` is asked, for each live
    dimension (tensor, axis) among the operator's inputs and outputs, which elements of its other
    dimensions are tied to it; `seeds` names the dimensions where new channels are born (a Conv's
    output channels); `rewrite` fixes attributes and constant inputs once channels are gone; and
    `zero_output` says whether an output stays zero at removed channels (for sums downstream).

    A worked example: a custom operator `com.example.ScaledRelu`, y = alpha * relu(x), element by
    element. Channel c of x is channel c of y, on every axis; nothing to seed, nothing to rewrite,
    and zero in gives zero out (the default `zero_output`):

        import spa.rules
        from spa.rules import Block, Rule, same

        @spa.rules.register("ScaledRelu", domain="com.example")
        class ScaledRelu(Rule):
            def links(self, view, tensor, axis):
                x, y = view.inputs[0], view.outputs[0]
                if tensor not in (x, y):
                    return []
                if view.rank(x) != view.rank(y):
                    return [Block(f"ScaledRelu '{view.name}' changes the rank", code="shapes_disagree")]
                return [same(y if tensor == x else x, axis, view.size(tensor, axis))]

    Registered before `spa.analyze` or `spa.prune` runs, it unblocks every group that reaches a
    ScaledRelu node; `spa analyze` names the rule that handled each custom-domain node. A verdict
    without a `code` gets "other"; Unknown raised from `view.size`, `view.const` ... carries its
    own code. See the README, *Extending SPA*, for the test with the zeroing oracle.
    """

    def links(self, view: NodeView, tensor: str, axis: int) -> Iterable[Verdict]:
        raise NotImplementedError

    def seeds(self, view: NodeView) -> Iterable[tuple[str, int]]:
        return ()

    def rewrite(self, view: NodeView, edit) -> None:
        return None

    def zero_output(self, view: NodeView, tensor: str, axis: int, tied_inputs: dict[tuple[str, int], bool]) -> bool:
        """Whether output dimension (tensor, axis) is zero at removed channels once their
        parameters are zeroed, given which input dimensions tied to it are (`tied_inputs`).
        By default: when all of them are (data moved around, pooled, added)."""
        return bool(tied_inputs) and all(tied_inputs.values())
