"""The ONNX model as one graph: operators, tensors with inferred shapes, and parameters.

`Graph.load` accepts a path or a ModelProto (external data is loaded), checks that the model is
well formed, runs ONNX shape inference, and indexes every tensor with its producer and consumers.
Operators are the nodes of a networkx DiGraph (producer -> consumer), which gives topological
order and cycle detection.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import os
import tempfile
import warnings
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

from .conform import Origin, conform, default_opset
from .errors import SpaError
from .fold import MAX_ELEMENTS, fold_shapes, reshape_shapes
from .protos import constant_node_value, outer_scope_names

# Initializers up to this many elements keep their values in the shape-inference skeleton, so that
# data propagation sees shape constants; larger ones are sent as dims only (much faster).
_SKELETON_MAX_ELEMENTS = MAX_ELEMENTS

# Sub-byte types pack several values per byte: their byte length is not size * itemsize.
_PACKED_TYPES = {TensorProto.INT4, TensorProto.UINT4} | ({TensorProto.FLOAT4E2M1} if hasattr(TensorProto, "FLOAT4E2M1") else set())
_RANDOM_OPS = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}


@dataclass
class Tensor:
    name: str
    shape: tuple | None  # None: rank unknown. Entries: int, symbolic name (str) or None (unknown)
    dtype: int
    producer: int | None = None  # index of the producing node
    consumers: list[int] = field(default_factory=list)


class Graph:
    """Operators, tensors and parameters of one ONNX model (top-level graph)."""

    def __init__(self, model: onnx.ModelProto, base_dir: str | None = None):
        # Folding shape arithmetic and solving reshapes make more shapes static, which can make more
        # arithmetic foldable: repeat until nothing changes.
        hints: dict[str, tuple] = {}
        for _ in range(8):
            shapes, stale = _infer_shapes(model, hints)
            if stale:  # an exporter's wrong claims would mislead onnxruntime too: they go
                model = _without_value_info(model, stale)
            small = _small_constants(model)
            folded, known = fold_shapes(model, shapes, small)
            if folded is not None:
                model = folded
                continue
            settled = reshape_shapes(model, shapes, known, small)
            if all(hints.get(k) == v for k, v in settled.items()):
                break
            hints.update(settled)
        self.model = model
        # Shape vectors that stay computed at run time, with the entries known ahead (None elsewhere).
        self.partial_values: dict[str, np.ndarray] = known
        self.base_dir = base_dir  # where external data lives; it is read only when a value is needed
        self.path: str | None = None  # the file the model was loaded from, if any
        self.opset = default_opset(model)
        self.origin = Origin(self.opset, model.ir_version)  # what the file was before spa.conform
        self.nodes = list(model.graph.node)
        self.inputs = [i.name for i in model.graph.input]
        self.outputs = [o.name for o in model.graph.output]
        self.initializers = {t.name: t for t in model.graph.initializer}
        self.constant_nodes = {
            n.output[0]: i for i, n in enumerate(self.nodes) if n.op_type == "Constant" and n.domain in ("", "ai.onnx")
        }
        self._values: dict[str, np.ndarray] = {}
        self._constant_derived: set[str] | None = None
        self.tensors: dict[str, Tensor] = {}
        self._index_tensors(shapes)
        self.dag = self._build_dag()
        self.copies = self._identity_copies()
        self._params: list[str] | None = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, source) -> "Graph":
        """Load from a path or a ModelProto; raise SpaError with a one-line reason on bad input."""
        if isinstance(source, Graph):
            return source
        if isinstance(source, onnx.ModelProto):
            model, base_dir = source, None
        else:
            model, base_dir = load_model(source)
        _check_model(model)
        model, origin = conform(model)
        graph = cls(model, base_dir)
        graph.origin = origin
        graph.path = None if isinstance(source, onnx.ModelProto) else os.fspath(source)
        return graph

    def _index_tensors(self, shapes: dict[str, tuple[tuple | None, int]]):
        def add(name):
            if name and name not in self.tensors:
                shape, dtype = shapes.get(name, (None, 0))
                self.tensors[name] = Tensor(name, shape, dtype)
            return self.tensors.get(name)

        for name in list(self.initializers) + self.inputs:
            add(name)
        for i, node in enumerate(self.nodes):
            for out in node.output:
                if out:
                    t = add(out)
                    if t.producer is not None:
                        raise SpaError(f"tensor '{out}' is produced by two nodes ({self.node_name(t.producer)} and {self.node_name(i)})")
                    t.producer = i
        defined = set(self.tensors)
        for i, node in enumerate(self.nodes):
            for name in list(node.input) + sorted(outer_scope_names(node)):
                if not name:
                    continue
                if name not in defined:
                    raise SpaError(f"node {self.node_name(i)} reads tensor '{name}' that no node, input or initializer provides")
                consumers = self.tensors[name].consumers
                if not consumers or consumers[-1] != i:
                    consumers.append(i)
        for name in self.outputs:
            if name not in defined:
                raise SpaError(f"graph output '{name}' is not produced by any node")

    def _identity_copies(self) -> dict[str, str]:
        """Identity nodes that copy a parameter (the TorchScript exporter shares equal constants
        this way). Each copy is its own parameter, so equal values do not couple unrelated layers."""
        copies: dict[str, str] = {}
        for i in self.topological_order():
            node = self.nodes[i]
            if node.op_type == "Identity" and node.domain in ("", "ai.onnx") and node.output[0] not in self.outputs:
                source = node.input[0]
                if source in copies or ((source in self.initializers or source in self.constant_nodes) and source not in self.inputs):
                    copies[node.output[0]] = copies.get(source, source)
        return copies

    def _build_dag(self) -> nx.DiGraph:
        dag = nx.DiGraph()
        dag.add_nodes_from(range(len(self.nodes)))
        for t in self.tensors.values():
            if t.producer is not None:
                dag.add_edges_from((t.producer, c) for c in t.consumers)
        if not nx.is_directed_acyclic_graph(dag):
            cycle = nx.find_cycle(dag)
            raise SpaError("the graph has a cycle through nodes " + ", ".join(self.node_name(a) for a, _ in cycle[:4]))
        return dag

    # ------------------------------------------------------------------ queries
    def node_name(self, index: int) -> str:
        node = self.nodes[index]
        return node.name or f"{node.op_type}#{index}"

    def topological_order(self) -> list[int]:
        return list(nx.topological_sort(self.dag))

    def shape(self, name: str) -> tuple | None:
        return self.tensors[name].shape

    def is_param(self, name: str) -> bool:
        """A parameter: an initializer, the output of a Constant node, or an Identity copy of one
        (and not a graph input)."""
        return (name in self.initializers or name in self.constant_nodes or name in self.copies) and name not in self.inputs

    def value(self, name: str) -> np.ndarray | None:
        """The constant value of a parameter, or None for a run-time tensor."""
        if name in self._values:
            return self._values[name]
        if not self.is_param(name):
            return None
        if name in self.copies:
            array = self.value(self.copies[name])
        elif name in self.initializers:
            array = read_initializer(self.initializers[name], self.base_dir)
        else:
            array = constant_node_value(self.nodes[self.constant_nodes[name]])
        self._values[name] = array
        return array

    def is_constant_derived(self, name: str) -> bool:
        """True for parameters and for tensors computed from parameters alone (e.g. a dequantized
        or transposed weight): their values are known before the model runs."""
        if self._constant_derived is None:
            known = {n for n in self.tensors if self.is_param(n)}
            for i in self.topological_order():
                node = self.nodes[i]
                inputs = [n for n in node.input if n]
                if inputs and node.op_type not in _RANDOM_OPS and all(n in known for n in inputs):
                    known.update(o for o in node.output if o)
            self._constant_derived = known
        return name in self._constant_derived

    def params(self) -> list[str]:
        """Every parameter, in the order the model lists them."""
        if self._params is None:
            names = list(self.initializers) + list(self.constant_nodes) + list(self.copies)
            self._params = [n for n in names if self.is_param(n)]
            self._param_positions = {n: i for i, n in enumerate(self._params)}
        return self._params

    def param_position(self, name: str) -> int:
        """Where a parameter comes in `params()` (for listing parameters in model order)."""
        self.params()
        return self._param_positions.get(name, len(self._params))


# ---------------------------------------------------------------------- helpers
def load_model(path) -> tuple[onnx.ModelProto, str]:
    """The model at `path` (external data left on disk), and the folder its external data is in."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise SpaError(f"no such file: {path}")
    if os.path.isdir(path):
        raise SpaError(f"{path} is a directory, not an ONNX file")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:  # protobuf raises a variety of errors on garbage input
        raise SpaError(f"{path} is not a readable ONNX model ({type(e).__name__})") from None
    if not model.graph.node:
        raise SpaError(f"{path} holds no ONNX graph (no nodes)")
    return model, os.path.dirname(os.path.abspath(path))


def read_initializer(tensor: TensorProto, base_dir: str | None) -> np.ndarray:
    """An initializer's value, reading external data from `base_dir` when it lives on disk."""
    if tensor.data_location != TensorProto.EXTERNAL:
        return numpy_helper.to_array(tensor)
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    if base_dir is None:
        raise SpaError(f"initializer '{tensor.name}' keeps its data in '{location}': load the model from its path")
    file = os.path.realpath(os.path.join(base_dir, location))
    if os.path.isabs(location) or not file.startswith(os.path.realpath(base_dir) + os.sep):
        raise SpaError(f"initializer '{tensor.name}' points outside the model's folder ({location})")
    offset, length = int(info.get("offset", 0)), info.get("length")
    try:
        with open(file, "rb") as f:
            f.seek(offset)
            data = f.read(int(length) if length is not None else -1)
    except OSError as e:
        raise SpaError(f"cannot read the external data of '{tensor.name}': {e.strerror} ({location})") from None
    expected = int(np.prod(tensor.dims)) * np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    if len(data) < expected and tensor.data_type not in _PACKED_TYPES:
        raise SpaError(f"the external data of '{tensor.name}' is truncated ({location})")
    inline = TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims, raw_data=data)
    return numpy_helper.to_array(inline)


def _check_model(model: onnx.ModelProto, initializer_sizes: bool = True):
    if not model.graph.node:
        raise SpaError("the model holds no ONNX graph (no nodes)")
    default_opset(model)
    if initializer_sizes:  # reads (copies) every weight's bytes: once per input model
        _check_initializer_sizes(model)
    try:
        onnx.checker.check_model(_skeleton(model))
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        # A deprecated operator version (GroupNormalization-18) is still a valid model to run.
        if "is deprecated in domain_version" not in first:
            raise SpaError(f"invalid ONNX model: {first[:200]}") from None


def _check_initializer_sizes(model: onnx.ModelProto):
    """Every initializer holds as many values as its dims say. onnx.checker sees only the small
    ones (the skeleton sends large ones as dims alone), and a shape taken from dims that the data
    does not fill is one no runtime agrees with (onnxruntime refuses such a model)."""
    for t in model.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL or t.data_type in _PACKED_TYPES or t.data_type == TensorProto.UNDEFINED:
            continue  # external data is checked when it is read (read_initializer)
        values = int(np.prod(t.dims, dtype=np.int64))
        if t.HasField("raw_data") and t.data_type != TensorProto.STRING:
            held = len(t.raw_data) // np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        else:
            held = len(getattr(t, helper.tensor_dtype_to_field(t.data_type)))
            if t.data_type in (TensorProto.COMPLEX64, TensorProto.COMPLEX128):
                held //= 2  # a real and an imaginary part per value
        if held != values:
            raise SpaError(f"invalid ONNX model: initializer '{t.name}' declares shape {list(t.dims)} "
                           f"({values} values) but holds {held}")


def shapes_at(model: onnx.ModelProto, input_shapes: dict[str, tuple]) -> dict[str, tuple | None]:
    """Every tensor's shape when the model's inputs have these (concrete) shapes."""
    skeleton = _skeleton(model)
    for vi in skeleton.graph.input:
        if vi.name in input_shapes:
            dims = vi.type.tensor_type.shape.dim
            del dims[:]
            for d in input_shapes[vi.name]:
                dims.add().dim_value = int(d)
    shapes, _ = _infer_shapes(skeleton)
    return {name: shape for name, (shape, _) in shapes.items()}


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the model that is cheap to serialize: large initializers become typed graph inputs.

    The checker and shape inference need only their types and shapes; small initializers keep
    their values so that data propagation still sees shape constants.
    """
    graph = model.graph
    small, large = [], []
    for t in graph.initializer:
        fits = int(np.prod(t.dims)) <= _SKELETON_MAX_ELEMENTS and t.data_location != TensorProto.EXTERNAL
        (small if fits else large).append(t)
    declared = {i.name for i in graph.input}
    inputs = list(graph.input) + [
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in large if t.name not in declared
    ]
    skeleton_graph = helper.make_graph(graph.node, graph.name, inputs, graph.output, small, value_info=graph.value_info)
    skeleton = helper.make_model(skeleton_graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    skeleton.functions.extend(model.functions)
    return skeleton


def _infer_shapes(model: onnx.ModelProto, hints: dict | None = None) -> tuple[dict[str, tuple[tuple | None, int]], set[str]]:
    """name -> (shape, elem_type) for every tensor shape inference can type, and the names whose
    value_info the model states wrongly (a static size or rank that inference contradicts).

    ONNX's own inference knows every standard operator; onnxruntime's symbolic inference keeps
    symbolic sizes through arithmetic (a -1 next to a symbolic batch, a batch carried through
    Concat and Expand) where ONNX's gives up. Each tensor takes the more informative answer.
    `hints` (name -> (shape, elem_type)) are shapes SPA settled itself; inference builds on them.
    """
    # The model's own value_info is an exporter's claim, sometimes stale (a channel count from before
    # an edit): shapes are inferred without it, and it is used only where inference finds nothing.
    skeleton = _skeleton(model)
    del skeleton.graph.value_info[:]
    for name, (shape, elem_type) in (hints or {}).items():
        skeleton.graph.value_info.append(helper.make_tensor_value_info(name, elem_type, list(shape)))

    def infer():
        return _shapes_from(_run_inference(lambda: shape_inference.infer_shapes(skeleton, strict_mode=False, data_prop=True)))

    shapes = infer()
    stale = {vi.name for vi in model.graph.value_info if vi.name in shapes and vi.type.HasField("tensor_type")
             and _contradicts(_shape_of(vi.type.tensor_type), shapes[vi.name][0])}
    produced = [o for node in model.graph.node for o in node.output if o]
    open_names = {name for name in produced if not _fully_known(shapes.get(name, (None, 0))[0])}
    claimed = [vi for vi in model.graph.value_info if vi.name in open_names and vi.name not in (hints or {})
               and vi.name not in stale]
    if claimed:
        skeleton.graph.value_info.extend(claimed)
        shapes = infer()
    settled = all(_fully_known(shapes.get(name, (None, 0))[0]) for name in produced)
    symbolic = {} if settled else _shapes_from(_run_inference(lambda: _symbolic_shapes(skeleton)))
    for name, (shape, elem_type) in symbolic.items():
        if name not in shapes or _information(shape) > _information(shapes[name][0]):
            shapes[name] = (shape, elem_type or shapes.get(name, (None, 0))[1])
    shapes.update(hints or {})
    for t in model.graph.initializer:
        shapes[t.name] = (tuple(int(d) for d in t.dims), t.data_type)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] not in shapes:
            v = constant_node_value(node)
            shapes[node.output[0]] = (tuple(v.shape), helper.np_dtype_to_tensor_dtype(v.dtype))
    return shapes, stale


@functools.cache
def _symbolic_shape_inference():
    """onnxruntime's SymbolicShapeInference, loaded from its file: the `onnxruntime.tools` package
    imports torch on import (seconds), which the shape inference does not need."""
    package = os.path.dirname(importlib.util.find_spec("onnxruntime").origin)
    spec = importlib.util.spec_from_file_location("spa._symbolic_shape_infer",
                                                  os.path.join(package, "tools", "symbolic_shape_infer.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    class SymbolicShapeInference(module.SymbolicShapeInference):
        def _infer_Resize(self, node):  # noqa: N802 (the tool's naming)
            """A Resize by whole-number scales (a 2x upsample in a detector's neck) makes d * s:
            the tool's sympy.simplify(floor(d * s)) takes seconds a node over symbolic image sizes."""
            scales, sizes = self._try_get_value(node, 2), self._try_get_value(node, 3)
            mode = module.get_attribute(node, "coordinate_transformation_mode")
            if (sizes is not None and len(sizes)) or scales is None or not len(scales) or mode == b"tf_crop_and_resize" \
                    or not all(float(s).is_integer() for s in scales):
                return super()._infer_Resize(node)
            shape = [d * int(s) for d, s in zip(self._get_sympy_shape(node, 0), scales)]
            self._update_computed_dims(shape)
            self.known_vi_[node.output[0]].CopyFrom(helper.make_tensor_value_info(
                node.output[0], self.known_vi_[node.input[0]].type.tensor_type.elem_type,
                module.get_shape_from_sympy_shape(shape)))

    return SymbolicShapeInference


def _symbolic_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's symbolic inference, keeping what it found even where it stops short.

    Its `infer_shapes` raises when any tensor stays open and, before raising, saves a debug model
    into the working directory; its steps are run here instead (in a scratch directory, should
    they change), so nothing is ever written next to the user's files.
    """
    inference_class = _symbolic_shape_inference()
    with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch):
        try:
            inference = inference_class(2**31 - 1, True, False, 0)
            inference._preprocess(model)
            while inference.run_:
                inference._infer_impl()
            inference._update_output_from_vi()
            return inference.out_mp_
        except AttributeError:  # another onnxruntime: its public call, whole or nothing
            return inference_class.infer_shapes(model, auto_merge=True)


def _run_inference(infer) -> onnx.ModelProto | None:
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            return infer()
    except Exception:  # inference failing on one node must not stop the analysis
        return None


def _shapes_from(model: onnx.ModelProto | None) -> dict[str, tuple[tuple | None, int]]:
    if model is None:
        return {}
    g = model.graph
    return {vi.name: (_shape_of(vi.type.tensor_type), vi.type.tensor_type.elem_type)
            for vi in list(g.input) + list(g.output) + list(g.value_info) if vi.type.HasField("tensor_type")}


def _contradicts(claimed, inferred) -> bool:
    """Whether a stated shape disagrees with an inferred one: another rank or another static size."""
    if claimed is None or inferred is None:
        return False
    return len(claimed) != len(inferred) or any(isinstance(a, int) and isinstance(b, int) and a != b
                                                for a, b in zip(claimed, inferred))


def _without_value_info(model: onnx.ModelProto, names: set[str]) -> onnx.ModelProto:
    new = onnx.ModelProto()
    new.CopyFrom(model)
    kept = [vi for vi in new.graph.value_info if vi.name not in names]
    del new.graph.value_info[:]
    new.graph.value_info.extend(kept)
    return new


def _fully_known(shape) -> bool:
    return shape is not None and all(isinstance(d, int) or (isinstance(d, str) and not d.startswith("unk__")) for d in shape)


def _information(shape) -> float:
    """How much a shape says: static sizes count most, named symbols some, unknowns nothing."""
    if shape is None:
        return -1
    return sum(2 if isinstance(d, int) else (1 if isinstance(d, str) and not d.startswith("unk__") else 0) for d in shape)


def _small_constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Values of the initializers and Constant nodes small enough to take part in shape arithmetic."""
    small = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer
             if int(np.prod(t.dims)) <= MAX_ELEMENTS and t.data_location != TensorProto.EXTERNAL}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            try:
                value = constant_node_value(node)
            except ValueError:
                continue
            if value.size <= MAX_ELEMENTS:
                small[node.output[0]] = value
    return small


def _shape_of(tensor_type) -> tuple | None:
    if not tensor_type.HasField("shape"):
        return None
    dims = []
    for d in tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)
