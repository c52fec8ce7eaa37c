"""Erasing structures from the model: their operators and joins go, the joins' readers read the
other operand, and the weights no operator reads any more go too."""
from __future__ import annotations

import onnx
from onnx import helper

from ..graph import Graph
from ..protos import node_reads, outer_scope_names, still_read
from .structures import Structure


def erase_structures(graph: Graph, structures: list[Structure]) -> onnx.ModelProto:
    """The model without `structures` (erasing an outer one erases what it contains)."""
    removed = set().union(*(s.removed for s in structures)) if structures else set()
    replaced = {graph.nodes[s.join].output[0]: s.other for s in structures}

    def resolve(name: str) -> str:  # a chain of erased joins reads the first one's other operand
        while name in replaced:
            name = replaced[name]
        return name

    # A join's output read from a subgraph or listed as a graph output keeps its name: an Identity.
    kept_names = set(graph.outputs) | {n for node in graph.nodes for n in outer_scope_names(node)}
    joins = {s.join for s in structures}
    nodes = []
    for index in graph.topological_order():
        node = graph.nodes[index]
        if index in removed:
            if index in joins and node.output[0] in kept_names:
                nodes.append(helper.make_node("Identity", [resolve(node.output[0])], [node.output[0]],
                                              name=f"{graph.node_name(index)}_erased"))
            continue
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        for position, name in enumerate(copy.input):
            if name in replaced:
                copy.input[position] = resolve(name)
        nodes.append(copy)
    model = onnx.ModelProto()
    model.CopyFrom(graph.model)
    g = model.graph
    gone = {o for i in removed for o in graph.nodes[i].output}
    initializers = still_read(list(g.initializer), graph.nodes, nodes, g)
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend(initializers)
    read = {n for node in nodes for n in node_reads(node)}
    value_info = [v for v in g.value_info if v.name not in gone or v.name in read]
    del g.value_info[:]
    g.value_info.extend(value_info)
    return model
