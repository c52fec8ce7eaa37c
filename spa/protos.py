"""Small helpers on ONNX protos shared by the graph and the passes."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def constant_node_value(node: onnx.NodeProto) -> np.ndarray:
    attr = node.attribute[0]
    if attr.name == "value":
        return numpy_helper.to_array(attr.t)
    if attr.name in ("value_float", "value_int"):
        return np.array(helper.get_attribute_value(attr), dtype=np.float32 if attr.name == "value_float" else np.int64)
    if attr.name in ("value_floats", "value_ints"):
        return np.array(helper.get_attribute_value(attr), dtype=np.float32 if attr.name == "value_floats" else np.int64)
    raise ValueError(f"Constant node {node.name!r} holds a {attr.name}, which SPA does not read")


def outer_scope_names(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies) read from the enclosing graph."""
    names: set[str] = set()
    for attr in node.attribute:
        for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
            defined = {i.name for i in sub.input} | {t.name for t in sub.initializer}
            for inner in sub.node:
                defined.update(inner.output)
            for inner in sub.node:
                names.update(n for n in inner.input if n and n not in defined)
                names.update(n for n in outer_scope_names(inner) if n not in defined)
            names.update(o.name for o in sub.output if o.name not in defined)
    return names


def node_reads(node: onnx.NodeProto) -> list[str]:
    """Every tensor a node reads: its inputs and what its subgraphs take from the enclosing graph."""
    return [n for n in node.input if n] + sorted(outer_scope_names(node))


def still_read(initializers, nodes_before, nodes_after, graph: onnx.GraphProto) -> list:
    """The initializers to keep once a pass replaced `nodes_before` by `nodes_after`: those read
    before and read no more (weights of folded arithmetic, the source of a pruned Identity copy)
    go; unread ones the user had, and graph inputs or outputs, stay."""
    read_before = {n for node in nodes_before for n in node_reads(node)}
    read_now = {n for node in nodes_after for n in node_reads(node)}
    read_now |= {v.name for v in graph.input} | {v.name for v in graph.output}
    return [t for t in initializers if t.name in read_now or t.name not in read_before]


# Protobuf cannot serialize a message over 2 GB; past this size a model keeps its weights outside.
SERIALIZABLE_BYTES = 1_800_000_000


def model_bytes(model: onnx.ModelProto) -> int:
    """The model's serialized size. protobuf's ByteSize wraps around past 2 GB, so a model whose
    initializers alone come near that is measured by its tensors' sizes instead."""
    tensors = sum(int(np.prod(t.dims)) * _itemsize(t.data_type) for t in model.graph.initializer)
    return tensors if tensors > SERIALIZABLE_BYTES else model.ByteSize()


def _itemsize(data_type: int) -> int:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return 1
