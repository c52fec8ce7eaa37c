"""The rewriter: remove chosen channels from every member of their groups, then prove the result.

Parameter slices are deleted from initializers, Constant nodes and Identity copies; each operator
next to a changed dimension lets its rule fix attributes and constant inputs (Conv `group`, Split
sizes, Slice bounds, Reshape and Expand shapes, Gather indices, GroupNorm `num_groups`). Tensor
shapes recorded in the model are updated. The new model is then checked with onnx.checker, strict
shape inference and an onnxruntime session before anything is returned.
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import helper

from .errors import SpaError
from .graph import Graph, _check_model, _skeleton
from .protos import model_like, node_reads, still_read
from .rules import NodeView, Unknown, rule_for
from .symbols import Product


class RewriteError(SpaError):
    """An operator's rule cannot fix the operator for the removed channels (`node`: its index)."""

    def __init__(self, node: int, reason: str):
        super().__init__(reason)
        self.node = node


class Edit:
    """The removed indices per dimension, and what rules change on nodes while rewriting."""

    def __init__(self, graph: Graph, removed: dict[tuple[str, int], np.ndarray], carrier: str = "outer",
                 digits: dict | None = None):
        self.graph = graph
        self.carrier = carrier
        self.digits = digits or {}  # (tensor, axis) of symbolic size -> the (stride, size) digit pruned in it
        self.removed = {k: np.unique(v) for k, v in removed.items() if len(v)}
        self.nodes = [copy.deepcopy(n) for n in graph.nodes]
        self.inserted: dict[int, list[onnx.NodeProto]] = {}  # new nodes, placed before node i
        self.dropped: set[int] = set()
        self.new_initializers: dict[str, np.ndarray] = {}  # name -> value
        self._names = set(graph.tensors) | {n.name for n in graph.nodes}

    # ------------------------------------------------------------------ facts for rules
    def changed(self, tensor: str, axis: int) -> bool:
        return (tensor, axis % max(len(self.graph.shape(tensor) or ()), 1)) in self.removed

    def kept(self, tensor: str, axis: int) -> np.ndarray:
        return np.setdiff1d(np.arange(self._size(tensor, axis)), self.removed.get((tensor, axis), []))

    def new_size(self, tensor: str, axis: int):
        """The axis's size after pruning: an int, or for a symbolic axis its new symbolic size
        ("3*batch" where "4*batch" lost one of the 4 heads merged into it)."""
        size = self.graph.shape(tensor)[axis]
        gone = len(self.removed.get((tensor, axis), ()))
        if isinstance(size, int):
            return size - gone
        digit = self.digits[(tensor, axis)][1]
        return (Product.of(size) / Product(digit) * Product(digit - gone)).dim

    def _size(self, tensor: str, axis: int) -> int:
        size = self.graph.shape(tensor)[axis]
        return size if isinstance(size, int) else self.digits[(tensor, axis)][1]

    # ------------------------------------------------------------------ changes rules make
    def unique_name(self, hint: str) -> str:
        base = f"{hint}_pruned"
        name, n = base, 1
        while name in self._names:
            n += 1
            name = f"{base}_{n}"
        self._names.add(name)
        return name

    def set_attr(self, node_index: int, name: str, value):
        node = self.nodes[node_index]
        self.remove_attr(node_index, name)
        node.attribute.append(helper.make_attribute(name, value))

    def remove_attr(self, node_index: int, name: str):
        node = self.nodes[node_index]
        kept = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        node.attribute.extend(kept)

    def add_constant(self, value: np.ndarray, hint: str) -> str:
        name = self.unique_name(hint)
        self.new_initializers[name] = np.asarray(value)
        return name

    def set_input_value(self, node_index: int, position: int, value: np.ndarray):
        """Point an input of the node at a new constant (never changes a tensor others may share)."""
        node = self.nodes[node_index]
        hint = node.input[position] if position < len(node.input) and node.input[position] else f"{node.name or node.op_type}_in{position}"
        self.set_input(node_index, position, self.add_constant(value, hint))

    def set_input(self, node_index: int, position: int, name: str):
        node = self.nodes[node_index]
        while len(node.input) <= position:
            node.input.append("")
        node.input[position] = name

    def add_node(self, before: int, op_type: str, inputs: list[str], **attrs) -> str:
        """A new node placed just before node `before`; returns its output's name."""
        anchor = self.nodes[before]
        output = self.unique_name(f"{anchor.name or anchor.op_type}_{op_type}")
        new = helper.make_node(op_type, inputs, [output], name=self.unique_name(f"{anchor.name or op_type}_{op_type}"), **attrs)
        self.inserted.setdefault(before, []).append(new)
        return output


def rewrite(graph: Graph, removed: dict[tuple[str, int], np.ndarray], carrier: str = "outer",
            new_values: dict[str, np.ndarray] | None = None, digits: dict | None = None) -> onnx.ModelProto:
    """A new model with `removed` indices gone from every listed (tensor, axis).

    `new_values` (parameter name -> array in the original shape) replaces parameters before they
    are cut: how a criterion that compensates kept weights (OBSPA) hands over its updates.
    `digits` (Analysis.digits) says which digit of each symbolic axis the indices count.
    """
    edit = Edit(graph, removed, carrier, digits)
    _prune_params(graph, edit, new_values or {})
    touched = {graph.tensors[t].producer for t, _ in edit.removed} | {
        c for t, _ in edit.removed for c in graph.tensors[t].consumers
    }
    for index in sorted(i for i in touched if i is not None and i not in edit.dropped):
        rule = rule_for(graph.nodes[index])
        if rule is None:
            raise RewriteError(index, f"a pruned dimension reaches {graph.nodes[index].op_type} without a rule")
        try:
            rule.rewrite(NodeView(graph, index, carrier), edit)
        except Unknown as e:
            raise RewriteError(index, f"cannot rewrite {graph.node_name(index)}: {e}") from None
    return _assemble(graph, edit)


def _prune_params(graph: Graph, edit: Edit, new_values: dict[str, np.ndarray]):
    by_tensor: dict[str, list[tuple[int, np.ndarray]]] = {name: [] for name in new_values}
    for (tensor, axis), indices in edit.removed.items():
        if graph.is_param(tensor):
            by_tensor.setdefault(tensor, []).append((axis, indices))
    for tensor, cuts in by_tensor.items():
        if not graph.is_param(tensor):
            raise SpaError(f"cannot set '{tensor}': it is not a parameter of the model")
        value = new_values.get(tensor, graph.value(tensor))
        if value.shape != graph.value(tensor).shape:
            raise SpaError(f"the new value of '{tensor}' has shape {value.shape}, not {graph.value(tensor).shape}")
        value = value.astype(graph.value(tensor).dtype, copy=False)
        for axis, indices in cuts:  # indices refer to the original positions on each axis
            kept = np.ones(value.shape[axis], dtype=bool)
            kept[indices] = False
            value = value.compress(kept, axis=axis)  # a few times faster than np.delete
        if tensor in graph.copies or tensor in graph.constant_nodes:
            index = graph.tensors[tensor].producer
            edit.dropped.add(index)  # the Identity or Constant node becomes an initializer
        edit.new_initializers[tensor] = value


def _assemble(graph: Graph, edit: Edit) -> onnx.ModelProto:
    old = graph.model
    # External data is read into the new model: it is written next to the new file, not the old one.
    arrays = {t.name: graph.value(t.name) for t in old.graph.initializer
              if t.data_location == onnx.TensorProto.EXTERNAL and t.name not in edit.new_initializers}
    arrays.update(edit.new_initializers)
    nodes = []
    for i, node in enumerate(edit.nodes):
        nodes.extend(edit.inserted.get(i, []))
        if i not in edit.dropped:
            nodes.append(node)
    nodes = _without_dead(nodes, old.graph)
    candidates = [*old.graph.initializer, *(onnx.TensorProto(name=n) for n in arrays)]  # still_read needs names only
    live = {t.name for t in still_read(candidates, old.graph.node, nodes, old.graph)}
    kept = [t for t in old.graph.initializer if t.name in live and t.name not in arrays]
    arrays = {n: v for n, v in arrays.items() if n in live}
    return model_like(old, nodes, kept, arrays, inputs=[_resized(v, edit) for v in old.graph.input],
                      outputs=[_resized(v, edit) for v in old.graph.output],
                      value_info=[_resized(vi, edit) for vi in old.graph.value_info])


def _without_dead(nodes: list[onnx.NodeProto], old: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes less those the prune left unread (the chain that made a state now dropped); nodes
    the original already left unread stay, as the user had them."""
    read_before = {n for node in old.node for n in node_reads(node)} | {o.name for o in old.output}
    while True:
        read = {n for node in nodes for n in node_reads(node)} | {o.name for o in old.output}
        live = [node for node in nodes if any(o in read or o not in read_before for o in node.output if o)]
        if len(live) == len(nodes):
            return nodes
        nodes = live


def _resized(value_info: onnx.ValueInfoProto, edit: Edit) -> onnx.ValueInfoProto:
    new = copy.deepcopy(value_info)
    if not new.type.HasField("tensor_type"):
        return new
    for axis, dim in enumerate(new.type.tensor_type.shape.dim):
        if (new.name, axis) in edit.removed:
            size = edit.new_size(new.name, axis)
            if isinstance(size, int):
                dim.dim_value = size
            else:
                dim.dim_param = size
    return new


def validate(model: onnx.ModelProto, reference: onnx.ModelProto | None = None, shapes: dict | None = None):
    """Raise SpaError unless the model passes onnx.checker, strict shape inference, and runs in
    onnxruntime (at input sizes `shapes`, see spa.inputs) with outputs of the ranks and static
    sizes the reference model declares."""
    try:  # the weights' sizes come from their arrays, and the onnxruntime run below refuses any that do not fit
        _check_model(model, initializer_sizes=False)
    except SpaError as e:
        raise SpaError(f"the pruned model is invalid: {e}") from None
    try:
        onnx.shape_inference.infer_shapes(_skeleton(model), strict_mode=True)
    except Exception as e:
        if reference is None or _infers_strictly(reference):
            raise SpaError(f"the pruned model fails shape inference: {str(e).splitlines()[0][:200]}") from None
    from .runtime import random_inputs, run

    outputs = run(model, random_inputs(model, batch=1, shapes=shapes))
    declared = reference.graph.output if reference is not None else []
    for vi, got in zip(declared, outputs):
        want = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        if vi.type.tensor_type.HasField("shape") and (
                len(got.shape) != len(want) or any(w is not None and w != g for w, g in zip(want, got.shape))):
            raise SpaError(f"the pruned model's output '{vi.name}' has shape {got.shape}, not {tuple(want)}")


def _infers_strictly(model: onnx.ModelProto) -> bool:
    try:
        onnx.shape_inference.infer_shapes(_skeleton(model), strict_mode=True)
        return True
    except Exception:
        return False
