"""Removal structures: sub-graphs whose only way out is one input of a residual Add.

Erasing such a branch (one that holds weights) equals its output becoming zero, so the Add
reads its other operand alone.
A branch into a Mul (squeeze-excitation: x * sigmoid(0) is not x) or a Concat is no structure:
only an Add join qualifies, and only when its other operand already has the Add's output shape
(otherwise dropping the branch would change what the other operand broadcasts to).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..graph import Graph
from ..metrics import _INDEX_TYPES, _numel, node_flops  # the counting rules of spa.metrics
from ..protos import node_reads


@dataclass
class Structure:
    id: int
    kind: str  # "residual branch", "attention" or "mlp" (a best-effort label)
    join: int  # index of the Add node
    output: str  # the tensor the structure contributes at its join
    other: str  # the Add's other operand, which replaces the Add's output once erased
    nodes: frozenset[int]  # the structure's operators, the join excluded
    params: int = 0
    flops: int = 0
    parent: int | None = None  # the innermost structure whose nodes contain this one's join

    @property
    def removed(self) -> frozenset[int]:
        """The operators erasing it removes: its nodes and the join."""
        return self.nodes | {self.join}

    def to_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "output": self.output, "nodes": len(self.nodes),
                "params": self.params, "flops": self.flops, "parent": self.parent}


def find_structures(graph: Graph) -> list[Structure]:
    """Every removal structure of the graph, in topological order of their joins, with parents."""
    found = []
    for index in graph.topological_order():
        node = graph.nodes[index]
        if node.op_type != "Add" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
            continue
        for position in (0, 1):
            branch = _branch(graph, index, position)
            params = _params(graph, branch) if branch is not None else 0
            if params:  # a branch without weights (the halves of a rotary embedding) is no layer to erase
                output, other = node.input[position], node.input[1 - position]
                found.append(Structure(len(found), _kind(graph, branch), index, output, other, branch,
                                       params, sum(node_flops(graph, i) for i in branch)))
    for s in found:
        containing = [o for o in found if o is not s and s.join in o.nodes]
        if containing:
            s.parent = min(containing, key=lambda o: len(o.nodes)).id
    return found


def _branch(graph: Graph, join: int, position: int) -> frozenset[int] | None:
    """The nodes whose only way out is input `position` of the Add `join`, or None when that
    input is no removal structure."""
    node = graph.nodes[join]
    output, other = node.input[position], node.input[1 - position]
    tensor = graph.tensors[output]
    if (output == other or tensor.producer is None or tensor.consumers != [join] or output in graph.outputs
            or graph.is_constant_derived(output) or graph.is_constant_derived(other)):
        return None  # a bias, or a branch read elsewhere too
    shape, joined = graph.shape(other), graph.shape(node.output[0])
    if shape is None or shape != joined or None in shape:
        return None  # the other operand would broadcast differently alone
    branch = {tensor.producer}
    frontier = [tensor.producer]
    # Grow backwards over producers that feed nothing but the branch. A refused producer is looked at
    # again whenever another of its consumers joins, so this reaches the fixed point.
    while frontier:
        for name in node_reads(graph.nodes[frontier.pop()]):
            producer = graph.tensors[name].producer
            if producer is None or producer in branch:
                continue
            outputs = [o for o in graph.nodes[producer].output if o]
            if all(o not in graph.outputs and set(graph.tensors[o].consumers) <= branch for o in outputs):
                branch.add(producer)
                frontier.append(producer)
    return frozenset(branch)


def _kind(graph: Graph, branch: frozenset[int]) -> str:
    ops = {graph.nodes[i].op_type for i in branch}
    if "Softmax" in ops and "MatMul" in ops:
        return "attention"
    if ops & {"MatMul", "Gemm"} and not ops & {"Conv", "ConvTranspose"}:
        return "mlp"
    return "residual branch"


def _params(graph: Graph, branch: frozenset[int]) -> int:
    """Elements of the weights only the branch reads (they go with it)."""
    total = 0
    for name in graph.params():
        t = graph.tensors[name]
        if name in graph.copies or t.dtype in _INDEX_TYPES or t.shape is None or not t.consumers:
            continue
        if set(t.consumers) <= branch and name not in graph.outputs:
            total += _numel(t.shape)
    return total
