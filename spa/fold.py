"""A pass that folds shape arithmetic into constants.

Exporters often compute sizes at run time: `x.view(x.size(0), x.size(1), 4, 16)` becomes Shape,
Gather, Unsqueeze and Concat nodes even where every size but the batch is static. Pruning needs
those values as constants (so that a head count or a Slice bound can be rewritten), and a Shape
that reads a channel count would otherwise block the channels. This pass evaluates such arithmetic
element by element (a shape with a symbolic batch is known except for its batch entry), replaces
every fully known result by an initializer, and drops the nodes no longer needed. Results that
still depend on a symbolic size (the batch) stay computed at run time.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .protos import model_like, node_reads, still_read
from .symbols import Product, product

# Only small tensors are folded: shape vectors, indices, scalars.
MAX_ELEMENTS = 4096
# Quantization nodes are left as they are even on constants: they are the model's QDQ structure.
_KEEP = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Constant"}
_RANDOM = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}

_ELEMENTWISE = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Mod": np.mod, "Max": np.maximum, "Min": np.minimum,
    "Equal": np.equal, "Greater": np.greater, "Less": np.less, "GreaterOrEqual": np.greater_equal,
    "LessOrEqual": np.less_equal, "And": np.logical_and, "Or": np.logical_or, "Neg": np.negative, "Abs": np.abs,
    "Not": np.logical_not, "Floor": np.floor, "Ceil": np.ceil, "Sqrt": np.sqrt, "Sign": np.sign,
}


def _div(a, b):
    if np.issubdtype(np.asarray(a).dtype, np.integer) and np.issubdtype(np.asarray(b).dtype, np.integer):
        return np.trunc(np.true_divide(a, b)).astype(np.result_type(a, b))  # ONNX integer Div truncates
    return np.true_divide(a, b)


_ELEMENTWISE["Div"] = _div


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class Symbol(str):
    """A size known only by name at load time (a symbolic dim such as the batch)."""


def is_known(entry) -> bool:
    return entry is not None and not isinstance(entry, Symbol)


def _objects(value) -> np.ndarray:
    """`value` as an object array (numpy hands back a lone element when indexing down to a scalar)."""
    out = np.empty(np.shape(value), dtype=object)
    out[...] = value
    return out


class _Partial:
    """Values known element by element: object arrays whose entries are numbers, Symbols (sizes
    known by name only) or None (unknown)."""

    def __init__(self, shapes: dict, known: dict[str, np.ndarray]):
        self.shapes = shapes  # name -> (shape, elem_type)
        self.values: dict[str, np.ndarray] = {}
        self.dtypes: dict[str, np.dtype] = {}
        self.read_sizes: set[str] = set()  # values that depend on a tensor's size (Shape, Size)
        for name, value in known.items():
            self.set(name, _objects(value), value.dtype)

    def set(self, name, value: np.ndarray, dtype):
        self.values[name] = value
        self.dtypes[name] = np.dtype(dtype)

    def full(self, name) -> np.ndarray | None:
        """The value, if every entry is known."""
        v = self.values.get(name)
        if v is None or not all(is_known(e) for e in v.flat):
            return None
        return v.astype(self.dtypes[name])

    def evaluate(self, node):
        """Set the partial values of the node's outputs, when they can be worked out."""
        op, ins, attrs = node.op_type, list(node.input), _attrs(node)
        if op in ("Shape", "Size") or any(n in self.read_sizes for n in ins):
            self.read_sizes.update(o for o in node.output if o)
        if op == "Shape":
            shape = self.shapes.get(ins[0], (None, 0))[0]
            if shape is not None:
                rank = len(shape)
                start, end = (v + rank if v < 0 else v for v in (attrs.get("start", 0), attrs.get("end", rank)))
                dims = [d if isinstance(d, int) else (Symbol(d) if d else None) for d in shape[max(start, 0):min(end, rank)]]
                self.set(node.output[0], _objects(dims), np.int64)
            return
        data = [self.values.get(n) for n in ins]
        if any(d is None for n, d in zip(ins, data) if n):
            return
        if op in _MOVES:
            result = self._move(op, node, data, attrs)
            if result is None:
                return
            dtype = self.dtypes[ins[0]]
            if op == "Cast":
                dtype = helper.tensor_dtype_to_np_dtype(attrs["to"])
                result = _objects([np.asarray(e).astype(dtype).item() if is_known(e) else e for e in result.flat]
                                  ).reshape(result.shape)
            self.set(node.output[0], result, dtype)
        elif op in _ELEMENTWISE or op == "Where":
            self._elementwise(op, node, data)
        elif op == "ReduceProd" and data[0].ndim == 1 and all(e is not None for e in data[0]):
            self._symbolic_product(node, data[0], attrs)
        elif op not in _RANDOM and node.domain in ("", "ai.onnx"):
            full = [self.full(n) if n else None for n in ins]
            if all(f is not None for n, f in zip(ins, full) if n):
                self._reference(node, full)

    def _move(self, op, node, data, attrs) -> np.ndarray | None:
        x = data[0]
        if op in ("Identity", "Cast"):
            return x
        if op in ("Unsqueeze", "Squeeze"):
            axes = attrs.get("axes")
            if len(node.input) > 1 and node.input[1]:
                axes = self.full(node.input[1])
                if axes is None:
                    return None
            if op == "Unsqueeze":
                out = x
                for a in sorted(int(a) + (x.ndim + len(axes) if a < 0 else 0) for a in axes):
                    out = np.expand_dims(out, a)
                return out
            return _objects(np.squeeze(x, axis=None if axes is None else tuple(int(a) for a in axes)))
        if op == "Gather":
            idx = self.full(node.input[1])
            return None if idx is None else _objects(np.take(x, idx.astype(np.int64), axis=attrs.get("axis", 0)))
        if op == "Concat":
            return np.concatenate(data, axis=attrs["axis"])
        if op == "Slice":
            bounds = [self.full(n) if n else None for n in node.input[1:]]
            if any(b is None for n, b in zip(node.input[1:], bounds) if n):
                return None
            starts, ends = bounds[0], bounds[1]
            axes = bounds[2] if len(bounds) > 2 and bounds[2] is not None else range(len(starts))
            steps = bounds[3] if len(bounds) > 3 and bounds[3] is not None else [1] * len(starts)
            index = [slice(None)] * x.ndim
            for s, e, a, st in zip(starts, ends, axes, steps):
                index[int(a)] = slice(int(s), int(e), int(st))
            return _objects(x[tuple(index)])
        shape = self.full(node.input[1])  # Reshape
        if shape is None:
            return None
        shape = [x.shape[i] if v == 0 and not attrs.get("allowzero", 0) else int(v) for i, v in enumerate(shape)]
        return x.reshape(shape)

    def _symbolic_product(self, node, data, attrs):
        """The product of a shape's entries, some known only by name (batch * 4)."""
        total = product(data)
        value = None if total is None else (Symbol(total.dim) if isinstance(total.dim, str) else total.dim)
        self.set(node.output[0], _objects([value] if attrs.get("keepdims", 1) else value), self.dtypes[node.input[0]])

    def _elementwise(self, op, node, data):
        arrays = np.broadcast_arrays(*data)
        known = np.logical_and.reduce([np.vectorize(is_known, otypes=[bool])(a) for a in arrays])
        out = np.full(arrays[0].shape, None, dtype=object)
        if op == "Equal":  # a size is never negative: a size known by name is not -1
            for index in np.ndindex(arrays[0].shape):
                a, b = (arr[index] for arr in arrays)
                if isinstance(a, Symbol) and is_known(b) and b < 0 or isinstance(b, Symbol) and is_known(a) and a < 0:
                    out[index] = False
        if op in ("Mul", "Div"):  # sizes known by name multiply and divide as products
            for index in np.ndindex(arrays[0].shape):
                entries = [Product.of(a[index]) for a in arrays]
                if known[index]:
                    continue
                if None not in entries:
                    try:
                        result = entries[0] * entries[1] if op == "Mul" else entries[0] / entries[1]
                    except ValueError:
                        continue
                    out[index] = Symbol(result.dim) if isinstance(result.dim, str) else result.dim
        dtypes = [self.dtypes[n] for n in node.input]
        if known.any():
            args = [a[known].astype(d) for a, d in zip(arrays, dtypes)]
            result = np.asarray(np.where(*args) if op == "Where" else _ELEMENTWISE[op](*args))
            out[known] = result.tolist()
            dtype = result.dtype
        else:
            dtype = dtypes[-1] if op == "Where" else (np.bool_ if op in _COMPARISONS else dtypes[0])
        self.set(node.output[0], out, dtype)

    def _reference(self, node, full):
        from onnx.reference import ReferenceEvaluator  # imported when first needed: a tenth of a second

        inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(f.dtype), f.shape)
                  for n, f in zip(node.input, full) if n]
        outputs = [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output if o]
        graph = helper.make_graph([node], "fold", inputs, outputs)
        try:
            results = ReferenceEvaluator(helper.make_model(graph)).run(None, {n: f for n, f in zip(node.input, full) if n})
        except Exception:
            return  # the reference runtime does not know it: leave it to run time
        for name, value in zip([o for o in node.output if o], results):
            value = np.asarray(value)
            if value.size <= MAX_ELEMENTS:
                self.set(name, _objects(value), value.dtype)


_MOVES = ("Identity", "Cast", "Unsqueeze", "Squeeze", "Gather", "Concat", "Slice", "Reshape")
_COMPARISONS = ("Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Not")


def fold_shapes(model: onnx.ModelProto, shapes: dict,
                small_params: dict[str, np.ndarray]) -> tuple[onnx.ModelProto | None, dict[str, np.ndarray]]:
    """The model with fully known shape arithmetic folded into initializers (None if nothing is),
    and the partly known values of what stays computed (object arrays, None where unknown).

    `small_params` holds the values of its small initializers and Constant outputs; `shapes` maps
    name -> (shape, elem_type) from shape inference. Nodes are visited in the order the model lists
    them, which ONNX requires to be topological.
    """
    graph = model.graph
    graph_outputs = {o.name for o in graph.output}
    partial = _Partial(shapes, small_params)
    folded: dict[str, np.ndarray] = {}
    for node in graph.node:
        if node.op_type in _KEEP or node.op_type in _RANDOM:
            continue
        try:
            partial.evaluate(node)
        except (ArithmeticError, ValueError, TypeError, IndexError, KeyError):
            continue  # arithmetic this pass cannot follow stays for run time
        for out in node.output:
            value = partial.full(out) if out else None
            if value is None or value.size > MAX_ELEMENTS or out in graph_outputs:
                continue
            # Shape arithmetic only: a float computed from weights alone (a transposed weight) is
            # the model's own parameter and keeps its name.
            if out in partial.read_sizes or not np.issubdtype(value.dtype, np.floating):
                folded[out] = value
    known = {n: v for n, v in partial.values.items() if n not in folded and n not in small_params}
    producers = {o: i for i, n in enumerate(graph.node) for o in n.output}
    dropped = {i for i, n in enumerate(graph.node) if n.output and all(not o or o in folded for o in n.output)}
    if not dropped:
        return None, known
    used = {n for i, node in enumerate(graph.node) if i not in dropped for n in node_reads(node)}
    used |= graph_outputs
    new_initializers = {name: folded[name] for name in folded if name in used and producers.get(name) in dropped}
    nodes = _live_nodes([n for i, n in enumerate(graph.node) if i not in dropped], graph_outputs)
    initializers = still_read(graph.initializer, graph.node, nodes, graph)
    new = model_like(model, nodes, initializers, new_initializers,
                     value_info=[v for v in graph.value_info if v.name not in folded])
    return new, known


def _live_nodes(nodes: list, outputs: set[str]) -> list:
    """Drop nodes whose outputs nothing reads (repeatedly): what only fed folded arithmetic."""
    while True:
        read = {n for node in nodes for n in node_reads(node)} | outputs
        kept = [n for n in nodes if any(o in read for o in n.output if o) or not n.output]
        if len(kept) == len(nodes):
            return kept
        nodes = kept


def reshape_shapes(model: onnx.ModelProto, shapes: dict, partial: dict[str, np.ndarray],
                   small_params: dict[str, np.ndarray]) -> dict[str, tuple]:
    """Output shapes of Reshapes that shape inference left open but the partial values settle.

    Shape inference gives up on `[4*batch, -1, 8]` for a (batch, 4, 64, 1, 8) tensor; treating
    sizes as products of named symbols gives (4*batch, 64, 8).
    """
    settled = {}
    for node in model.graph.node:
        if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx"):
            continue
        out = node.output[0]
        old, elem_type = shapes.get(out, (None, 0))
        if old is not None and all(_named(d) for d in old):
            continue
        x_shape = shapes.get(node.input[0], (None, 0))[0]
        target = partial.get(node.input[1])
        if target is None and node.input[1] in small_params:
            target = _objects(small_params[node.input[1]])
        if x_shape is None or target is None or target.ndim != 1:
            continue
        zero_copies = not _attrs(node).get("allowzero", 0)
        dims = [x_shape[i] if zero_copies and is_known(e) and int(e) == 0 and i < len(x_shape) else
                (int(e) if is_known(e) else e) for i, e in enumerate(target)]
        if dims.count(-1) == 1 and None not in dims:
            total, known = product(x_shape), product(d for d in dims if d != -1)
            if total is None or known is None or not known.divides(total):
                continue
            dims[dims.index(-1)] = (total / known).dim
        if all(_named(d) for d in dims):
            settled[out] = (tuple(str(d) if isinstance(d, Symbol) else d for d in dims),
                            elem_type or shapes.get(node.input[0], (None, 0))[1])
    return settled


def _named(dim) -> bool:
    """A size that is a number or a stable name (not one shape inference made up)."""
    return (isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0) or (
        isinstance(dim, str) and not dim.startswith("unk__") and "_o0__d" not in dim)
