"""Recurrent layers: LSTM, GRU and RNN. One hidden unit is one prunable channel.

Inputs X, W, R, B, sequence_lens, initial_h (and initial_c, P for LSTM); outputs Y, Y_h (and
Y_c). With H = hidden_size and `gates` gates (LSTM 4: i o f c; GRU 3: z r h; RNN 1), W is
[num_dir, gates*H, in], R [num_dir, gates*H, H], B [num_dir, 2*gates*H] (input and recurrent
biases), P [num_dir, 3H] (LSTM peepholes i o f); the states are [num_dir, batch, H] and Y is
[seq, num_dir, batch, H], or with layout 1 [batch, num_dir, H] and [batch, seq, num_dir, H].

What a hidden unit j owns: row g*H + j of W and R for every gate g, entry g*H + j of every bias
block and peephole block, column j of R, and element j of the states and outputs' hidden axes
(the last axis of each). A bidirectional layer's forward and reverse unit j go together: they
share those axes, the direction being an axis of its own. Element e of any of these axes belongs
to unit e % H, so the first element of unit j on every axis is j itself.

Why removing unit j is exact once its slices are zero: with its rows of W and R zero, no input
reaches unit j's gates; with its column of R zero, no other unit sees it. Only unit j's own
outputs remain, and they are zero only if its cell starts at zero and the activations keep 0 at 0
(`zero_output`); otherwise they are a constant that a downstream sum would miss.

An initial state that is zero at run time without being a parameter (PyTorch exports the default
h0 and c0 as a ConstantOfShape over the batch size, sliced per layer) is the same as no state: it
is not tied to the units, and is dropped from the node when they shrink.

The input features (the last axis of X) tie to W's last axis and are summed over by the gates:
the producer's channels (a Conv's channels read as a sequence, a previous layer's hidden units)
prune through them. The sequence and direction axes cannot shrink; the batch passes through.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import numpy_helper

from . import register
from .base import Block, Link, NodeView, Rule, Summed, same

X, W, R, B, SEQUENCE_LENS, INITIAL_H, INITIAL_C, P = range(8)

# Activations f with f(0) == 0 whatever their alpha and beta (ThresholdedRelu is x above alpha
# and 0 below it: 0 at 0 either way). Affine (alpha * x + beta) joins them when no beta is set.
ZERO_KEEPING = {"tanh", "relu", "leakyrelu", "elu", "softsign", "scaledtanh", "thresholdedrelu"}


@dataclass(frozen=True)
class Cell:
    """What one hidden unit of an operator owns, and what keeps its output at zero."""

    gates: int  # rows of W and R per unit (and bias entries per bias block: 2 * gates blocks)
    states: tuple[int, ...]  # input positions of the initial states
    outputs: int  # Y, Y_h (and Y_c)
    peephole: bool  # input P: 3 blocks of H
    activations: tuple[str, ...]  # the default activations of one direction
    must_keep_zero: tuple[int, ...]  # which of them must map 0 to 0 for a zeroed unit to stay zero

    def hidden_blocks(self, view: NodeView) -> dict[tuple[str, int], int]:
        """Every (tensor, axis) that runs over hidden units, with how many blocks of H it holds."""
        blocks = {(view.input(W), 1): self.gates, (view.input(R), 1): self.gates, (view.input(R), 2): 1}
        if view.input(B):
            blocks[(view.input(B), 1)] = 2 * self.gates
        if self.peephole and view.input(P):
            blocks[(view.input(P), 1)] = 3
        for position in self.tied_states(view):
            blocks[(view.input(position), 2)] = 1
        for position, name in enumerate(view.outputs[:self.outputs]):
            if name and (view.graph.shape(name) is not None or _read(view.graph, name)):
                blocks[(name, 3 if position == 0 else 2)] = 1  # an unread output of unknown shape does not matter
        return blocks

    def tied_states(self, view: NodeView) -> list[int]:
        """Positions of the initial states that belong to the units (all present ones but those
        known to be zero at run time, see `zero_at_run_time`)."""
        return [p for p in self.states if view.input(p) and not zero_at_run_time(view.graph, view.input(p))]

    def batch_axes(self, view: NodeView) -> list[tuple[str, int]]:
        """The batch axis of X, sequence_lens, the states and the outputs."""
        layout = view.attr("layout", 0)
        dims = [(view.input(X), 1 - layout)]
        dims += [(view.input(SEQUENCE_LENS), 0)] if view.input(SEQUENCE_LENS) else []
        dims += [(view.input(p), 1 - layout) for p in self.states if view.input(p)]
        outputs = view.outputs[:self.outputs]
        if outputs and outputs[0]:
            dims.append((outputs[0], 2 if layout == 0 else 0))
        dims += [(name, 1 - layout) for name in outputs[1:] if name]
        return dims

    def keeps_zero(self, view: NodeView) -> bool:
        """Whether the activations a zeroed unit's output goes through map 0 to 0 (in every direction)."""
        names = view.attr("activations")
        if names is None:
            names = self.activations
        names = [n.decode() if isinstance(n, bytes) else n for n in names]
        affine_ok = not any(view.attr("activation_beta") or ())
        per_direction = len(self.activations)
        return all(name.lower() in ZERO_KEEPING or (name.lower() == "affine" and affine_ok)
                   for k, name in enumerate(names) if k % per_direction in self.must_keep_zero)


def _read(graph, name: str) -> bool:
    return bool(graph.tensors[name].consumers) or name in graph.outputs


_ZERO_PRESERVING_MOVES = {"Expand", "Slice", "Identity", "Cast", "Reshape", "Squeeze", "Unsqueeze", "Flatten",
                          "Transpose", "Tile", "Gather"}


def zero_at_run_time(graph, name: str, depth: int = 8) -> bool:
    """Whether a tensor computed at run time is all zeros: a ConstantOfShape of 0, or zeros
    (a parameter or such a fill) moved, cut or repeated. Parameters themselves answer False: they
    are tied to the units and cut like any other."""
    tensor = graph.tensors.get(name)
    if graph.is_param(name) or tensor is None or tensor.producer is None or depth == 0:
        return False
    node = graph.nodes[tensor.producer]

    def zero(source: str) -> bool:
        if graph.is_param(source):
            value = graph.value(source)
            return value is not None and not np.any(value)
        return zero_at_run_time(graph, source, depth - 1)

    if node.op_type == "ConstantOfShape":
        fill = next((a.t for a in node.attribute if a.name == "value"), None)
        return fill is None or not np.any(numpy_helper.to_array(fill))
    if node.op_type in _ZERO_PRESERVING_MOVES:
        return zero(node.input[0])
    if node.op_type == "Concat":
        return all(zero(n) for n in node.input)
    return False


class Recurrent(Rule):
    """The rule of all three operators; each one differs only by its `Cell`."""

    cell: Cell

    def links(self, view: NodeView, tensor: str, axis: int):
        live = (tensor, axis)
        hidden = self.cell.hidden_blocks(view)
        if live in hidden:
            size = self.hidden_size(view)
            links = []
            for (name, a), blocks in hidden.items():
                if (name, a) == live and blocks == 1:
                    continue
                if view.size(name, a) != blocks * size:
                    raise ValueError(f"axis {a} of '{name}' is not {blocks} x hidden_size")
                elements = np.arange(blocks * size)
                links.append(Link(name, a, elements % size, elements))  # element e belongs to unit e % H
            return links
        features = [(view.input(X), 2), (view.input(W), 2)]
        if live in features:
            other = features[1] if live == features[0] else features[0]
            return [same(*other, view.size(tensor, axis)),
                    Summed(f"{view.op_type} '{view.name}' sums over the pruned input features", code="sum_over_nonzero")]
        batch = self.cell.batch_axes(view)
        if live in batch:
            return [same(n, a, view.size(tensor, axis)) for n, a in batch if (n, a) != live]
        return [Block(f"{view.op_type} '{view.name}' runs over axis {axis} of '{tensor}' (time or direction)", code="mixes_axis")]

    def hidden_size(self, view: NodeView) -> int:
        """H, read from R's shape (the attribute is optional; when given it must agree)."""
        size = view.size(view.input(R), 2)
        if view.attr("hidden_size", size) != size:
            raise ValueError("hidden_size disagrees with R's shape")
        return size

    def seeds(self, view: NodeView):
        """Hidden units are born here when the weights are known (R's columns: one per unit)."""
        graph = view.graph
        if graph.is_constant_derived(view.input(W)) and graph.is_constant_derived(view.input(R)):
            return [(view.input(R), 2)]
        return []

    def zero_output(self, view: NodeView, tensor: str, axis: int, tied_inputs) -> bool:
        """A unit's outputs are zero when its weights, biases and peepholes are, its initial
        states are (absent, zero at run time, or zeroed), and its activations keep 0 at 0. Then
        every gate sees 0: LSTM's cell c = f*c + i*g(0) stays 0 and h = o*h(c) is 0; GRU's
        h = (1-z)*g(0) + z*h stays 0; RNN's h = f(0) is 0. Otherwise a removed unit outputs a
        nonzero constant (or a decaying state), which a downstream sum would miss."""
        hidden = self.cell.hidden_blocks(view)
        if (tensor, axis) not in hidden:
            return False
        inputs = [dim for dim in hidden if dim[0] in view.inputs]
        return all(tied_inputs.get(dim, False) for dim in inputs) and self.cell.keeps_zero(view)

    def rewrite(self, view: NodeView, edit):
        r = view.input(R)
        if edit.changed(r, 2):
            edit.set_attr(view.index, "hidden_size", int(edit.new_size(r, 2)))
            tied = self.cell.tied_states(view)
            for position in self.cell.states:
                if view.input(position) and position not in tied:  # zero at run time: the same as none
                    edit.set_input(view.index, position, "")


@register("LSTM")
class LSTM(Recurrent):
    """Gates i, o, f, c; the cell state and its output go through g and h: those must keep 0."""

    cell = Cell(gates=4, states=(INITIAL_H, INITIAL_C), outputs=3, peephole=True,
                activations=("Sigmoid", "Tanh", "Tanh"), must_keep_zero=(1, 2))


@register("GRU")
class GRU(Recurrent):
    """Gates z, r, h (linear_before_reset changes neither the shapes nor the zero argument)."""

    cell = Cell(gates=3, states=(INITIAL_H,), outputs=2, peephole=False,
                activations=("Sigmoid", "Tanh"), must_keep_zero=(1,))


@register("RNN")
class RNN(Recurrent):
    """One gate: h = f(W x + R h + b)."""

    cell = Cell(gates=1, states=(INITIAL_H,), outputs=2, peephole=False,
                activations=("Tanh",), must_keep_zero=(0,))
