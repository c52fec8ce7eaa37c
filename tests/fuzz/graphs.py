"""Random valid ONNX models for the property-based fuzzer (hypothesis strategies).

`models()` draws a `Drawn` model: an opset (17..21), an input X of shape (2, C, H, W) (C in 2..16,
H and W in 4..8), a stem Conv, then a random DAG of up to 10 *blocks* over NCHW feature maps, then a
head whose output (the logits of a final Gemm, MatMul or Conv) is the only graph output. Each block
reads one or more feature maps from a window over the six most recent ones (so graphs branch and
merge: a map may be read by several blocks, X included), and produces new ones. Every map that no
block reads is merged into the head, so nothing is left dangling.

Blocks (BLOCKS):
- conv: Conv plain, grouped or depthwise; 1x1 or 3x3; stride 1 or 2; pads, SAME_UPPER or dilated;
  with or without bias; sometimes the same weights run over a second map (a shared layer);
- conv_transpose: ConvTranspose, grouped, stride 1 or 2 (upsampling);
- norm: BatchNormalization, InstanceNormalization, GroupNormalization (opset 21: GroupNormalization-18
  is deprecated and onnx.checker refuses it), LayerNormalization over channels (NHWC between two
  Transposes) or over (C, H, W);
- act: Relu, Sigmoid, Tanh, LeakyRelu, Clip (bounds around zero or not), HardSwish, Softplus, PRelu
  (per-channel or scalar slopes), Dropout, Identity, Elu, Abs, a Cast to double and back;
- pool: MaxPool / AveragePool (3x3 stride 1, or 2x2 stride 2); resize: Resize nearest or linear by
  scales or sizes (with `axes` at opset 18+), up, down or the same size; pad: Pad spatial (constant,
  reflect, edge) or on the channel axis (constant, reflect), pads for every axis or with `axes`;
- const: Mul / Add / Sub by per-channel, spatial, (C, H, W) or scalar constants; Div only by constants
  that no channel group contains (scalars, (1, 1, H, W)), so that the zeroing oracle never divides
  by a zeroed channel;
- se: squeeze-excitation (GlobalAveragePool or ReduceMean over space, 1x1 Convs; or torch style with
  Flatten, two Gemms and a Reshape back), Sigmoid or HardSigmoid gate, Mul;
- context: GlobalAveragePool, 1x1 Conv, Resize (sizes) or Expand back to H x W, Add or Concat;
- channel_reduce: ReduceMean / ReduceSum over channels, broadcast back by Mul or Add;
- split / slice on the channel axis: Split by sizes, equally or num_outputs (every part becomes a
  map); Slice with positive or negative bounds, axes given (1 or -3) or not, step 1 or 2;
- concat: two or three maps of the same spatial size (the same map twice allowed), axis 1 or -3;
- merge: Add / Sub / Mul / Max / Min / Sum / Mean of two or three maps (1x1 projections to match);
- shuffle: channel shuffle Reshape (N, g, C/g, H, W) - Transpose - Reshape, shapes with 0 and -1;
- group_view: Reshape (N, g, C/g, H, W) - Relu or Mul by per-group or within-group constants -
  Reshape back, or a GroupNorm written Reshape (N, g, -1) - InstanceNormalization - Reshape - Mul - Add;
- roundtrip: Flatten (axis 1, 2 or 3) and Reshape back, Reshape (N, C, HW) - Relu - Reshape back,
  Unsqueeze - Sigmoid - Squeeze, a 1-D Conv over (N, C, HW), a constant on the left of a MatMul
  (W (C2, C) @ (N, C, HW));
- nhwc: Transpose to NHWC, one or two of MatMul over channels (with bias), LayerNorm, Mul by a (C,)
  constant, Relu, Softmax over channels, Transpose back;
- sequence: to (N, HW, C) by Reshape-Transpose or Transpose-Reshape, one to three of MatMul layers,
  activations, LayerNorm, multi-head self-attention (Q, K, V MatMuls, heads split by Reshape, Q K^T
  and P V products, Softmax over keys, heads merged, output MatMul; with or without a residual),
  an MLP with a residual; back to NCHW;
- gather (Gather on channels, constant indices with repeats and negatives), tile (Tile of the
  channels; Expand of one batch row back over the batch), depth_space (SpaceToDepth, DepthToSpace DCR
  and CRD), einsum (1x1 convolution as Einsum, weight first or second, with an ellipsis or not).

Heads: GlobalAveragePool / GlobalMaxPool / ReduceMean + Flatten or Reshape + Gemm (transB, bias as
(K,) or (1, K) or none, alpha drawn), Flatten + Gemm, Reshape + MatMul (+ Add), a Conv, or a
sequence head (to (N, T, C), MatMul, ReduceMean over tokens, Gemm). Several open maps are
concatenated, summed after projections, or pooled and concatenated as vectors.

Per model, also drawn: whether every intermediate shape is stated in value_info (as exporters do),
whether weights may be Constant nodes or Identity copies of initializers, and whether Reshape shapes
may read sizes at run time (Shape or Shape-Gather pieces in a Concat, as exporters write them). `models(avoid=...)`
leaves features out (FEATURES): "constant" and "identity" weights, "pad_value" (Pad with a nonzero
constant value).

Weights come from a numpy generator seeded by the draw (scaled by 1/sqrt(fan-in)); shapes are
tracked while building and checked against ONNX shape inference; every model is checked with
onnx.checker (full check) and run in onnxruntime (finite output of the expected shape) before it
is returned. An invalid model is a bug of this generator and raises GeneratorBug.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper, shape_inference

OPSETS = (17, 18, 19, 20, 21)
IR_VERSION = 10  # onnxruntime refuses the IR version onnx.helper picks by default
BATCH = 2
MAX_CHANNELS = 16
MAX_SPATIAL = 16
WINDOW = 6  # blocks read from the most recent WINDOW feature maps
INT64_MAX = 2**63 - 1
PARAM_FORMS = ("constant", "identity")  # forms of weights besides initializers
FEATURES = PARAM_FORMS + ("pad_value",)  # what models(avoid=...) can leave out


class GeneratorBug(AssertionError):
    """The generator built a model that is not valid: a bug of the generator, not of SPA."""


@dataclass
class Drawn:
    """A drawn model, with the recipe that built it (for reading failures)."""

    model: onnx.ModelProto
    opset: int
    seed: int
    recipe: list[str] = field(default_factory=list)
    output_shape: tuple = ()

    def __repr__(self) -> str:
        return f"Drawn(opset={self.opset}, seed={self.seed}, recipe={self.recipe}, output={self.output_shape})"


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


class Net:
    """An ONNX graph grown node by node, with every tensor's shape tracked."""

    def __init__(self, opset: int, seed: int):
        self.opset = opset
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.shapes: dict[str, tuple] = {}
        self.declared_types: dict[str, int] = {}  # tensors that are not float32
        self.inputs: list[onnx.ValueInfoProto] = []
        self.maps: list[str] = []  # feature maps (N, C, H, W) blocks produced, in order
        self.consumed: set[str] = set()
        self.recipe: list[str] = []
        self.count = 0
        self.declared: list[str] = []  # tensors whose shapes the model states in value_info
        self.declare_all = False  # state every intermediate shape (as exporters do)
        self.param_forms: tuple[str, ...] = ()  # other forms of weights: "constant" nodes, "identity" copies
        self.dynamic_shapes = False  # Reshape shapes may read sizes at run time (Shape, Gather, Concat)
        self.avoid: frozenset[str] = frozenset()  # FEATURES left out
        # Pads and Resizes given `axes`, and their inputs written for every axis (see `model`).
        self.with_axes: list[tuple[onnx.NodeProto, list[str]]] = []

    # ------------------------------------------------------------------ tensors
    def fresh(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def input(self, shape) -> str:
        self.inputs.append(helper.make_tensor_value_info("X", TensorProto.FLOAT, list(shape)))
        self.shapes["X"] = tuple(shape)
        self.maps.append("X")
        return "X"

    def array(self, value, prefix: str) -> str:
        value = np.asarray(value)
        if value.dtype == np.float64:
            value = value.astype(np.float32)
        name = self.fresh(prefix)
        self.inits.append(numpy_helper.from_array(value, name))
        self.shapes[name] = tuple(value.shape)
        return name

    def weight(self, shape, fan_in: int | None = None, prefix: str = "w") -> str:
        scale = 1.0 / math.sqrt(fan_in) if fan_in else 1.0
        return self.float_param(self.rng.standard_normal(shape) * scale, prefix)

    def float_param(self, value, prefix: str) -> str:
        """A float parameter: an initializer, or (when the model draws it so) a Constant node or an
        Identity copy of an initializer, as exporters write them."""
        form = self.rng.choice(["initializer"] + list(self.param_forms))
        if form == "initializer":
            return self.array(value, prefix)
        value = np.asarray(value, dtype=np.float32)
        if form == "constant":
            name = self.fresh(prefix)
            self.nodes.append(helper.make_node("Constant", [], [name], name=f"{name}_const",
                                               value=numpy_helper.from_array(value, name)))
            self.shapes[name] = tuple(value.shape)
            return name
        source = self.array(value, prefix)
        return self.op("Identity", [source], value.shape)

    def uniform(self, shape, low: float, high: float, prefix: str = "c") -> str:
        return self.float_param(self.rng.uniform(low, high, shape), prefix)

    def ints(self, values, prefix: str = "shape") -> str:
        return self.array(np.asarray(values, dtype=np.int64), prefix)

    # ------------------------------------------------------------------ nodes
    def op(self, op_type: str, inputs, shape, outputs: int = 1, **attrs):
        """Add a node; `shape` is its output's shape (a list of shapes when outputs > 1)."""
        name = self.fresh(op_type.lower())
        outs = [f"{name}.y"] if outputs == 1 else [f"{name}.y{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, **attrs))
        self.consumed.update(i for i in inputs if i)
        shapes = [shape] if outputs == 1 else shape
        for o, s in zip(outs, shapes):
            self.shapes[o] = tuple(int(d) for d in s)
        return outs[0] if outputs == 1 else outs

    def shape(self, name: str) -> tuple:
        return self.shapes[name]

    # ------------------------------------------------------------------ common layers
    def conv(self, x: str, cout: int, k: int = 1, group: int = 1, bias: bool = True, stride: int = 1) -> str:
        n, c, h, w = self.shape(x)
        p = k // 2
        inputs = [x, self.weight((cout, c // group, k, k), c // group * k * k)]
        if bias:
            inputs.append(self.weight((cout,), 4))
        oh, ow = (h + 2 * p - k) // stride + 1, (w + 2 * p - k) // stride + 1
        attrs = dict(kernel_shape=[k, k], pads=[p] * 4)
        if group > 1:
            attrs["group"] = group
        if stride > 1:
            attrs["strides"] = [stride, stride]
        return self.op("Conv", inputs, (n, cout, oh, ow), **attrs)

    def reshape(self, x: str, entries, shape) -> str:
        """Reshape x; with `dynamic_shapes`, entries equal to x's size on the same axis (or a 0 there)
        may be read at run time, as exporters write them: Shape (or Shape, Gather), Concat."""
        entries = list(entries)
        s = self.shape(x)
        runtime = [i for i, e in enumerate(entries) if self.dynamic_shapes and i < len(s) and e in (s[i], 0)
                   and self.rng.random() < 0.5]
        if not runtime:
            return self.op("Reshape", [x, self.ints(entries)], shape)
        pieces, const = [], []
        for i, e in enumerate(entries):
            if i in runtime:
                if const:
                    pieces.append(self.ints(const))
                    const = []
                if self.rng.random() < 0.5:
                    piece = self.op("Shape", [x], (1,), start=i, end=i + 1)
                else:
                    whole = self.op("Shape", [x], (len(s),))
                    self.declared_types[whole] = TensorProto.INT64
                    piece = self.op("Gather", [whole, self.ints([i], "index")], (1,), axis=0)
                self.declared_types[piece] = TensorProto.INT64
                pieces.append(piece)
            else:
                const.append(e)
        if const:
            pieces.append(self.ints(const))
        target = self.op("Concat", pieces, (len(entries),), axis=0)
        self.declared_types[target] = TensorProto.INT64
        self.recipe.append(f"  (shape {entries} read at run time at {runtime})")
        return self.op("Reshape", [x, target], shape)

    def transpose(self, x: str, perm) -> str:
        s = self.shape(x)
        return self.op("Transpose", [x], [s[p] for p in perm], perm=list(perm))

    def reduce_mean(self, x: str, axes, keepdims: int) -> str:
        s = self.shape(x)
        axes_n = [a % len(s) for a in axes]
        out = [1 if i in axes_n else d for i, d in enumerate(s)] if keepdims else [d for i, d in enumerate(s) if i not in axes_n]
        if self.opset >= 18:
            return self.op("ReduceMean", [x, self.ints(list(axes), "axes")], out, keepdims=keepdims)
        return self.op("ReduceMean", [x], out, axes=list(axes), keepdims=keepdims)

    def unsqueeze(self, x: str, axes) -> str:
        s = list(self.shape(x))
        for a in sorted(axes):
            s.insert(a, 1)
        return self.op("Unsqueeze", [x, self.ints(list(axes), "axes")], s)

    def squeeze(self, x: str, axes) -> str:
        s = self.shape(x)
        return self.op("Squeeze", [x, self.ints(list(axes), "axes")], [d for i, d in enumerate(s) if i not in axes])

    def layer_norm(self, x: str, axis: int, bias: bool = True) -> str:
        s = self.shape(x)
        norm_shape = s[axis % len(s):]
        inputs = [x, self.uniform(norm_shape, 0.5, 1.5, "ln_scale")]
        if bias:
            inputs.append(self.weight(norm_shape, 4, "ln_bias"))
        return self.op("LayerNormalization", inputs, s, axis=axis)

    def matmul(self, x: str, n_out: int, bias: bool) -> str:
        s = self.shape(x)
        y = self.op("MatMul", [x, self.weight((s[-1], n_out), s[-1])], s[:-1] + (n_out,))
        if bias:
            y = self.op("Add", [y, self.weight((n_out,), 4, "b")], s[:-1] + (n_out,))
        return y

    def gemm(self, v: str, k: int, trans_b: bool, bias: str, alpha: float) -> str:
        n, f = self.shape(v)
        w = self.weight((k, f) if trans_b else (f, k), f)
        inputs = [v, w]
        if bias == "vector":
            inputs.append(self.weight((k,), 4, "b"))
        elif bias == "row":
            inputs.append(self.weight((1, k), 4, "b"))
        attrs = {"transB": 1} if trans_b else {}
        if alpha != 1.0:
            attrs["alpha"] = alpha
        return self.op("Gemm", inputs, (n, k), **attrs)

    # ------------------------------------------------------------------ the model
    def model(self, output: str) -> onnx.ModelProto:
        # onnxruntime 1.31 fails to run Transpose -> Pad or Resize (given axes) -> Transpose once
        # its transpose optimizer pushes the Transposes through them ("Gather ... indices element
        # out of data bounds", "Number of elements of input 'sizes' (0) does not match the number of
        # axes"): with a Transpose anywhere, such nodes are written for every axis, without axes.
        if any(n.op_type == "Transpose" for n in self.nodes) and self.with_axes:
            for node, full in self.with_axes:
                del node.input[:]
                node.input.extend(full)
                kept = [a for a in node.attribute if a.name != "axes"]
                del node.attribute[:]
                node.attribute.extend(kept)
            self.recipe.append("(Pad/Resize axes written in full: the model has a Transpose)")
        out = helper.make_tensor_value_info(output, TensorProto.FLOAT, list(self.shape(output)))
        declared = [o for n in self.nodes for o in n.output] if self.declare_all else self.declared
        value_info = [helper.make_tensor_value_info(t, self.declared_types.get(t, TensorProto.FLOAT), list(self.shape(t)))
                      for t in dict.fromkeys(declared) if t != output]
        graph = helper.make_graph(self.nodes, "fuzz", self.inputs, [out], self.inits, value_info=value_info)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)], ir_version=IR_VERSION)


# ============================================================================ blocks
# Each block: (net, draw, x) -> None; it reads x (and maybe other maps) and appends the feature
# maps it produces to net.maps.
def channels():
    return st.integers(2, MAX_CHANNELS)


def b_conv(net: Net, draw, x: str, kinds=("plain", "grouped", "depthwise")):
    n, c, h, w = net.shape(x)
    kind = draw(st.sampled_from(kinds))
    if c == 1 and kind == "grouped":
        kind = "plain"
    k = draw(st.sampled_from([1, 3]))
    stride = draw(st.sampled_from([1, 2])) if min(h, w) >= 4 else 1
    if kind == "plain":
        group, cout = 1, draw(channels())
    elif kind == "grouped":
        group = draw(st.sampled_from(divisors(c)[1:]))
        cout = group * draw(st.integers(1, max(1, MAX_CHANNELS // group)))
    else:
        group = c
        cout = c * draw(st.integers(1, max(1, MAX_CHANNELS // c)))
    bias = draw(st.booleans())
    padding = draw(st.sampled_from(["pads", "pads", "same_upper", "dilated"])) if k == 3 and stride == 1 else "pads"
    net.recipe.append(f"conv({x}: {kind} k{k} s{stride} g{group} {c}->{cout}{' bias' if bias else ''} {padding})")
    if padding == "pads":
        y = net.conv(x, cout, k, group, bias, stride)
    else:
        inputs = [x, net.weight((cout, c // group, k, k), c // group * k * k)] + ([net.weight((cout,), 4)] if bias else [])
        attrs = {"auto_pad": "SAME_UPPER"} if padding == "same_upper" else {"dilations": [2, 2], "pads": [2, 2, 2, 2]}
        y = net.op("Conv", inputs, (n, cout, h, w), kernel_shape=[k, k], group=group, **attrs)
    net.maps.append(y)
    # Sometimes the same weights run over a second map with as many channels (a shared layer).
    twins = [m for m in net.maps[-WINDOW:-1] if net.shape(m)[1] == c and m != x and min(net.shape(m)[2:]) >= 2]
    if twins and draw(st.integers(0, 3)) == 0:
        other = draw(st.sampled_from(twins))
        conv = net.nodes[-1]
        oh, ow = net.shape(other)[2:]
        if padding == "pads":
            p = k // 2
            oh, ow = (oh + 2 * p - k) // stride + 1, (ow + 2 * p - k) // stride + 1
        attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
        net.recipe.append(f"  shared with {other}")
        net.maps.append(net.op("Conv", [other] + list(conv.input[1:]), (n, cout, oh, ow), **attrs))


def b_conv_transpose(net: Net, draw, x: str):
    n, c, h, w = net.shape(x)
    modes = ["same1", "same3"] + (["up2"] if 2 * max(h, w) <= MAX_SPATIAL else [])
    mode = draw(st.sampled_from(modes))
    group = draw(st.sampled_from(divisors(c)))
    cout = group * draw(st.integers(1, max(1, MAX_CHANNELS // group)))
    k, s, p = {"same1": (1, 1, 0), "same3": (3, 1, 1), "up2": (2, 2, 0)}[mode]
    bias = draw(st.booleans())
    inputs = [x, net.weight((c, cout // group, k, k), c // group * k * k)]
    if bias:
        inputs.append(net.weight((cout,), 4))
    attrs = dict(kernel_shape=[k, k], pads=[p] * 4, strides=[s, s])
    if group > 1:
        attrs["group"] = group
    oh, ow = (h - 1) * s - 2 * p + k, (w - 1) * s - 2 * p + k
    net.recipe.append(f"conv_transpose({x}: {mode} g{group} {c}->{cout})")
    net.maps.append(net.op("ConvTranspose", inputs, (n, cout, oh, ow), **attrs))


def b_norm(net: Net, draw, x: str):
    n, c, h, w = net.shape(x)
    # GroupNormalization-18 is deprecated (onnx.checker refuses it): opset 21 only
    kinds = ["batch", "instance", "layer_nhwc", "layer_chw"] + (["group"] if net.opset >= 21 else [])
    kind = draw(st.sampled_from(kinds))
    s = net.shape(x)
    if kind == "batch":
        y = net.op("BatchNormalization", [x, net.uniform((c,), 0.5, 1.5, "bn_scale"), net.weight((c,), 4, "bn_b"),
                                          net.weight((c,), 4, "bn_mean"), net.uniform((c,), 0.5, 2.0, "bn_var")], s,
                   epsilon=1e-5)
    elif kind == "instance":
        y = net.op("InstanceNormalization", [x, net.uniform((c,), 0.5, 1.5, "in_scale"), net.weight((c,), 4, "in_b")], s)
    elif kind == "group":
        groups = draw(st.sampled_from(divisors(c)))
        y = net.op("GroupNormalization", [x, net.uniform((c,), 0.5, 1.5, "gn_scale"), net.weight((c,), 4, "gn_b")], s,
                   num_groups=groups)
        net.declared.append(y)  # ONNX shape inference gives GroupNormalization-21 no output type
        kind += f"{groups}"
    elif kind == "layer_nhwc":
        t = net.transpose(x, (0, 2, 3, 1))
        y = net.transpose(net.layer_norm(t, -1, draw(st.booleans())), (0, 3, 1, 2))
    else:
        y = net.layer_norm(x, draw(st.sampled_from([1, -3])), draw(st.booleans()))
    net.recipe.append(f"norm({x}: {kind})")
    net.maps.append(y)


def b_act(net: Net, draw, x: str):
    s = net.shape(x)
    kind = draw(st.sampled_from(["Relu", "Sigmoid", "Tanh", "LeakyRelu", "Clip", "HardSwish", "Softplus", "PRelu",
                                 "Dropout", "Identity", "Cast", "Elu", "Abs"]))
    if kind == "Cast":  # to double and back
        d = net.op("Cast", [x], s, to=TensorProto.DOUBLE)
        y = net.op("Cast", [d], s, to=TensorProto.FLOAT)
        net.declared_types[d] = TensorProto.DOUBLE
    elif kind == "LeakyRelu":
        y = net.op(kind, [x], s, alpha=0.1)
    elif kind == "Clip":
        low, high = draw(st.sampled_from([(0.0, 6.0), (-1.0, 1.0), (None, 1.0), (0.0, None), (0.25, 2.0), (-2.0, -0.5)]))
        inputs = [x, net.array(np.float32(low), "min") if low is not None else ""]
        if high is not None:
            inputs.append(net.array(np.float32(high), "max"))
        y = net.op(kind, inputs, s)
        kind += f"[{low},{high}]"
    elif kind == "PRelu":
        slope_shape = draw(st.sampled_from([(s[1], 1, 1), (1,), (1, s[1], 1, 1)]))
        y = net.op(kind, [x, net.uniform(slope_shape, 0.05, 0.3, "slope")], s)
        kind += f"{slope_shape}"
    else:
        y = net.op(kind, [x], s)
    net.recipe.append(f"act({x}: {kind})")
    net.maps.append(y)


def b_pool(net: Net, draw, x: str):
    n, c, h, w = net.shape(x)
    op = draw(st.sampled_from(["MaxPool", "AveragePool"]))
    modes = ["k3s1"] + (["k2s2"] if min(h, w) >= 4 else [])
    mode = draw(st.sampled_from(modes))
    if mode == "k3s1":
        y = net.op(op, [x], (n, c, h, w), kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
    else:
        y = net.op(op, [x], (n, c, h // 2, w // 2), kernel_shape=[2, 2], strides=[2, 2])
    net.recipe.append(f"pool({x}: {op} {mode})")
    net.maps.append(y)


def b_resize(net: Net, draw, x: str):
    n, c, h, w = net.shape(x)
    sizes = [(h, w)] + ([(2 * h, 2 * w)] if 2 * max(h, w) <= MAX_SPATIAL else []) + (
        [(h // 2, w // 2)] if min(h, w) >= 4 else [])
    oh, ow = draw(st.sampled_from(sizes))
    how = draw(st.sampled_from(["scales", "sizes"]))
    if how == "scales" and (oh, ow) not in ((h, w), (2 * h, 2 * w)):
        how = "sizes"
    with_axes = net.opset >= 18 and draw(st.booleans())
    mode = draw(st.sampled_from(["nearest", "linear"]))
    attrs = {"mode": mode}
    if with_axes:
        attrs["axes"] = [2, 3]
    if how == "scales":
        f = float(oh // h)
        full = [x, "", net.array(np.array([1.0, 1.0, f, f], dtype=np.float32), "scales")]
        inputs = [x, "", net.array(np.array([f, f], dtype=np.float32), "scales")] if with_axes else full
    else:
        full = [x, "", "", net.ints([n, c, oh, ow], "sizes")]
        inputs = [x, "", "", net.ints([oh, ow], "sizes")] if with_axes else full
    net.recipe.append(f"resize({x}: {how} {h}x{w}->{oh}x{ow} {mode}{' axes' if with_axes else ''})")
    net.maps.append(net.op("Resize", inputs, (n, c, oh, ow), **attrs))
    if with_axes:
        net.with_axes.append((net.nodes[-1], full))


def b_pad(net: Net, draw, x: str):
    n, c, h, w = net.shape(x)
    kinds = ["spatial_constant", "spatial_edge"] + (["spatial_reflect"] if min(h, w) >= 2 else [])
    if c + 4 <= MAX_CHANNELS + 2:
        kinds += ["channel_constant", "channel_reflect"]
    kind = draw(st.sampled_from(kinds))
    with_axes = net.opset >= 18 and draw(st.booleans())
    if kind.startswith("spatial"):
        p = 1
        axes, begin, end = [2, 3], [p, p], [p, p]
        out = (n, c, h + 2 * p, w + 2 * p)
        if max(out[2:]) > MAX_SPATIAL:
            kind, axes, begin, end, out = "spatial_constant", [2, 3], [0, 0], [0, 0], (n, c, h, w)
    else:
        top = 2 if kind == "channel_constant" else min(2, c - 1)
        b, e = draw(st.integers(0, top)), draw(st.integers(0, top))
        axes, begin, end, out = [1], [b], [e], (n, c + b + e, h, w)
    full_b, full_e = [0] * 4, [0] * 4
    for a, bb, ee in zip(axes, begin, end):
        full_b[a], full_e[a] = bb, ee
    full_pads = net.ints(full_b + full_e, "pads")
    mode = kind.split("_")[1]
    inputs = [x, net.ints(begin + end, "pads") if with_axes else full_pads]
    value = None
    if mode == "constant" and draw(st.integers(0, 2)):
        value = draw(st.sampled_from([0.0] if "pad_value" in net.avoid else [0.0, 0.5, -1.0]))
        inputs.append(net.array(np.float32(value), "pad_value"))
    if with_axes:
        inputs += [""] * (3 - len(inputs)) + [net.ints(axes, "axes")]
    net.recipe.append(f"pad({x}: {kind} {axes} {begin} {end}{' axes' if with_axes else ''}"
                      f"{f' value {value}' if value is not None else ''})")
    y = net.op("Pad", inputs, out, mode=mode)
    if with_axes:
        net.with_axes.append((net.nodes[-1], [x, full_pads] + inputs[2:3]))
    net.maps.append(y)


def b_const(net: Net, draw, x: str):
    n, c, h, w = net.shape(x)
    op = draw(st.sampled_from(["Mul", "Add", "Sub", "Div"]))
    if op == "Div":  # only by constants that are not members of a channel group
        shape = draw(st.sampled_from([(), (1,), (1, 1, h, w)]))
        const = net.uniform(shape, 0.5, 2.0, "div")
    else:
        shape = draw(st.sampled_from([(1, c, 1, 1), (c, 1, 1), (), (1, 1, h, w), (c, h, w)]))
        const = net.uniform(shape, 0.5, 1.5, "k") if op == "Mul" else net.weight(shape, 4, "k")
    first = draw(st.booleans()) or op in ("Div", "Sub")
    y = net.op(op, [x, const] if first else [const, x], (n, c, h, w))
    net.recipe.append(f"const({x}: {op} {shape})")
    net.maps.append(y)


def b_se(net: Net, draw, x: str):
    n, c, h, w = net.shape(x)
    pool = draw(st.sampled_from(["gap", "reduce_mean", "linear"]))
    if pool == "linear":  # torch style: GAP, Flatten, Linear (Gemm), Relu, Linear, Sigmoid, Reshape, Mul
        r = draw(st.integers(1, max(1, c // 2)))
        v = net.op("Flatten", [net.op("GlobalAveragePool", [x], (n, c, 1, 1))], (n, c))
        v = net.op("Relu", [net.gemm(v, r, True, "vector", 1.0)], (n, r))
        v = net.op("Sigmoid", [net.gemm(v, c, draw(st.booleans()), "vector", 1.0)], (n, c))
        gate = net.reshape(v, draw(st.sampled_from([[n, c, 1, 1], [0, -1, 1, 1], [n, c, 1, -1]])), (n, c, 1, 1))
        net.recipe.append(f"se({x}: linear r{r})")
        net.maps.append(net.op("Mul", [x, gate], (n, c, h, w)))
        return
    squeezed = net.op("GlobalAveragePool", [x], (n, c, 1, 1)) if pool == "gap" else net.reduce_mean(x, [2, 3], 1)
    r = draw(st.integers(1, max(1, c // 2)))
    gate = net.op("Relu", [net.conv(squeezed, r)], (n, r, 1, 1))
    gate_op = draw(st.sampled_from(["Sigmoid", "HardSigmoid"]))
    gate = net.op(gate_op, [net.conv(gate, c)], (n, c, 1, 1))
    net.recipe.append(f"se({x}: {pool} r{r} {gate_op})")
    net.maps.append(net.op("Mul", [x, gate] if draw(st.booleans()) else [gate, x], (n, c, h, w)))


def b_context(net: Net, draw, x: str):
    n, c, h, w = net.shape(x)
    pooled = net.op("GlobalAveragePool", [x], (n, c, 1, 1))
    join = draw(st.sampled_from(["add", "concat"]))
    c2 = c if join == "add" else draw(channels())
    v = net.conv(pooled, c2)
    back = draw(st.sampled_from(["resize", "expand"]))
    if back == "resize":
        b = net.op("Resize", [v, "", "", net.ints([n, c2, h, w], "sizes")], (n, c2, h, w), mode="nearest")
    else:
        b = net.op("Expand", [v, net.ints([n, c2, h, w] if draw(st.booleans()) else [1, 1, h, w])], (n, c2, h, w))
    if join == "add":
        y = net.op("Add", [x, b], (n, c, h, w))
    else:
        y = net.op("Concat", [x, b], (n, c + c2, h, w), axis=1)
    net.recipe.append(f"context({x}: {back} {join} {c2})")
    net.maps.append(y)


CHANNEL_SUMS = ("ReduceSum", "ReduceL1", "ReduceL2", "ReduceSumSquare", "LpNormalization", "Einsum")


def b_channel_reduce(net: Net, draw, x: str, ops=("ReduceMean",) + CHANNEL_SUMS):
    """A reduction over the channels (a mean, or sums that are exact where removed channels are
    zero), broadcast back onto the map; or LpNormalization over the channels."""
    n, c, h, w = net.shape(x)
    op = draw(st.sampled_from(ops))
    if op == "LpNormalization":
        p = draw(st.sampled_from([1, 2]))
        net.recipe.append(f"channel_reduce({x}: {op} p{p})")
        net.maps.append(net.op(op, [x], (n, c, h, w), axis=1, p=p))
        return
    if op == "ReduceMean":
        r = net.reduce_mean(x, [1], 1)
    elif op == "Einsum":  # a dot product of the map with itself over the channels
        r = net.unsqueeze(net.op("Einsum", [x, x], (n, h, w), equation="nchw,nchw->nhw"), [1])
    elif op == "ReduceSum" or net.opset >= 18:
        r = net.op(op, [x, net.ints([1], "axes")], (n, 1, h, w), keepdims=1)
    else:
        r = net.op(op, [x], (n, 1, h, w), axes=[1], keepdims=1)
    y = net.op(draw(st.sampled_from(["Mul", "Add"])), [x, r], (n, c, h, w))
    net.recipe.append(f"channel_reduce({x}: {op})")
    net.maps.append(y)


def b_split(net: Net, draw, x: str):
    n, c, h, w = net.shape(x)
    parts = draw(st.integers(2, min(3, c)))
    how = draw(st.sampled_from(["sizes", "equal", "num_outputs"]))
    if how == "equal" and (c % parts or net.opset >= 18):  # from 18, an equal split needs num_outputs
        how = "num_outputs" if net.opset >= 18 else "sizes"
    if how == "num_outputs":
        chunk = -(-c // parts)
        if net.opset < 18 or c - chunk * (parts - 1) < 1:
            how = "sizes"
    axis = draw(st.sampled_from([1, -3]))
    if how == "sizes":
        cuts = sorted(draw(st.lists(st.integers(1, c - 1), min_size=parts - 1, max_size=parts - 1, unique=True)))
        sizes = np.diff([0] + cuts + [c]).tolist()
        inputs, attrs = [x, net.ints(sizes, "split")], {}
    elif how == "equal":
        sizes = [c // parts] * parts
        inputs, attrs = [x], {}
    else:
        chunk = -(-c // parts)
        sizes = [chunk] * (parts - 1) + [c - chunk * (parts - 1)]
        inputs, attrs = [x], {"num_outputs": parts}
    outs = net.op("Split", inputs, [(n, s, h, w) for s in sizes], outputs=parts, axis=axis, **attrs)
    net.recipe.append(f"split({x}: {how} {sizes} axis {axis})")
    net.maps.extend(outs)


def b_slice(net: Net, draw, x: str):
    n, c, h, w = net.shape(x)
    start = draw(st.integers(0, c - 1))
    end = draw(st.integers(start + 1, c))
    step = draw(st.sampled_from([1, 1, 1, 2]))
    out_c = len(range(start, end, step))
    s_val = start - c if draw(st.booleans()) else start
    e_val = draw(st.sampled_from([end, end - c if end < c else INT64_MAX]))
    axes_form = draw(st.sampled_from(["axes1", "axes-3", "none"]))
    if axes_form == "none":
        starts, ends, axes = [0, s_val], [INT64_MAX, e_val], None
    else:
        starts, ends, axes = [s_val], [e_val], [1 if axes_form == "axes1" else -3]
    inputs = [x, net.ints(starts, "starts"), net.ints(ends, "ends")]
    if axes is not None or step != 1:
        inputs.append(net.ints(axes if axes is not None else [0, 1], "axes"))
    if step != 1:
        inputs.append(net.ints([1] * (len(starts) - 1) + [step], "steps"))
    net.recipe.append(f"slice({x}: [{s_val}:{e_val}:{step}] {axes_form})")
    net.maps.append(net.op("Slice", inputs, (n, out_c, h, w)))


def same_spatial(net: Net, x: str) -> list[str]:
    """Maps of the window with the spatial size of x (x included)."""
    return [m for m in net.maps[-WINDOW:] if net.shape(m)[2:] == net.shape(x)[2:]]


def b_concat(net: Net, draw, x: str):
    n, c, h, w = net.shape(x)
    others = [m for m in same_spatial(net, x) if net.shape(m)[1] + c <= 2 * MAX_CHANNELS]
    k = draw(st.integers(1, 2))
    chosen = [x] + [draw(st.sampled_from(others)) for _ in range(k)]
    total = sum(net.shape(m)[1] for m in chosen)
    axis = draw(st.sampled_from([1, -3]))
    net.recipe.append(f"concat({', '.join(chosen)} axis {axis})")
    net.maps.append(net.op("Concat", chosen, (n, total, h, w), axis=axis))


def b_merge(net: Net, draw, x: str):
    n, c, h, w = net.shape(x)
    others = same_spatial(net, x)
    op = draw(st.sampled_from(["Add", "Add", "Sub", "Mul", "Max", "Min", "Sum", "Mean"]))
    k = draw(st.integers(1, 2)) if op in ("Sum", "Mean", "Max", "Min") else 1
    chosen = [x]
    for _ in range(k):
        m = draw(st.sampled_from(others))
        if net.shape(m)[1] != c:
            m = net.conv(m, c, 1, 1, draw(st.booleans()))
        chosen.append(m)
    net.recipe.append(f"merge({op} {', '.join(chosen)})")
    net.maps.append(net.op(op, chosen, (n, c, h, w)))


def b_shuffle(net: Net, draw, x: str):
    n, c, h, w = net.shape(x)
    g = draw(st.sampled_from([d for d in divisors(c) if 1 < d < c]))
    first = draw(st.sampled_from([[n, g, c // g, h, w], [0, g, -1, h, w], [n, g, c // g, -1, w]]))
    back = draw(st.sampled_from([[n, c, h, w], [0, -1, h, w], [n, c, h, -1], [-1, c, h, w]]))
    r = net.reshape(x, first, (n, g, c // g, h, w))
    t = net.transpose(r, (0, 2, 1, 3, 4))
    net.recipe.append(f"shuffle({x}: g{g} {first} {back})")
    net.maps.append(net.reshape(t, back, (n, c, h, w)))


def b_group_view(net: Net, draw, x: str):
    n, c, h, w = net.shape(x)
    g = draw(st.sampled_from([d for d in divisors(c) if 1 < d < c]))
    kind = draw(st.sampled_from(["relu", "mul_groups", "mul_within", "groupnorm"]))
    if kind == "groupnorm":
        r = net.reshape(x, draw(st.sampled_from([[n, g, -1], [0, g, -1], [n, g, c // g * h * w]])), (n, g, c // g * h * w))
        r = net.op("InstanceNormalization", [r, net.uniform((g,), 0.5, 1.5, "in_scale"), net.weight((g,), 4, "in_b")],
                   (n, g, c // g * h * w))
        y = net.reshape(r, draw(st.sampled_from([[n, c, h, w], [0, c, h, w], [n, -1, h, w]])), (n, c, h, w))
        y = net.op("Mul", [y, net.uniform((c, 1, 1), 0.5, 1.5, "gamma")], (n, c, h, w))
        y = net.op("Add", [y, net.weight((c, 1, 1), 4, "beta")], (n, c, h, w))
    else:
        r = net.reshape(x, draw(st.sampled_from([[n, g, c // g, h, w], [0, g, -1, h, w]])), (n, g, c // g, h, w))
        if kind == "relu":
            r = net.op("Relu", [r], (n, g, c // g, h, w))
        elif kind == "mul_groups":
            r = net.op("Mul", [r, net.uniform((1, g, 1, 1, 1), 0.5, 1.5, "k")], (n, g, c // g, h, w))
        else:
            r = net.op("Mul", [r, net.uniform((c // g, 1, 1), 0.5, 1.5, "k")], (n, g, c // g, h, w))
        y = net.reshape(r, draw(st.sampled_from([[n, c, h, w], [0, -1, h, w]])), (n, c, h, w))
    net.recipe.append(f"group_view({x}: g{g} {kind})")
    net.maps.append(y)


def b_roundtrip(net: Net, draw, x: str):
    n, c, h, w = net.shape(x)
    kind = draw(st.sampled_from(["flatten1", "flatten2", "flatten3", "reshape3", "unsqueeze", "conv1d", "left_matmul"]))
    if kind.startswith("flatten"):
        axis = int(kind[-1])
        lead = int(np.prod((n, c, h, w)[:axis]))
        f = net.op("Flatten", [x], (lead, int(np.prod((n, c, h, w)[axis:]))), axis=axis)
        y = net.reshape(f, draw(st.sampled_from([[n, c, h, w], [-1, c, h, w], [n, c, h, -1]])), (n, c, h, w))
    elif kind == "reshape3":
        r = net.reshape(x, draw(st.sampled_from([[n, c, h * w], [0, 0, -1], [n, -1, h * w]])), (n, c, h * w))
        r = net.op("Relu", [r], (n, c, h * w))
        y = net.reshape(r, [n, c, h, w] if draw(st.booleans()) else [0, 0, h, w], (n, c, h, w))
    elif kind == "conv1d":  # a 1-D convolution over the flattened space
        r = net.reshape(x, [n, c, h * w], (n, c, h * w))
        c2 = draw(channels())
        r = net.op("Conv", [r, net.weight((c2, c, 3), 3 * c), net.weight((c2,), 4)], (n, c2, h * w), kernel_shape=[3],
                   pads=[1, 1])
        y = net.reshape(r, [n, c2, h, w], (n, c2, h, w))
    elif kind == "left_matmul":  # W (C2, C) @ x (N, C, T): a constant on the left mixes channels
        r = net.reshape(x, [n, c, h * w], (n, c, h * w))
        c2 = draw(channels())
        r = net.op("MatMul", [net.weight((c2, c), c), r], (n, c2, h * w))
        y = net.reshape(r, [n, c2, h, w], (n, c2, h, w))
    else:
        u = net.unsqueeze(x, [2])
        u = net.op("Sigmoid", [u], (n, c, 1, h, w))
        y = net.squeeze(u, [2])
    net.recipe.append(f"roundtrip({x}: {kind})")
    net.maps.append(y)


def b_nhwc(net: Net, draw, x: str):
    n, c, h, w = net.shape(x)
    t = net.transpose(x, (0, 2, 3, 1))
    steps = draw(st.lists(st.sampled_from(["matmul", "layernorm", "mul", "relu", "softmax"]), min_size=1, max_size=2))
    for step in steps:
        cc = net.shape(t)[-1]
        if step == "matmul":
            t = net.matmul(t, draw(channels()), draw(st.booleans()))
        elif step == "layernorm":
            t = net.layer_norm(t, -1, draw(st.booleans()))
        elif step == "mul":
            t = net.op("Mul", [t, net.uniform((cc,), 0.5, 1.5, "k")], net.shape(t))
        elif step == "relu":
            t = net.op("Relu", [t], net.shape(t))
        else:
            t = net.op("Softmax", [t], net.shape(t), axis=-1)
    net.recipe.append(f"nhwc({x}: {steps})")
    net.maps.append(net.transpose(t, (0, 3, 1, 2)))


def to_sequence(net: Net, draw, x: str) -> str:
    """(N, C, H, W) -> (N, H*W, C), two ways."""
    n, c, h, w = net.shape(x)
    if draw(st.booleans()):
        return net.transpose(net.reshape(x, [n, c, h * w], (n, c, h * w)), (0, 2, 1))
    return net.reshape(net.transpose(x, (0, 2, 3, 1)), [n, h * w, c] if draw(st.booleans()) else [0, -1, c], (n, h * w, c))


def attention(net: Net, draw, t: str) -> str:
    n, T, c = net.shape(t)
    heads = draw(st.integers(1, 4))
    d = draw(st.integers(1, max(1, MAX_CHANNELS // heads // 2)))
    D = heads * d
    bias = draw(st.booleans())
    q, k, v = (net.matmul(t, D, bias) for _ in range(3))
    split = [n, T, heads, d] if draw(st.booleans()) else [0, 0, heads, -1]
    q = net.transpose(net.reshape(q, split, (n, T, heads, d)), (0, 2, 1, 3))  # (n, h, T, d)
    k = net.transpose(net.reshape(k, split, (n, T, heads, d)), (0, 2, 3, 1))  # (n, h, d, T)
    v = net.transpose(net.reshape(v, split, (n, T, heads, d)), (0, 2, 1, 3))  # (n, h, T, d)
    scores = net.op("MatMul", [q, k], (n, heads, T, T))
    scores = net.op("Mul", [scores, net.array(np.float32(1 / math.sqrt(d)), "scale")], (n, heads, T, T))
    p = net.op("Softmax", [scores], (n, heads, T, T), axis=-1)
    o = net.op("MatMul", [p, v], (n, heads, T, d))
    o = net.reshape(net.transpose(o, (0, 2, 1, 3)), [n, T, D] if draw(st.booleans()) else [0, 0, -1], (n, T, D))
    return net.matmul(o, c, draw(st.booleans()))


def sequence_steps(net: Net, draw, t: str, names: list[str]) -> str:
    steps = draw(st.lists(st.sampled_from(["linear", "act", "layernorm", "attention", "mlp"]), min_size=1, max_size=3))
    for step in steps:
        n, T, c = net.shape(t)
        if step == "linear":
            t = net.matmul(t, draw(channels()), draw(st.booleans()))
        elif step == "act":
            t = net.op(draw(st.sampled_from(["Relu", "Sigmoid", "Tanh"])), [t], net.shape(t))
        elif step == "layernorm":
            t = net.layer_norm(t, -1, draw(st.booleans()))
        elif step == "attention":
            a = attention(net, draw, t)
            t = net.op("Add", [t, a], net.shape(t)) if draw(st.booleans()) else a
        else:
            inner = net.matmul(t, draw(channels()), True)
            hidden = net.op("Relu", [inner], net.shape(inner))
            t = net.op("Add", [t, net.matmul(hidden, c, draw(st.booleans()))], (n, T, c))
        names.append(step)
    return t


def b_sequence(net: Net, draw, x: str):
    n, c, h, w = net.shape(x)
    t = to_sequence(net, draw, x)
    names: list[str] = []
    t = sequence_steps(net, draw, t, names)
    c2 = net.shape(t)[-1]
    if draw(st.booleans()):
        y = net.reshape(net.transpose(t, (0, 2, 1)), [n, c2, h, w] if draw(st.booleans()) else [0, 0, h, w], (n, c2, h, w))
    else:
        y = net.transpose(net.reshape(t, [n, h, w, c2], (n, h, w, c2)), (0, 3, 1, 2))
    net.recipe.append(f"sequence({x}: {names})")
    net.maps.append(y)


def b_gather(net: Net, draw, x: str):
    """Gather on the channel axis with constant indices (repeats and negative ones allowed)."""
    n, c, h, w = net.shape(x)
    picked = draw(st.lists(st.integers(-c, c - 1), min_size=1, max_size=MAX_CHANNELS))
    y = net.op("Gather", [x, net.ints(picked, "indices")], (n, len(picked), h, w), axis=1)
    net.recipe.append(f"gather({x}: {picked})")
    net.maps.append(y)


def b_tile(net: Net, draw, x: str):
    n, c, h, w = net.shape(x)
    kind = draw(st.sampled_from(["tile", "expand_batch"]))
    if kind == "tile":
        y = net.op("Tile", [x, net.ints([1, 2, 1, 1], "repeats")], (n, 2 * c, h, w))
    else:  # Expand a (1, C, H, W) slice of the batch back over the batch
        one = net.op("Slice", [x, net.ints([0], "starts"), net.ints([1], "ends"), net.ints([0], "axes")], (1, c, h, w))
        y = net.op("Expand", [one, net.ints([n, 1, 1, 1] if draw(st.booleans()) else [n, c, h, w], "shape")], (n, c, h, w))
        y = net.op("Add", [x, y], (n, c, h, w))
    net.recipe.append(f"tile({x}: {kind})")
    net.maps.append(y)


def depth_space_kinds(net: Net, x: str) -> list[str]:
    n, c, h, w = net.shape(x)
    return (["s2d"] if h % 2 == 0 and w % 2 == 0 and c <= MAX_CHANNELS else []) + (
        ["d2s_dcr", "d2s_crd"] if c % 4 == 0 and 2 * max(h, w) <= MAX_SPATIAL else [])


def b_depth_space(net: Net, draw, x: str):
    n, c, h, w = net.shape(x)
    kind = draw(st.sampled_from(depth_space_kinds(net, x)))
    if kind == "s2d":
        y = net.op("SpaceToDepth", [x], (n, 4 * c, h // 2, w // 2), blocksize=2)
    else:
        y = net.op("DepthToSpace", [x], (n, c // 4, 2 * h, 2 * w), blocksize=2, mode=kind[-3:].upper())
    net.recipe.append(f"depth_space({x}: {kind})")
    net.maps.append(y)


def b_einsum(net: Net, draw, x: str):
    n, c, h, w = net.shape(x)
    c2 = draw(channels())
    form = draw(st.sampled_from(["nchw,oc->nohw", "oc,nchw->nohw", "...chw,oc->...ohw"]))
    wname = net.weight((c2, c), c)
    inputs = [wname, x] if form.startswith("oc") else [x, wname]
    net.recipe.append(f"einsum({x}: {form} {c}->{c2})")
    net.maps.append(net.op("Einsum", inputs, (n, c2, h, w), equation=form))


# name -> (block, applicable(net, x))
BLOCKS = {
    "conv": (b_conv, lambda net, x: True),
    "act": (b_act, lambda net, x: True),
    "norm": (b_norm, lambda net, x: True),
    "const": (b_const, lambda net, x: True),
    "merge": (b_merge, lambda net, x: True),
    "concat": (b_concat, lambda net, x: net.shape(x)[1] <= MAX_CHANNELS),
    "split": (b_split, lambda net, x: net.shape(x)[1] >= 2),
    "slice": (b_slice, lambda net, x: net.shape(x)[1] >= 2),
    "conv_transpose": (b_conv_transpose, lambda net, x: True),
    "pool": (b_pool, lambda net, x: True),
    "resize": (b_resize, lambda net, x: True),
    "pad": (b_pad, lambda net, x: True),
    "se": (b_se, lambda net, x: True),
    "context": (b_context, lambda net, x: True),
    "channel_reduce": (b_channel_reduce, lambda net, x: True),
    "shuffle": (b_shuffle, lambda net, x: any(1 < d < net.shape(x)[1] for d in divisors(net.shape(x)[1]))),
    "group_view": (b_group_view, lambda net, x: any(1 < d < net.shape(x)[1] for d in divisors(net.shape(x)[1]))),
    "roundtrip": (b_roundtrip, lambda net, x: True),
    "nhwc": (b_nhwc, lambda net, x: True),
    "sequence": (b_sequence, lambda net, x: True),
    "gather": (b_gather, lambda net, x: True),
    "tile": (b_tile, lambda net, x: net.shape(x)[1] <= MAX_CHANNELS),
    "depth_space": (b_depth_space, lambda net, x: bool(depth_space_kinds(net, x))),
    "einsum": (b_einsum, lambda net, x: True),
}


# ============================================================================ heads
def b_head(net: Net, draw) -> str:
    """Merge every map no block read, and end in logits."""
    open_maps = [m for m in net.maps if m not in net.consumed]
    classes = draw(st.integers(2, 6))
    n = BATCH
    vector = None
    if len(open_maps) > 1:
        spatial = {net.shape(m)[2:] for m in open_maps}
        merge = draw(st.sampled_from(["concat", "sum", "vectors"] if len(spatial) == 1 else ["vectors"]))
        if merge == "concat":
            x = net.op("Concat", open_maps, (n, sum(net.shape(m)[1] for m in open_maps)) + net.shape(open_maps[0])[2:], axis=1)
        elif merge == "sum":
            c = net.shape(open_maps[0])[1]
            parts = [m if net.shape(m)[1] == c else net.conv(m, c) for m in open_maps]
            x = net.op("Sum", parts, net.shape(open_maps[0]))
        else:
            vecs = []
            for m in open_maps:
                p = net.op("GlobalAveragePool", [m], net.shape(m)[:2] + (1, 1))
                vecs.append(net.op("Flatten", [p], net.shape(m)[:2]))
            vector = net.op("Concat", vecs, (n, sum(net.shape(v)[1] for v in vecs)), axis=1)
        net.recipe.append(f"head merge {merge} of {open_maps}")
    else:
        x = open_maps[0]
    trans_b, alpha = draw(st.booleans()), draw(st.sampled_from([1.0, 0.5]))
    bias = draw(st.sampled_from(["vector", "row", "none"]))
    if vector is not None:
        net.recipe.append(f"head gemm {classes}")
        return net.gemm(vector, classes, trans_b, bias, alpha)
    c, h, w = net.shape(x)[1:]
    kind = draw(st.sampled_from(["gap_gemm", "gmp_gemm", "flatten_gemm", "reshape_matmul", "conv", "reduce_gemm",
                                 "sequence"]))
    net.recipe.append(f"head {kind} {classes} on {x}")
    if kind in ("gap_gemm", "gmp_gemm"):
        p = net.op("GlobalAveragePool" if kind == "gap_gemm" else "GlobalMaxPool", [x], (n, c, 1, 1))
        v = net.op("Flatten", [p], (n, c)) if draw(st.booleans()) else net.reshape(p, [n, c], (n, c))
        return net.gemm(v, classes, trans_b, bias, alpha)
    if kind == "flatten_gemm":
        return net.gemm(net.op("Flatten", [x], (n, c * h * w)), classes, trans_b, bias, alpha)
    if kind == "reshape_matmul":
        v = net.reshape(x, draw(st.sampled_from([[n, -1], [0, -1], [n, c * h * w]])), (n, c * h * w))
        return net.matmul(v, classes, draw(st.booleans()))
    if kind == "conv":
        return net.conv(x, classes, draw(st.sampled_from([1, 3])), 1, draw(st.booleans()))
    if kind == "reduce_gemm":
        return net.gemm(net.reduce_mean(x, [2, 3], 0), classes, trans_b, bias, alpha)
    t = to_sequence(net, draw, x)
    if draw(st.booleans()):
        t = net.matmul(t, draw(channels()), draw(st.booleans()))
    return net.gemm(net.reduce_mean(t, [1], 0), classes, trans_b, bias, alpha)


# ============================================================================ the strategy
def pick(net: Net, draw) -> str:
    """A map from the window, the most recent first (what shrinking goes toward: a chain)."""
    window = net.maps[-WINDOW:]
    return window[-1 - draw(st.integers(0, len(window) - 1))]


@st.composite
def models(draw, max_blocks: int = 10, avoid=frozenset(), style: str | None = None) -> Drawn:
    """A random valid model, without the FEATURES named in `avoid`.

    `style` (drawn when None): "dag", each block reads maps anywhere in the window; or "chain",
    up to 3 blocks each read the latest map (others may join it) and a sum over the channels of
    run-time values ends the chain (it is exact only where every operator before it keeps removed channels
    zero: a probe of each rule's zero_output)."""
    assert set(avoid) <= set(FEATURES), avoid
    style = style or draw(st.sampled_from(["dag", "chain"]))
    opset = draw(st.sampled_from(OPSETS))
    seed = draw(st.integers(0, 2**32 - 1))
    net = Net(opset, seed)
    net.declare_all = draw(st.booleans())
    net.avoid = frozenset(avoid)
    net.dynamic_shapes = draw(st.booleans())
    net.param_forms = tuple(f for f in PARAM_FORMS if f not in avoid) if draw(st.booleans()) else ()
    c, h, w = draw(channels()), draw(st.integers(4, 8)), draw(st.integers(4, 8))
    net.input((BATCH, c, h, w))
    b_conv(net, draw, "X", ("plain",))  # a stem: channels are born in the first layer
    blocks = max_blocks if style == "dag" else min(max_blocks, 3)  # short chains: each block matters
    for _ in range(draw(st.sampled_from(range(blocks + 1)))):  # uniform (integers() favours small ones)
        x = pick(net, draw) if style == "dag" else net.maps[-1]
        names = [k for k, (_, ok) in BLOCKS.items() if ok(net, x)]
        BLOCKS[draw(st.sampled_from(names))][0](net, draw, x)
    if style == "chain":
        b_channel_reduce(net, draw, net.maps[-1], CHANNEL_SUMS)
    net.recipe.insert(0, style)
    out = b_head(net, draw)
    model = net.model(out)
    check_valid(model, net)
    return Drawn(model, opset, seed, net.recipe, net.shape(out))


def check_valid(model: onnx.ModelProto, net: Net | None = None):
    """Raise GeneratorBug unless the model passes the full ONNX check, has the shapes the generator
    tracked, and runs in onnxruntime with a finite output of the declared shape."""
    import onnxruntime as ort

    try:
        onnx.checker.check_model(model, full_check=True)
        inferred = shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as e:
        raise GeneratorBug(f"invalid model: {str(e).strip().splitlines()[0]}\n{net.recipe if net else ''}") from None
    if net is not None:
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
            dims = vi.type.tensor_type.shape.dim
            got = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
            if vi.name in net.shapes and None not in got and got != net.shapes[vi.name]:
                raise GeneratorBug(f"{vi.name}: inferred {got}, tracked {net.shapes[vi.name]}\n{net.recipe}")
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        x = model.graph.input[0]
        shape = [d.dim_value for d in x.type.tensor_type.shape.dim]
        (y,) = sess.run(None, {x.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)})
    except Exception as e:
        raise GeneratorBug(f"onnxruntime: {str(e).strip().splitlines()[0]}\n{net.recipe if net else ''}") from None
    want = tuple(d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim)
    if y.shape != want or not np.all(np.isfinite(y)):
        raise GeneratorBug(f"output {y.shape} (want {want}), finite: {np.all(np.isfinite(y))}\n{net.recipe if net else ''}")
