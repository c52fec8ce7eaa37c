"""Counting: parameters, multiply-accumulates (reported as FLOPs), file size and latency.

FLOPs are counted as multiply-accumulates of the operators that carry nearly all the compute
(Conv, ConvTranspose, Gemm, MatMul, Einsum), at batch size 1 (symbolic dims count as 1).
"""
from __future__ import annotations

import numpy as np
import onnx

from .graph import Graph
from .protos import model_bytes
from .rules.base import NodeView
from .rules.linear import einsum_operands

_INDEX_TYPES = {onnx.TensorProto.INT32, onnx.TensorProto.INT64, onnx.TensorProto.BOOL}


def count_params(graph: Graph) -> int:
    """Elements of every weight: initializers and Constant tensors, not integer shapes or indices."""
    total = 0
    for name in graph.params():
        if name in graph.copies:
            continue  # a copy shares the storage of its source
        t = graph.tensors[name]
        if t.dtype in _INDEX_TYPES or t.shape is None:
            continue
        total += int(np.prod(t.shape))
    return total


def _numel(shape) -> int:
    return int(np.prod([d if isinstance(d, int) else 1 for d in shape])) if shape is not None else 0


def count_flops(graph: Graph) -> int:
    """Multiply-accumulates of one inference at batch size 1."""
    return sum(node_flops(graph, index) for index in range(len(graph.nodes)))


def node_flops(graph: Graph, index: int) -> int:
    """Multiply-accumulates of one operator at batch size 1 (0 for operators not counted, or
    whose shapes inference could not give). `graph` may be a view with other shapes (its `shape`)."""
    node = graph.nodes[index]
    op = node.op_type
    shape = graph.shape
    try:
        if op == "Conv":
            w = shape(node.input[1])
            return _numel(shape(node.output[0])) * _numel(w[1:])
        if op == "ConvTranspose":
            w = shape(node.input[1])
            return _numel(shape(node.input[0])) * _numel(w[1:])
        if op in ("Gemm", "MatMul"):
            a = shape(node.input[0])
            transposed = op == "Gemm" and any(x.name == "transA" and x.i for x in node.attribute)
            k = a[0] if transposed else a[-1]
            return _numel(shape(node.output[0])) * (k if isinstance(k, int) else 1)
        if op == "Einsum":
            sizes = {}
            for name, letters in einsum_operands(NodeView(graph, index)):
                for letter, d in zip(letters, shape(name)):
                    sizes[letter] = d if isinstance(d, int) else 1
            return int(np.prod(list(sizes.values())))
    except (TypeError, IndexError):
        pass  # a shape inference could not give: the operator is not counted
    return 0


def file_size(model: onnx.ModelProto) -> int:
    return model_bytes(model)
