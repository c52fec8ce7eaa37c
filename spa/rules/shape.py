"""Operators that move, cut, join or re-view data: the index maps of channel coupling.

Reshape, Flatten, Squeeze and Unsqueeze are one rule: a row-major re-view of the same elements.
Each axis is a digit of the flat element index (a stride and a size). An axis on one side ties to
an axis on the other side when one digit is a function of the other:
- the same digit (same stride and size): index i to index i;
- the other axis contains the live one (a merge, e.g. Flatten of C x H x W): live index i to the
  block of merged positions whose digit is i;
- the live axis contains the other one (a split, e.g. C -> heads x head_dim): several digits qualify;
  the *carrier* is chosen by policy, outer (heads, the default) or inner (the within-head index),
  and a whole carrier slice goes at once; the other digits keep their size.
Anything else (digits that straddle each other) blocks. A channel shuffle (Reshape, Transpose,
Reshape) is thereby mapped exactly: each step is one of these cases.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import helper

from . import register
from ..fold import is_known
from ..symbols import Product
from .base import Block, Link, NodeView, Requires, Rule, Unknown, normalize_axis, positions, same, shifted

CARRIERS = ("outer", "inner")


# ----------------------------------------------------------------------------- re-views
def _strides(sizes: list[int]) -> list[int]:
    strides, acc = [], 1
    for size in reversed(sizes):
        strides.append(acc)
        acc *= size
    return strides[::-1]


def reshape_segments(a, b) -> list[tuple[list[int], list[int]]]:
    """The minimal runs of axes of `a` and `b` that hold the same elements in a row-major reshape:
    (a axes, b axes) pairs whose sizes multiply to the same product. Sizes may be symbolic
    ("64*batch"); size-1 axes belong to no run. Raises Unknown when the shapes do not factor."""
    sizes_a = [(i, Product.of(d)) for i, d in enumerate(a)]
    sizes_b = [(i, Product.of(d)) for i, d in enumerate(b)]
    if any(p is None for _, p in sizes_a + sizes_b):
        raise Unknown("the reshape involves dims of unknown size", code="unknown_size")
    one = Product(1)
    sizes_a = [(i, p) for i, p in sizes_a if p != one]
    sizes_b = [(i, p) for i, p in sizes_b if p != one]
    runs, i, j = [], 0, 0
    while i < len(sizes_a) and j < len(sizes_b):
        run_a, run_b = [sizes_a[i][0]], [sizes_b[j][0]]
        total_a, total_b = sizes_a[i][1], sizes_b[j][1]
        i, j = i + 1, j + 1
        while total_a != total_b:  # grow the smaller side until both hold the same elements
            if _smaller(total_a, total_b) and i < len(sizes_a):
                run_a.append(sizes_a[i][0])
                total_a, i = total_a * sizes_a[i][1], i + 1
            elif _smaller(total_b, total_a) and j < len(sizes_b):
                run_b.append(sizes_b[j][0])
                total_b, j = total_b * sizes_b[j][1], j + 1
            else:
                raise Unknown("the reshape mixes the pruned axis with dims of unknown size", code="reshape_mixes_axes")
        runs.append((run_a, run_b))
    if i < len(sizes_a) or j < len(sizes_b):
        raise Unknown("the reshape's input and output sizes disagree", code="shapes_disagree")
    return runs


def _smaller(a: Product, b: Product) -> bool:
    """a holds fewer elements than b for every value of the symbols."""
    common = Counter(a.symbols) & Counter(b.symbols)
    if common != Counter(a.symbols):
        return False  # a has a symbol b lacks: not comparable
    return a.coefficient < b.coefficient or Counter(b.symbols) != common


def reshape_ties(in_shape, out_shape, axis: int, live_is_input: bool, carrier: str, is_live=lambda axis: False,
                 live_digit: tuple[int, int] | None = None, taken_apart=lambda axis: False,
                 merged_digits: set[tuple[int, int]] = frozenset(), assembled_digits: set[tuple[int, int]] = frozenset()):
    """(other_axis, src, dst, digit) tying the live axis to the other side of a row-major reshape.

    When the live axis splits into several digits, one already live on the other side is taken
    (a shuffle seen from its far end), else the digit that was merged into the live axis just
    before (a Flatten undone), else the carrier policy chooses among those not taken apart right
    after (a fused q/k/v axis unbound into q, k and v is not the heads) nor numbering the pieces
    of a Concat just before (a channel shuffle's branches). An axis of symbolic
    size ("4*batch": a batch merged with heads) ties by its prunable digit (stride, size), which
    must sit in the static tail of the merged axes, below every symbolic one. Returns [] when the
    live axis has no partner (it is size 1), and raises Unknown when the live axis lies among dims
    of unknown size or whose digits straddle each other.
    """
    live, other = (list(in_shape), list(out_shape)) if live_is_input else (list(out_shape), list(in_shape))
    if live[axis] == 1:
        return []
    live_axes, other_axes = next((la, lb) for la, lb in reshape_segments(live, other) if axis in la)
    if len(live_axes) == len(other_axes) == 1:  # the same axis on both sides
        size = live_digit[1] if live_digit else live[axis]
        return [(other_axes[0], np.arange(size), np.arange(size), live_digit)]
    live_tail, other_tail = _static_tail(live, live_axes), _static_tail(other, other_axes)
    if live_digit is not None:  # the live axis is symbolic: find its digit in the other side's static tail
        stride, size = live_digit
        if len(live_axes) == 1 and other_tail is not None:
            match = [a for a, s, n in other_tail if (s, n) == (stride, size)]
            if match:
                return [(match[0], np.arange(size), np.arange(size), None)]
        raise Unknown("the reshape mixes the pruned axis with dims of unknown size", code="reshape_mixes_axes")
    if not all(isinstance(other[a], int) for a in other_axes) or not all(isinstance(live[a], int) for a in live_axes):
        # a static axis merged below a symbolic one (heads folded into the batch): a digit of it
        stride = next((s for a, s, n in live_tail or () if a == axis), None)
        if stride is not None and len(other_axes) == 1:
            size = live[axis]
            return [(other_axes[0], np.arange(size), np.arange(size), (stride, size))]
        raise Unknown("the reshape mixes the pruned axis with dims of unknown size", code="reshape_mixes_axes")
    return [(j, src, dst, None) for j, src, dst in
            _digit_ties(live, other, live_axes, other_axes, axis, carrier, is_live, taken_apart, merged_digits,
                        assembled_digits)]


def _taken_apart(graph, tensor: str, axis: int, depth: int = 6) -> bool:
    """Whether the axis is cut into its single indices right after (looking through moves of
    axes): split into pieces of one, sliced or gathered one index at a time, as a fused q/k/v axis
    is unbound into q, k and v."""
    shape = graph.shape(tensor) or ()
    rank = len(shape)
    for index in graph.tensors[tensor].consumers if depth else ():
        node = graph.nodes[index]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        along = normalize_axis(attrs.get("axis", 0), max(rank, 1))
        if node.op_type == "Split" and along == axis:
            sizes = graph.value(node.input[1]) if len(node.input) > 1 and node.input[1] else None
            if (sizes is not None and np.all(sizes == 1)) or (sizes is None and len(node.output) == shape[axis]):
                return True
        if node.op_type == "Gather" and along == axis and graph.value(node.input[1]) is not None \
                and graph.value(node.input[1]).ndim == 0:
            return True
        if node.op_type == "Slice" and all(graph.value(n) is not None for n in node.input[1:] if n):
            starts, ends = graph.value(node.input[1]), graph.value(node.input[2])
            axes = graph.value(node.input[3]) if len(node.input) > 3 and node.input[3] else range(len(starts))
            axes = [normalize_axis(int(a), rank) for a in axes]
            if axis in axes and isinstance(shape[axis], int):
                i = axes.index(axis)
                start, end = (min(max(int(v) + shape[axis] if v < 0 else int(v), 0), shape[axis]) for v in (starts[i], ends[i]))
                if end - start == 1:
                    return True
        if node.op_type == "Transpose" and _taken_apart(graph, node.output[0], list(attrs["perm"]).index(axis), depth - 1):
            return True
        if node.op_type in ("Identity", "Cast") and _taken_apart(graph, node.output[0], axis, depth - 1):
            return True
        if node.op_type in ("Unsqueeze", "Squeeze", "Reshape", "Flatten") and graph.shape(node.output[0]):
            try:  # a re-view that keeps the axis whole (torch's unbind adds and drops unit axes)
                runs = reshape_segments(shape, graph.shape(node.output[0]))
            except Unknown:
                continue
            moved = [out for run, out in runs if run == [axis] and len(out) == 1]
            if moved and _taken_apart(graph, node.output[0], moved[0][0], depth - 1):
                return True
    return False


def _merged_digits(view: NodeView, tensor: str, axis: int) -> set[tuple[int, int]]:
    """When `tensor` comes from a re-view that merged live axes into `axis` (a Flatten), the
    (stride, size) of those axes within it: reshaping back, the same digit carries the channels."""
    graph = view.graph
    producer = graph.tensors[tensor].producer
    if producer is None or graph.nodes[producer].op_type not in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
        return set()
    source = graph.nodes[producer].input[0]
    try:
        runs = reshape_segments(view.shape(source), view.shape(tensor))
    except Unknown:
        return set()
    for source_axes, axes in runs:
        if axes == [axis] and all(isinstance(view.shape(source)[a], int) for a in source_axes):
            sizes = [view.shape(source)[a] for a in source_axes]
            return {(s, n) for a, s, n in zip(source_axes, _strides(sizes), sizes) if view.is_live(source, a)}
    return set()


def _assembled_digits(view: NodeView, tensor: str, axis: int) -> set[tuple[int, int]]:
    """When `tensor` is a Concat of k equal pieces along `axis` (a channel shuffle's branches), the
    digit (stride, size) = (piece, k) that numbers the pieces: it cannot carry prunable channels
    (each of its units is a whole branch)."""
    producer = view.graph.tensors[tensor].producer
    if producer is None or view.graph.nodes[producer].op_type != "Concat":
        return set()
    node = view.graph.nodes[producer]
    rank = len(view.shape(tensor))
    along = normalize_axis(helper.get_attribute_value(next(a for a in node.attribute if a.name == "axis")), rank)
    pieces = {view.shape(name)[axis] for name in node.input}
    if along != axis or len(pieces) != 1 or not isinstance(next(iter(pieces)), int):
        return set()
    return {(pieces.pop(), len(node.input))}


def _static_tail(shape, axes) -> list[tuple[int, int, int]] | None:
    """(axis, stride, size) of the static axes below the last symbolic one of a run; None if a
    symbolic axis sits below a static one (no digit can be read off then)."""
    symbolic = [i for i, a in enumerate(axes) if not isinstance(shape[a], int)]
    tail = axes[symbolic[-1] + 1:] if symbolic else axes
    if symbolic and symbolic != list(range(len(symbolic))):
        return None
    sizes = [shape[a] for a in tail]
    return list(zip(tail, _strides(sizes), sizes))


def _digit_ties(live, other, live_axes, other_axes, axis, carrier, is_live, taken_apart, merged_digits,
                assembled_digits):
    """Ties inside a run of static axes: the same digit, a merge or a split (see the module doc)."""
    live_sizes, other_sizes = [live[a] for a in live_axes], [other[a] for a in other_axes]
    size = live[axis]
    live_stride = _strides(live_sizes)[live_axes.index(axis)]
    live_top = live_stride * size
    identical, containers, insides = [], [], []
    for j, s, n in zip(other_axes, _strides(other_sizes), other_sizes):
        if s == live_stride and n == size:
            identical.append((j, s, n))
        elif s <= live_stride and live_top <= s * n and live_stride % s == 0:
            containers.append((j, s, n))
        elif live_stride <= s and s * n <= live_top and s % live_stride == 0:
            insides.append((j, s, n))
    live_idx = np.arange(size)
    if identical:
        return [(identical[0][0], live_idx, live_idx)]
    if containers:  # the other axis merges the live one with others: tie each of its positions to its live digit
        j, s, n = containers[0]
        positions_ = np.arange(n)
        return [(j, (positions_ * s // live_stride) % size, positions_)]
    if insides:  # the live axis splits into several digits: one of them carries the channels
        digit = lambda k: (k[1] // live_stride, k[2])  # noqa: E731 (stride within the live axis, size)
        candidates = ([k for k in insides if is_live(k[0])] or [k for k in insides if digit(k) in merged_digits]
                      or [k for k in insides if not taken_apart(k[0]) and digit(k) not in assembled_digits]
                      or [k for k in insides if not taken_apart(k[0])] or insides)
        j, s, n = (max if carrier == "outer" else min)(candidates, key=lambda k: k[1])
        return [(j, live_idx, (live_idx * live_stride // s) % n)]
    raise Unknown("the reshape mixes the pruned axis with others", code="reshape_mixes_axes")


def shape_sources(graph, name: str) -> list | None:
    """Where each element of a 1-D shape tensor comes from.

    Entries are ("const", value) for a value known before the model runs, ("dim", tensor, axis) for
    a size read at run time from a tensor's shape, or None for anything computed otherwise.
    Returns None when even the length is unknown.
    """
    structural = _structural_sources(graph, name)
    partial = graph.partial_values.get(name)
    if partial is None or partial.ndim > 1 or (structural is not None and len(structural) != partial.size):
        return structural
    entries = structural or [None] * partial.size
    # A size read at run time stays a read (it follows pruning by itself); an unknown entry that
    # the partial evaluation knows becomes a constant.
    return [("const", int(v)) if is_known(v) and e is None else e for v, e in zip(partial.reshape(-1), entries)]


def _structural_sources(graph, name: str) -> list | None:
    value = graph.value(name)
    if value is not None:
        return [("const", int(v)) for v in value.reshape(-1)]
    tensor = graph.tensors.get(name)
    if tensor is None or tensor.producer is None:
        return None
    node = graph.nodes[tensor.producer]
    shape = tensor.shape
    length = shape[0] if shape and len(shape) == 1 and isinstance(shape[0], int) else (1 if shape == () else None)
    if node.op_type == "Concat":
        parts = [shape_sources(graph, n) for n in node.input]
        if all(p is not None for p in parts):
            return [e for p in parts for e in p]
    elif node.op_type in ("Cast", "Identity", "Unsqueeze", "Squeeze") and node.input:
        return shape_sources(graph, node.input[0])
    elif node.op_type == "Shape":
        x = node.input[0]
        rank = len(graph.shape(x)) if graph.shape(x) is not None else None
        if rank is not None:
            attrs = {a.name: a.i for a in node.attribute}
            start = normalize_axis(attrs.get("start", 0), rank)
            end = normalize_axis(attrs.get("end", rank), rank) if "end" in attrs else rank
            return [("dim", x, a) for a in range(max(0, start), min(rank, end))]
    elif node.op_type == "Reshape" and graph.value(node.input[1]) is not None and graph.value(node.input[1]).size == 1:
        return shape_sources(graph, node.input[0])  # a shape vector re-viewed as itself
    elif node.op_type == "Where" and _known_condition(graph, node.input[0]) is not None:
        choice = _known_condition(graph, node.input[0])
        branches = [shape_sources(graph, n) for n in node.input[1:]]
        if all(b is not None for b in branches):
            branches = [b * len(choice) if len(b) == 1 else b for b in branches]
            return [branches[0][i] if c is True else branches[1][i] if c is False else None for i, c in enumerate(choice)]
    elif node.op_type in ("Max", "Min") and len(node.input) == 2:
        parts = [shape_sources(graph, n) for n in node.input]
        if all(p is not None and None not in p for p in parts) and len(parts[0]) == len(parts[1]):
            return [a if a == b else (node.op_type.lower(), (a, b)) for a, b in zip(*parts)]
    elif node.op_type == "ReduceProd":
        parts = shape_sources(graph, node.input[0])
        if parts is not None and None not in parts and len(node.input) < 2 and length in (1, None):
            return [("prod", tuple(parts))]  # a product of sizes, e.g. a batch merged with heads
    elif node.op_type == "Gather" and graph.value(node.input[1]) is not None:
        data = shape_sources(graph, node.input[0])
        if data is not None:
            return [data[int(i)] for i in graph.value(node.input[1]).reshape(-1)]
    elif node.op_type == "Slice" and all(graph.value(n) is not None for n in node.input[1:] if n):
        data = shape_sources(graph, node.input[0])
        bounds = [graph.value(n) if n else None for n in node.input[1:]]
        steps = bounds[3] if len(bounds) > 3 and bounds[3] is not None else [1]
        if data is not None:
            return data[int(bounds[0][0]):int(bounds[1][0]):int(steps[0])]
    return None if length is None else [None] * length


def _known_condition(graph, name: str) -> list | None:
    """A boolean vector's entries where known ahead (True/False), else None per entry."""
    value = graph.value(name)
    if value is not None:
        return [bool(v) for v in value.reshape(-1)]
    partial = graph.partial_values.get(name)
    return None if partial is None else [v if isinstance(v, (bool, np.bool_)) else None for v in partial.reshape(-1)]


def check_shape_entry(view: NodeView, shape_input: int, position: int, identity_input_axis: int | None,
                      merged_input_axis: int | None = None, out_axis: int | None = None):
    """The verdicts (Requires) under which the shape entry at `position` follows a change of the
    output axis `out_axis` (default: the same number); Unknown if it cannot follow.

    An entry follows by itself when it is -1, or copies the size of the input axis that maps
    straight to this one (`identity_input_axis`), or multiplies sizes read from the input among
    which the axis merged here (`merged_input_axis`). A constant is rewritten. A size read from
    another tensor, or the larger or smaller of such sizes, follows if those axes shrink with this
    one: that is required, and checked once every tie is known."""
    out_axis = position if out_axis is None else out_axis
    name = view.input(shape_input)
    sources = shape_sources(view.graph, name)
    if sources is None or position >= len(sources):
        raise Unknown(f"the shape input of {view.op_type} '{view.name}' is computed at run time", code="runtime_shape")
    entry = sources[position]
    x = view.inputs[0]
    follows = entry == ("const", -1) or identity_input_axis is not None and (
        entry == ("dim", x, identity_input_axis) or (entry == ("const", 0) and identity_input_axis == position)
    ) or merged_input_axis is not None and entry is not None and entry[0] == "prod" and (
        ("dim", x, merged_input_axis) in entry[1] and all(p[0] == "const" or p[1] == x for p in entry[1]))
    if follows:
        return []  # the entry takes the new size by itself
    if entry is not None and entry[0] == "const" and entry[1] != 0 and _rewritable(view.graph, name):
        return []
    reads = [entry] if entry is not None and entry[0] == "dim" else (
        list(entry[1]) if entry is not None and entry[0] in ("max", "min") else None)
    if reads and all(p[0] == "dim" for p in reads):
        return [Requires(view.outputs[0], out_axis, [(p[1], p[2]) for p in reads],
                         f"entry {position} of the shape of {view.op_type} '{view.name}' reads a size pruned apart",
                         code="runtime_shape")]
    raise Unknown(f"entry {position} of the shape of {view.op_type} '{view.name}' is computed at run time",
                  code="runtime_shape")


def _rebuildable(entry) -> bool:
    """An entry SPA can compute again: a constant, a size read at run time, or their product."""
    return entry is not None and (entry[0] in ("const", "dim") or (entry[0] == "prod" and all(_rebuildable(p) for p in entry[1])))


def _rewritable(graph, name: str) -> bool:
    """Whether rewrite_shape_input can rebuild this shape: every entry is known or read at run time."""
    sources = shape_sources(graph, name)
    return sources is not None and all(_rebuildable(e) for e in sources)


def rewrite_shape_input(view: NodeView, edit, shape_input: int, new_entries: dict[int, int]):
    """Give the node a shape input whose entries `new_entries` (position -> value) are replaced.

    A shape known in full becomes a new constant. A shape computed at run time is built anew from
    what each entry is (constants, sizes read with Shape, their products), with the changed entries
    as constants: however the exporter computed it, the new one reads the same sizes. Shared
    tensors are never modified in place.
    """
    graph = view.graph
    sources = shape_sources(graph, view.input(shape_input))
    # Entries that read a size at run time, or are -1 or 0, follow the new sizes by themselves.
    new_entries = {p: v for p, v in new_entries.items() if sources[p] is not None and sources[p][0] == "const"
                   and sources[p][1] not in (-1, 0)}
    if not new_entries:
        return
    if all(e[0] == "const" for e in sources):
        values = np.array([e[1] for e in sources], dtype=np.int64)
        values[list(new_entries)] = list(new_entries.values())
        edit.set_input_value(view.index, shape_input, values)
        return
    pieces = [_entry_tensor(view, edit, ("const", new_entries[p]) if p in new_entries else e) for p, e in enumerate(sources)]
    edit.set_input(view.index, shape_input, edit.add_node(view.index, "Concat", pieces, axis=0))


def _entry_tensor(view: NodeView, edit, entry) -> str:
    """A new 1-element int64 tensor computing one shape entry."""
    if entry[0] == "const":
        return edit.add_constant(np.array([entry[1]], dtype=np.int64), hint=f"{view.name}_size")
    if entry[0] == "dim":
        if view.opset >= 15:
            return edit.add_node(view.index, "Shape", [entry[1]], start=entry[2], end=entry[2] + 1)
        shape = edit.add_node(view.index, "Shape", [entry[1]])
        return edit.add_node(view.index, "Gather", [shape, edit.add_constant(np.array([entry[2]]), hint=f"{view.name}_axis")])
    parts = [_entry_tensor(view, edit, p) for p in entry[1]]
    return edit.add_node(view.index, "ReduceProd", [edit.add_node(view.index, "Concat", parts, axis=0)], keepdims=1)


@register("Reshape", "Flatten", "Squeeze", "Unsqueeze")
class Reshape(Rule):
    def links(self, view: NodeView, tensor: str, axis: int):
        x, y = view.inputs[0], view.outputs[0]
        if tensor not in (x, y):
            return []
        live_is_input = tensor == x
        other = y if live_is_input else x
        ties = reshape_ties(view.shape(x), view.shape(y), axis, live_is_input, view.carrier,
                            lambda a: view.is_live(other, a), view.digit_of(tensor, axis),
                            lambda a: _taken_apart(view.graph, other, a), _merged_digits(view, tensor, axis),
                            _assembled_digits(view, tensor, axis))
        verdicts = []
        for other_axis, src, dst, digit in ties:
            out_axis, in_axis = (other_axis, axis) if live_is_input else (axis, other_axis)
            if view.op_type == "Reshape":
                in_size, out_size = view.shape(x)[in_axis], view.shape(y)[out_axis]
                static = isinstance(in_size, int) and isinstance(out_size, int)
                identity = in_axis if static and in_size == out_size and len(src) == len(dst) else None
                merged = in_axis if not isinstance(out_size, int) else None
                verdicts += check_shape_entry(view, 1, out_axis, identity, merged)
            verdicts.append(Link(y if live_is_input else x, other_axis, src, dst, digit))
        if view.op_type == "Reshape" and live_is_input:
            verdicts += self.copied_sizes(view, axis, [t[0] for t in ties])
        return verdicts

    def copied_sizes(self, view: NodeView, axis: int, tied_out_axes: list[int]):
        """A 0 in the shape copies the input's size at that position: it must land on the tied axis."""
        sources = shape_sources(view.graph, view.input(1)) or []
        if axis < len(sources) and sources[axis] == ("const", 0) and axis not in tied_out_axes:
            return [Block(f"Reshape '{view.name}' copies the size of the pruned axis to another axis",
                          code="reshape_mixes_axes")]
        return []

    def rewrite(self, view: NodeView, edit):
        if view.op_type != "Reshape":
            return
        y = view.outputs[0]
        changed = {a: edit.new_size(y, a) for a in range(len(view.shape(y))) if edit.changed(y, a)}
        if changed:
            rewrite_shape_input(view, edit, 1, changed)


@register("Transpose")
class Transpose(Rule):
    def links(self, view: NodeView, tensor: str, axis: int):
        x, y = view.inputs[0], view.outputs[0]
        perm = view.attr("perm") or list(range(view.rank(x)))[::-1]
        if tensor == x:
            return [same(y, list(perm).index(axis), view.size(x, axis))]
        return [same(x, perm[axis], view.size(y, axis))]


@register("Concat")
class Concat(Rule):
    def links(self, view: NodeView, tensor: str, axis: int):
        y = view.outputs[0]
        cat = normalize_axis(view.attr("axis"), view.rank(y))
        if axis != cat:
            size = view.size(tensor, axis)
            return [same(n, axis, size) for n in dict.fromkeys(view.inputs + [y]) if n and n != tensor]
        offsets = np.cumsum([0] + [view.size(n, cat) for n in view.inputs])
        in_pos, _ = positions(view, tensor)
        if in_pos:
            return [shifted(y, cat, view.size(tensor, cat), int(offsets[i])) for i in in_pos]
        return [Link(n, cat, offsets[i] + np.arange(view.size(n, cat)), np.arange(view.size(n, cat)))
                for i, n in enumerate(view.inputs)]


@register("Split")
class Split(Rule):
    def links(self, view: NodeView, tensor: str, axis: int):
        x = view.inputs[0]
        outputs = [o for o in view.outputs]
        cut = normalize_axis(view.attr("axis", 0), view.rank(x))
        if tensor != x and tensor not in outputs:
            return []
        if axis != cut:
            size = view.size(tensor, axis)
            return [same(n, axis, size) for n in [x] + outputs if n and n != tensor]
        sizes = [view.size(o, cut) if o else None for o in outputs]
        if None in sizes:
            raise Unknown(f"Split '{view.name}' has an unused output, so its sizes are unknown", code="unknown_size")
        starts = np.cumsum([0] + sizes)
        if tensor == x:
            return [Link(o, cut, starts[j] + np.arange(s), np.arange(s)) for j, (o, s) in enumerate(zip(outputs, sizes))]
        j = outputs.index(tensor)
        return [shifted(x, cut, sizes[j], int(starts[j]))]

    def rewrite(self, view: NodeView, edit):
        x = view.inputs[0]
        cut = normalize_axis(view.attr("axis", 0), view.rank(x))
        if not edit.changed(x, cut):
            return
        sizes = np.array([edit.new_size(o, cut) for o in view.outputs], dtype=np.int64)
        if view.opset < 13:
            edit.set_attr(view.index, "split", sizes.tolist())
        else:
            edit.remove_attr(view.index, "num_outputs")
            edit.set_input_value(view.index, 1, sizes)


@register("Slice")
class Slice(Rule):
    """A sliced axis ties input c to output c - start inside [start, end); steps other than 1 block."""

    def sliced(self, view: NodeView, axis: int, n: int | None = None):
        """(position in starts/ends, start, end, step) of the slice along `axis` (of size `n`, by
        default the axis's size), or None when the Slice leaves the axis whole. Only this axis's
        size is read: the other sliced axes may be symbolic (a batch sliced from 0 to the end)."""
        x = view.inputs[0]
        rank = view.rank(x)
        count = view.size(view.input(1), 0)
        axes = view.const(view.input(3), "the axes") if view.input(3) else np.arange(count)
        axes = [normalize_axis(int(a), rank) for a in axes]
        if axis not in axes:
            return None  # bounds on other axes do not matter here, even computed ones
        starts = view.const(view.input(1), "the starts")
        ends = view.const(view.input(2), "the ends")
        steps = view.const(view.input(4), "the steps") if view.input(4) else np.ones(len(starts), dtype=np.int64)
        i = axes.index(axis)
        n = view.size(x, axis) if n is None else n
        start, end = (int(np.clip(v + n if v < 0 else v, 0, n)) for v in (int(starts[i]), int(ends[i])))
        return i, start, max(end, start), int(steps[i])

    def links(self, view: NodeView, tensor: str, axis: int):
        x, y = view.inputs[0], view.outputs[0]
        if tensor not in (x, y):
            return []
        cut = self.sliced(view, axis)
        if cut is None:
            return [same(y if tensor == x else x, axis, view.size(tensor, axis))]
        _, start, end, step = cut
        if step != 1:
            return [Block(f"Slice '{view.name}' takes every {step}th element of axis {axis}", code="strided_slice")]
        if not isinstance(view.shape(x)[axis], int) and (start, end) != (0, view.size(x, axis)):
            # a digit of a symbolic axis (heads merged into the batch): a cut there is not a cut of the digit
            return [Block(f"Slice '{view.name}' cuts axis {axis} of symbolic size", code="unknown_size")]
        if tensor == x:
            return [Link(y, axis, start + np.arange(end - start), np.arange(end - start))]
        return [shifted(x, axis, end - start, start)]

    def rewrite(self, view: NodeView, edit):
        x, y = view.inputs[0], view.outputs[0]
        starts = view.const(view.input(1), "the starts").copy()
        ends = view.const(view.input(2), "the ends").copy()
        touched = False
        for axis in range(view.rank(x)):
            if not edit.changed(x, axis) or not isinstance(view.shape(x)[axis], int):
                # an axis that keeps its size keeps its bounds (it may be a symbolic batch), and a
                # pruned digit of a symbolic axis is sliced whole (see links)
                continue
            kept = edit.kept(x, axis)
            cut = self.sliced(view, axis, len(kept) + len(edit.removed[(x, axis)]))
            if cut is None:
                continue
            i, start, _, _ = cut
            new_start = int(np.searchsorted(kept, start))
            starts[i], ends[i] = new_start, new_start + edit.new_size(y, axis)
            touched = True
        if touched:
            edit.set_input_value(view.index, 1, starts)
            edit.set_input_value(view.index, 2, ends)


@register("Expand")
class Expand(Rule):
    """Y = X broadcast to `shape`. Full-size axes of X tie to Y; a broadcast axis of Y ties to
    nothing in X, but its shape entry is rewritten when Y's axis shrinks."""

    def links(self, view: NodeView, tensor: str, axis: int):
        x, y = view.inputs[0], view.outputs[0]
        if tensor not in (x, y):
            return []
        shift = view.rank(y) - view.rank(x)
        y_axis = axis + shift if tensor == x else axis
        x_axis = y_axis - shift
        full = x_axis >= 0 and view.size(x, x_axis) == view.size(y, y_axis)
        sources = shape_sources(view.graph, view.input(1))
        entry_pos = y_axis - (view.rank(y) - len(sources)) if sources is not None else -1
        requirements = []
        if entry_pos >= 0 and sources[entry_pos] != ("const", 1):
            requirements = check_shape_entry(view, 1, entry_pos, None, out_axis=y_axis)
        if not full:
            return requirements
        return [same(y if tensor == x else x, y_axis if tensor == x else x_axis, view.size(tensor, axis))] + requirements

    def rewrite(self, view: NodeView, edit):
        y = view.outputs[0]
        sources = shape_sources(view.graph, view.input(1))
        shift = view.rank(y) - len(sources)
        changed = {a - shift: edit.new_size(y, a) for a in range(view.rank(y)) if edit.changed(y, a) and a >= shift
                   and sources[a - shift] != ("const", 1)}
        if changed:
            rewrite_shape_input(view, edit, 1, changed)


@register("Tile")
class Tile(Rule):
    """Y axis k repeats X axis k: X index c ties to every copy c + j * n."""

    def links(self, view: NodeView, tensor: str, axis: int):
        x, y = view.inputs[0], view.outputs[0]
        if tensor not in (x, y):
            return []
        n = view.size(x, axis)
        copies = int(view.const(view.input(1), "the repeats")[axis])
        positions_ = np.arange(n * copies)
        if tensor == x:
            return [Link(y, axis, positions_ % n, positions_)]
        return [Link(x, axis, positions_, positions_ % n)]


@register("Gather")
class Gather(Rule):
    """Gathering along the live axis with constant indices ties each output position to the input
    index it reads, and the indices are remapped; an embedding table's columns seed a group."""

    def links(self, view: NodeView, tensor: str, axis: int):
        data, indices, y = view.inputs[0], view.inputs[1], view.outputs[0]
        along = normalize_axis(view.attr("axis", 0), view.rank(data))
        idx_rank = view.rank(indices)
        if tensor == indices:
            return [same(y, along + axis, view.size(indices, axis))]
        data_axis = axis if tensor == data else self.data_axis(axis, along, idx_rank)
        if data_axis is None:  # an output axis that runs over the indices
            if idx_rank != 1:
                return [Block(f"Gather '{view.name}' indexes with a {idx_rank}-D tensor", code="indexing")]
            picked = self.picked(view, along)
            return [Link(data, along, np.arange(len(picked)), picked)]
        if data_axis != along:
            y_axis = data_axis if data_axis < along else data_axis - 1 + idx_rank
            other, other_axis = (y, y_axis) if tensor == data else (data, data_axis)
            return [same(other, other_axis, view.size(tensor, axis))]
        picked = self.picked(view, along)
        if idx_rank == 0:
            return [Block(f"Gather '{view.name}' selects channel {int(picked[0])} alone", picked, code="indexing")]
        if idx_rank != 1:
            return [Block(f"Gather '{view.name}' indexes with a {idx_rank}-D tensor", code="indexing")]
        return [Link(y, along, picked, np.arange(len(picked)))]

    @staticmethod
    def data_axis(y_axis: int, along: int, idx_rank: int) -> int | None:
        if y_axis < along:
            return y_axis
        if y_axis >= along + idx_rank:
            return y_axis - idx_rank + 1
        return None

    def picked(self, view: NodeView, along: int) -> np.ndarray:
        n = view.size(view.inputs[0], along)
        picked = view.const(view.inputs[1], "the indices").reshape(-1).astype(np.int64)
        return np.where(picked < 0, picked + n, picked)

    def seeds(self, view: NodeView):
        data, indices, y = view.inputs[0], view.inputs[1], view.outputs[0]
        if view.attr("axis", 0) == 0 and view.graph.is_param(data) and not view.graph.is_constant_derived(indices):
            return [(y, view.rank(y) - 1)] if view.rank(data) == 2 else []
        return []

    def rewrite(self, view: NodeView, edit):
        data = view.inputs[0]
        along = normalize_axis(view.attr("axis", 0), view.rank(data))
        if not edit.changed(data, along) or view.graph.value(view.inputs[1]) is None:
            return
        kept = edit.kept(data, along)
        picked = self.picked(view, along)
        remaining = picked[np.isin(picked, kept)]
        new = np.searchsorted(kept, remaining).astype(view.graph.value(view.inputs[1]).dtype)
        edit.set_input_value(view.index, 1, new.reshape(-1) if view.rank(view.inputs[1]) == 1 else new.reshape(()))


class BlockRearrangement(Rule):
    """DepthToSpace and SpaceToDepth: each channel of the deep side is one of blocksize^2 copies
    of a channel of the shallow side; a shallow channel goes with all its copies."""

    def deep_to_shallow(self, view: NodeView, deep_channels: int) -> np.ndarray:
        raise NotImplementedError

    def links(self, view: NodeView, tensor: str, axis: int):
        x, y = view.inputs[0], view.outputs[0]
        if axis == 0:
            return [same(y if tensor == x else x, 0, view.size(tensor, 0))]
        if axis != 1:
            return [Block(f"{view.op_type} '{view.name}' moves data across axis {axis}", code="mixes_axis")]
        deep, shallow = (x, y) if view.op_type == "DepthToSpace" else (y, x)
        deep_idx = np.arange(view.size(deep, 1))
        shallow_idx = self.deep_to_shallow(view, len(deep_idx))
        if tensor == deep:
            return [Link(shallow, 1, deep_idx, shallow_idx)]
        return [Link(deep, 1, shallow_idx, deep_idx)]


@register("DepthToSpace")
class DepthToSpace(BlockRearrangement):
    def deep_to_shallow(self, view, deep_channels):
        block = view.attr("blocksize") ** 2
        c = np.arange(deep_channels)
        crd = view.attr("mode", b"DCR") in (b"CRD", "CRD")
        return c // block if crd else c % (deep_channels // block)


@register("SpaceToDepth")
class SpaceToDepth(BlockRearrangement):
    def deep_to_shallow(self, view, deep_channels):
        block = view.attr("blocksize") ** 2
        return np.arange(deep_channels) % (deep_channels // block)


# Operators that only move the elements of a shape vector around (or multiply them together).
_SHAPE_MOVES = ("Cast", "Concat", "Gather", "Identity", "Max", "Min", "ReduceProd", "Slice", "Squeeze", "Unsqueeze")


def _reads(entry, read) -> bool:
    return entry == read or (entry is not None and entry[0] in ("prod", "max", "min") and read in entry[1])


@register("Shape")
class Shape(Rule):
    """Reading a tensor's shape is harmless unless the size of the pruned axis is used at run time.
    It may be used by a Reshape or Expand whose output axis it sizes, if that axis is pruned along
    with it (required, and checked once every tie is known); anywhere else it blocks."""

    def links(self, view: NodeView, tensor: str, axis: int):
        graph, read = view.graph, ("dim", tensor, axis)
        blocked = [Block(f"the size of axis {axis} of '{tensor}' is read at run time by Shape '{view.name}'",
                         code="runtime_shape")]
        verdicts, pending, seen = [], [view.outputs[0]], set()
        while pending:
            name = pending.pop()
            if name in seen:
                continue
            seen.add(name)
            if name in graph.outputs:
                return blocked
            for index in graph.tensors[name].consumers:
                node = graph.nodes[index]
                if node.op_type in _SHAPE_MOVES:
                    pending.extend(o for o in node.output if o)
                    continue
                sources = shape_sources(graph, name)
                if sources is None or None in sources:
                    return blocked
                reading = [p for p, e in enumerate(sources) if _reads(e, read)]
                if not reading:
                    continue
                if node.op_type not in ("Reshape", "Expand") or node.input[1] != name:
                    return blocked
                out = node.output[0]
                shift = len(graph.shape(out)) - len(sources)
                for p in reading:
                    if not self.follows_itself(view, node, sources[p], p, tensor, axis):
                        verdicts.append(Requires(out, p + shift, [(tensor, axis)],
                                                 f"the size of axis {axis} of '{tensor}' is read at run time by Shape "
                                                 f"'{view.name}' for {node.op_type} '{graph.node_name(index)}', "
                                                 "which does not prune along", code="runtime_shape"))
        return verdicts

    def follows_itself(self, view: NodeView, node, entry, position: int, tensor: str, axis: int) -> bool:
        """A Reshape of the read tensor itself, whose output axis there is the read axis (or merges it)."""
        if node.op_type != "Reshape" or node.input[0] != tensor:
            return False
        ties = reshape_ties(view.shape(tensor), view.graph.shape(node.output[0]), axis, True, view.carrier)
        if entry == ("dim", tensor, axis):
            return any(t[0] == position and len(t[1]) == len(t[2]) == view.size(tensor, axis) for t in ties)
        return entry[0] == "prod" and any(t[0] == position and t[3] is not None for t in ties)


__all__ = ["CARRIERS"]
