"""Tiny ONNX graphs for the per-operator rule tests, and assertions on groups and prunes.

A test builds a graph with `Builder` (or `sandwich`: input -> seed layer -> the operator under
test -> consumer layer -> output), then asks `group_of` for the group that holds a parameter
dimension, compares its parameter members with `params`, and proves a prune with `check_prune`
(the zeroing oracle) or a block with `assert_blocked`.

Names: a layer called "c1" has weight "c1.W" and bias "c1.B"; a node called "n" outputs "n.y"
(or "n.y0", "n.y1", ... when it has several outputs).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

import spa
from spa.oracle import max_relative_error

OPSET = 17
IR_VERSION = 10  # onnxruntime refuses the IR version onnx.helper picks by default
FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64
TOL = 1e-5


class Builder:
    """An ONNX graph grown node by node, with seeded random float32 weights."""

    def __init__(self, opset: int = OPSET, seed: int = 0):
        self.opset = opset
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[str] = []
        self.value_info: list[onnx.ValueInfoProto] = []  # shapes the model states (ONNX cannot infer them all)
        self.count = 0

    # ------------------------------------------------------------------ tensors
    def input(self, shape, name: str = "X", dtype: int = FLOAT) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, dtype, list(shape)))
        return name

    def const(self, name: str, value, dtype=None) -> str:
        """An initializer holding `value`: Python ints become int64 and floats float32, numpy arrays keep
        their type."""
        value = np.asarray(value)
        if dtype is not None:
            value = value.astype(dtype)
        elif value.dtype == np.float64:
            value = value.astype(np.float32)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def weight(self, name: str, shape, offset: float = 0.0) -> str:
        """Random normal float32 (plus `offset`, e.g. to keep a variance positive)."""
        return self.const(name, self.rng.standard_normal(shape) + offset)

    def shape(self, name: str) -> tuple:
        """The inferred static shape of a tensor of the graph built so far."""
        if name in {t.name for t in self.inits}:
            return tuple(next(t.dims for t in self.inits if t.name == name))
        model = self._model([])
        inferred = shape_inference.infer_shapes(model, data_prop=True)
        for vi in list(inferred.graph.value_info) + list(inferred.graph.input):
            if vi.name == name:
                return tuple(d.dim_value if d.HasField("dim_value") else d.dim_param
                             for d in vi.type.tensor_type.shape.dim)
        raise KeyError(name)

    # ------------------------------------------------------------------ nodes
    def op(self, op_type: str, inputs, outputs: int = 1, name: str | None = None, domain: str = "",
           shape=None, **attrs):
        """Add a node; returns its output name, or a list of names when `outputs` > 1.

        `shape`: state the (float) first output's shape in the model's value_info."""
        self.count += 1
        name = name or f"{op_type.lower()}{self.count}"
        outs = [f"{name}.y"] if outputs == 1 else [f"{name}.y{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, domain=domain or None, **attrs))
        if shape is not None:
            self.value_info.append(helper.make_tensor_value_info(outs[0], FLOAT, list(shape)))
        return outs[0] if outputs == 1 else outs

    def conv(self, x: str, cout: int, k: int = 1, group: int = 1, bias: bool = True, name: str = "conv",
             transpose: bool = False, **attrs) -> str:
        """Conv (or ConvTranspose) keeping the spatial size; W and B are random."""
        shape = self.shape(x)
        cin, spatial = shape[1], len(shape) - 2
        w_shape = (cin, cout // group) if transpose else (cout, cin // group)
        inputs = [x, self.weight(f"{name}.W", w_shape + (k,) * spatial)]
        if bias:
            inputs.append(self.weight(f"{name}.B", (cout,)))
        if not transpose:
            attrs.setdefault("pads", [k // 2] * 2 * spatial)
        return self.op("ConvTranspose" if transpose else "Conv", inputs, name=name, group=group, **attrs)

    def linear(self, x: str, n: int, name: str = "fc", bias: bool = False) -> str:
        """MatMul with a constant (K, N) weight on the right (+ a bias Add)."""
        y = self.op("MatMul", [x, self.weight(f"{name}.W", (self.shape(x)[-1], n))], name=name)
        return self.op("Add", [y, self.weight(f"{name}.B", (n,))], name=f"{name}_bias") if bias else y

    def output(self, *names: str) -> None:
        self.outputs.extend(names)

    # ------------------------------------------------------------------ the model
    def _model(self, outputs) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "g", self.inputs, outputs, self.inits, value_info=self.value_info)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)], ir_version=IR_VERSION)

    def build(self, check: bool = True) -> onnx.ModelProto:
        inferred = shape_inference.infer_shapes(self._model([]), data_prop=True)
        known = {vi.name: vi for vi in list(inferred.graph.value_info) + self.value_info}
        outputs = [known[n] for n in self.outputs]
        model = self._model(outputs)
        if check:
            onnx.checker.check_model(model)
        return model


def sandwich(middle, shape=(2, 4, 6, 6), channels: int = 8, out: int = 4, opset: int = OPSET, kind: str = "conv",
             input_name: str = "X", check: bool = True) -> onnx.ModelProto:
    """X -> seed layer "l1" (`channels` outputs) -> middle(builder, h) -> consumer layer "l2" -> Y.

    kind "conv": 1x1 Convs with bias (channels on axis 1); kind "linear": MatMuls (channels last).
    """
    b = Builder(opset)
    x = b.input(shape, input_name)
    layer = b.conv if kind == "conv" else b.linear
    h = middle(b, layer(x, channels, name="l1"))
    b.output(layer(h, out, name="l2"))
    return b.build(check)


# ---------------------------------------------------------------------- groups
def groups_of(analysis, tensor: str, axis: int = 0) -> list:
    return [g for g in analysis.groups if any(m.tensor == tensor and m.axis == axis for m in g.members)]


def group_of(model_or_analysis, tensor: str, axis: int = 0, **analyze_kw):
    """The one group running through (tensor, axis)."""
    analysis = model_or_analysis if isinstance(model_or_analysis, spa.Analysis) else spa.analyze(model_or_analysis, **analyze_kw)
    found = groups_of(analysis, tensor, axis)
    assert len(found) == 1, f"({tensor}, {axis}) is in {len(found)} groups: {[g.describe() for g in analysis.groups]}"
    return found[0]


def params(group) -> set[tuple[str, int]]:
    """The (tensor, axis) of every parameter member."""
    return {(m.tensor, m.axis) for m in group.params}


def member(group, tensor: str, axis: int):
    found = [m for m in group.members if (m.tensor, m.axis) == (tensor, axis)]
    assert found, f"({tensor}, {axis}) is not a member of group {group.id}"
    return found[0]


def units(group, tensor: str, axis: int) -> list[list[int]]:
    """Each unit's indices along (tensor, axis)."""
    m = member(group, tensor, axis)
    return [m.unit(u).tolist() for u in range(group.units)]


def conv_params(*layers: str, bias: bool = True) -> set[tuple[str, int]]:
    """Output-channel members of seed convs: W axis 0 and B axis 0."""
    return {(f"{l}.{p}", 0) for l in layers for p in (("W", "B") if bias else ("W",))}


# ---------------------------------------------------------------------- prunes
def removed(report) -> dict[tuple[str, int], list[int]]:
    return {(e["tensor"], e["axis"]): e["indices"] for e in report.removed}


def check_prune(model, ratio: float = 0.5, tol: float = TOL, **prune_kw):
    """Prune, and prove it with the zeroing oracle; returns (pruned, report)."""
    prune_kw.setdefault("round_to", 1)  # index maps at the exact ratio, not the runtime's channel multiples
    pruned, report = spa.prune(model, ratio=ratio, **prune_kw)
    assert report.removed, "nothing was removed"
    error = max_relative_error(model, pruned, report.removed)
    assert error < tol, f"zeroing oracle: relative error {error:.3g}"
    return pruned, report


def ort_zeroing_error(model: onnx.ModelProto, pruned: onnx.ModelProto, removed_slices: list[dict]) -> float:
    """The zeroing oracle in plain onnxruntime, for models spa.oracle cannot load (it checks them)."""
    import onnxruntime as ort
    from spa.runtime import random_inputs

    zeroed = onnx.ModelProto()
    zeroed.CopyFrom(model)
    values = {t.name: numpy_helper.to_array(t).copy() for t in zeroed.graph.initializer}
    for e in removed_slices:
        index = [slice(None)] * values[e["tensor"]].ndim
        index[e["axis"]] = e["indices"]
        values[e["tensor"]][tuple(index)] = 0
    del zeroed.graph.initializer[:]
    zeroed.graph.initializer.extend(numpy_helper.from_array(v, n) for n, v in values.items())
    feeds = random_inputs(model)
    want, got = (ort.InferenceSession(m.SerializeToString()).run(None, feeds) for m in (zeroed, pruned))
    return max(float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)) for a, b in zip(got, want))


def init_shape(model: onnx.ModelProto, name: str) -> tuple:
    for t in model.graph.initializer:
        if t.name == name:
            return tuple(t.dims)
    raise KeyError(name)


def init_value(model: onnx.ModelProto, name: str) -> np.ndarray:
    """The value of initializer `name`."""
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    raise KeyError(name)


def node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def node_attr(model: onnx.ModelProto, name: str, attr: str):
    return next(helper.get_attribute_value(a) for a in node(model, name).attribute if a.name == attr)


def node_input_value(model: onnx.ModelProto, name: str, position: int) -> np.ndarray:
    return init_value(model, node(model, name).input[position])


def assert_blocked(model, tensor: str, axis: int, *words: str, analysis=None, **prune_kw):
    """(tensor, axis)'s group is blocked with a reason naming all `words`; a prune removes none of it
    (and whatever it removes elsewhere passes the oracle)."""
    group = group_of(analysis or spa.analyze(model), tensor, axis)
    assert group.blocked, f"not blocked:\n{group.describe()}"
    assert not group.prunable
    assert any(all(w in reason for w in words) for reason in group.blocked), group.blocked
    pruned, report = spa.prune(model, ratio=0.5, **prune_kw)
    cut = removed(report)
    for m in group.params:
        assert not set(cut.get((m.tensor, m.axis), ())) & set(m.indices.tolist()), f"{m.tensor} was pruned"
    if report.removed:
        assert max_relative_error(model, pruned, report.removed) < TOL
    return group
