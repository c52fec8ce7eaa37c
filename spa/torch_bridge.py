"""From ONNX to a trainable PyTorch module and back.

`to_torch` converts an ONNX model with onnx2torch and returns a `TorchModel`: the module (its
forward takes the graph inputs in order and returns the graph outputs) and a `param_map` saying,
for each floating-point ONNX initializer, which torch tensor holds it and in which layout.
`write_back` copies the torch values into a copy of the ONNX model.

onnx2torch stores an initializer in one of three ways, and all three are handled here:
- passed to the operator's forward: it keeps a buffer per use (so a shared initializer is
  duplicated). We replace those by one `nn.Parameter` per initializer;
- copied into the parameters of a torch layer (Conv, Linear from Gemm, BatchNorm, LayerNorm,
  InstanceNorm), possibly transposed or scaled. That layer's parameter becomes the one tensor of
  the initializer, and other layers using the same initializer are tied to it;
- read as a plain number at conversion (Clip bounds). Those are not in the module: `constants`.
Every float initializer the module computes with is trainable, except BatchNorm running
statistics (torch buffers, updated in train mode), Pow exponents (NaN gradients) and
single-element constants (epsilons, scales, bounds: settings, not weights).
"""
from __future__ import annotations

import copy
import dataclasses
import operator
import re
from collections import Counter
from dataclasses import dataclass
from os import PathLike

import numpy as np
import onnx
import onnx2torch
import torch
import torch.nn.functional as F
from onnx import TensorProto, defs, helper, numpy_helper
from onnx2torch.node_converters.pad import OnnxPadDynamic
from onnx2torch.node_converters.reduce import OnnxReduceStaticAxes
from onnx2torch.node_converters.registry import add_converter, get_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import (
    OnnxMapping,
    OperationConverterResult,
    get_const_value,
    onnx_mapping_from_node,
)
from onnx2torch.utils.safe_shape_inference import safe_shape_inference
from torch import fx, nn


class TorchConversionError(ValueError):
    """The ONNX model cannot be turned into a torch module (one-line message)."""


# ---------------------------------------------------------------------------------------------
# Converters for operator versions onnx2torch 1.5.15 does not know
# ---------------------------------------------------------------------------------------------

# How this list was derived: with onnx.defs.get_all_schemas_with_history() (onnx 1.23, opsets up
# to 28), for every operator onnx2torch converts at some version, each later schema version was
# compared with the one before it: attributes, inputs, outputs, type constraints and doc text.
# Listed here are the versions whose only change is the set of tensor types, so onnx2torch's
# converter for the nearest earlier version is reused. Also counted as type-only: Cast 19/24
# (saturate, round_mode: only for float8 targets, which torch cannot cast to anyway), Range 27
# (stash_type: accumulation precision for float16), Mod 28 (floats allowed with fmod=0, which
# torch.remainder already computes), Pad 19 ('wrap' mode, which the reused converter rejects),
# ScatterND 18 (max/min reductions, which the reused converter rejects), AveragePool/MaxPool 22
# (doc clarifies ceil_mode windows the way torch computes them).
# Versions that changed meaning have their own converters below (_OWN_CONVERTERS).
# tests/test_torch_bridge.py re-derives the signatures and checks this list is complete.
_TYPE_ONLY_VERSIONS = {
    "Acos": (22,), "Asin": (22,), "Atan": (22,), "Cos": (22,), "Sin": (22,), "Tan": (22,),
    "AveragePool": (22,),
    "Cast": (19, 21, 23, 24, 25, 28),
    "Celu": (28,),
    "Constant": (19, 21, 23, 24, 25),
    "ConstantOfShape": (20, 21, 23, 24, 25),
    "Conv": (22,), "ConvTranspose": (22,),
    "DepthToSpace": (28,),
    "Dropout": (22,),
    "Einsum": (28,),
    "Elu": (22,), "Selu": (22,), "HardSigmoid": (22,), "HardSwish": (22,),
    "Softplus": (22,), "Softsign": (22,),
    "Equal": (19,), "GreaterOrEqual": (16,), "LessOrEqual": (16,),
    "EyeLike": (22,),
    "Flatten": (21, 23, 24, 25),
    "GlobalAveragePool": (22,),
    "Identity": (19, 21, 23, 24, 25),
    "InstanceNormalization": (22,),
    "IsInf": (20,), "IsNaN": (20,),
    "MaxPool": (22,),
    "Mod": (28,),
    "Pad": (19, 21, 23, 24, 25),
    "Range": (27,),
    "ReduceLogSum": (28,), "ReduceLogSumExp": (28,), "ReduceMax": (20,), "ReduceMin": (20,),
    "Reshape": (21, 23, 24, 25),  # 19 is type-only too but gets its own converter, see below
    "RoiAlign": (22,),
    "Round": (22,),
    "ScatterND": (18,),
    "Shape": (19, 21, 23, 24, 25),
    "Squeeze": (23, 24, 25),
    "TopK": (24,),
    "Transpose": (21, 23, 24, 25),
    "Unsqueeze": (21, 23, 24, 25),
}

_REDUCE_OPS_WITH_AXES_INPUT_SINCE_18 = (
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
    "ReduceMin", "ReduceProd", "ReduceSumSquare",
)


def _earlier_converter(op_type: str, version: int):
    """onnx2torch's converter for the nearest version of op_type before `version`."""
    return get_converter(operation_type=op_type, version=version - 1)


def _convert_reduce_18(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Reduce* 18 take the axes as an optional (constant) input instead of an attribute."""
    axes = None
    if len(node.input_values) > 1 and node.input_values[1]:
        try:
            axes = get_const_value(node.input_values[1], graph).tolist()
        except KeyError as exc:
            raise NotImplementedError(f"{node.operation_type} with non-constant axes") from exc
    if not axes and node.attributes.get("noop_with_empty_axes", 0):
        module = nn.Identity()
    else:
        module = OnnxReduceStaticAxes(
            operation_type=node.operation_type, axes=axes, keepdims=node.attributes.get("keepdims", 1)
        )
    return OperationConverterResult(module, OnnxMapping(inputs=node.input_values[:1], outputs=node.output_values))


class _PadAlongAxes(OnnxPadDynamic):
    """Pad 18 with its `axes` input: `pads` holds the begins then the ends of those axes only."""

    def forward(self, input_tensor, pads, constant_value=None, axes=None):  # pylint: disable=arguments-differ
        if axes is not None:
            rank = input_tensor.dim()
            full_pads = [0] * (2 * rank)
            for i, axis in enumerate(axes.tolist()):
                full_pads[axis % rank] = int(pads[i])
                full_pads[rank + axis % rank] = int(pads[len(axes) + i])
            pads = torch.tensor(full_pads)
        return super().forward(input_tensor, pads, constant_value)


def _convert_pad_18(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    converted = _earlier_converter("Pad", 18)(node, graph)
    if len(node.input_values) < 4 or not node.input_values[3]:
        return converted
    return OperationConverterResult(_PadAlongAxes(mode=converted.torch_module.mode), converted.onnx_mapping)


class _SplitIntoParts(nn.Module):
    """Split 18 with `num_outputs`: parts of ceil(length / num_outputs), the last one smaller."""

    def __init__(self, num_outputs: int, axis: int):
        super().__init__()
        self.num_outputs = num_outputs
        self.axis = axis

    def forward(self, input_tensor: torch.Tensor):
        part = -(-input_tensor.shape[self.axis] // self.num_outputs)
        return torch.split(input_tensor, part, dim=self.axis)


def _convert_split_18(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    if "num_outputs" not in node.attributes:
        return _earlier_converter("Split", 18)(node, graph)
    module = _SplitIntoParts(node.attributes["num_outputs"], node.attributes.get("axis", 0))
    return OperationConverterResult(module, OnnxMapping(inputs=node.input_values[:1], outputs=node.output_values))


def _reuse_while_neutral(op_type: str, version: int, is_neutral: dict):
    """A converter for versions that added attributes (or attribute values) the earlier converter
    would silently ignore: reuse it while every such attribute is absent or neutral."""

    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        for name, neutral in is_neutral.items():
            if name in node.attributes and not neutral(node.attributes[name]):
                raise NotImplementedError(f"{op_type} with {name}={node.attributes[name]!r}")
        return _earlier_converter(op_type, version)(node, graph)

    return convert


_RESIZE_18_NEUTRAL = {
    "antialias": lambda value: value == 0,
    "axes": lambda value: False,  # Resize over chosen axes: not what the earlier converter does
    "keep_aspect_ratio_policy": lambda value: value == "stretch",
}


class _ReshapeAllowingZero(nn.Module):
    """Reshape with allowzero=1: a 0 in the shape is a zero-size dimension, as in torch.reshape."""

    def forward(self, input_tensor: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        return torch.reshape(input_tensor, shape.tolist())


def _convert_reshape_19(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Reshape 19 is type-only, but onnx2torch rejects allowzero=1, which torch.onnx.export writes."""
    if node.attributes.get("allowzero", 0):
        return OperationConverterResult(_ReshapeAllowingZero(), onnx_mapping_from_node(node))
    return _earlier_converter("Reshape", 19)(node, graph)


def _convert_gelu(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # pylint: disable=unused-argument
    return OperationConverterResult(
        nn.GELU(approximate=node.attributes.get("approximate", "none")), onnx_mapping_from_node(node)
    )


class _GroupNorm(nn.Module):
    """GroupNormalization; version 18 has one scale and bias per group, 21 one per channel."""

    def __init__(self, num_groups: int, epsilon: float, affine_per_group: bool):
        super().__init__()
        self.num_groups = num_groups
        self.epsilon = epsilon
        self.affine_per_group = affine_per_group

    def forward(self, input_tensor: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        if self.affine_per_group:
            channels_per_group = input_tensor.shape[1] // self.num_groups
            scale = scale.repeat_interleave(channels_per_group)
            bias = bias.repeat_interleave(channels_per_group)
        return F.group_norm(input_tensor, self.num_groups, scale, bias, self.epsilon)


def _group_norm_converter(affine_per_group: bool):
    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # pylint: disable=unused-argument
        module = _GroupNorm(
            node.attributes["num_groups"], node.attributes.get("epsilon", 1e-5), affine_per_group
        )
        return OperationConverterResult(module, onnx_mapping_from_node(node))

    return convert


# Our own converters: versions whose meaning changed, operators onnx2torch lacks, and Reshape.
_OWN_CONVERTERS = {
    **{(op, 18): _convert_reduce_18 for op in _REDUCE_OPS_WITH_AXES_INPUT_SINCE_18},
    ("Pad", 18): _convert_pad_18,
    ("Split", 18): _convert_split_18,
    ("AveragePool", 19): _reuse_while_neutral(
        "AveragePool", 19, {"dilations": lambda value: all(d == 1 for d in value)}
    ),
    ("Resize", 18): _reuse_while_neutral("Resize", 18, _RESIZE_18_NEUTRAL),
    ("Resize", 19): _reuse_while_neutral(
        "Resize", 19,
        {**_RESIZE_18_NEUTRAL, "coordinate_transformation_mode": lambda value: value != "half_pixel_symmetric"},
    ),
    ("Reshape", 19): _convert_reshape_19,
    ("Gelu", 20): _convert_gelu,
    ("GroupNormalization", 18): _group_norm_converter(affine_per_group=True),
    ("GroupNormalization", 21): _group_norm_converter(affine_per_group=False),
}


def _has_converter(op_type: str, version: int) -> bool:
    try:
        get_converter(operation_type=op_type, version=version)
    except NotImplementedError:
        return False
    return True


def _register_missing_converters() -> None:
    """Add the versions above to onnx2torch's registry, leaving any it already has alone."""
    for (op_type, version), converter in _OWN_CONVERTERS.items():
        if not _has_converter(op_type, version):
            add_converter(operation_type=op_type, version=version)(converter)
    # Ascending versions: a type-only version reuses whatever is registered just before it.
    for op_type, versions in _TYPE_ONLY_VERSIONS.items():
        for version in versions:
            if not _has_converter(op_type, version):
                add_converter(operation_type=op_type, version=version)(_earlier_converter(op_type, version))


_register_missing_converters()


# ---------------------------------------------------------------------------------------------
# The converted model and its parameter map
# ---------------------------------------------------------------------------------------------

_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}


@dataclass(frozen=True)
class Layout:
    """How a torch tensor holds an ONNX tensor: torch = scale * (onnx.T if transposed else onnx).
    Only nn.Linear made from a Gemm differs from identity: transposed when transB=0, scaled by
    Gemm's alpha (weight) or beta (bias)."""

    transposed: bool = False
    scale: float = 1.0


IDENTITY = Layout()


@dataclass(frozen=True)
class ParamRef:
    """Where an ONNX float initializer lives in the torch module."""

    torch_name: str  # name in module.named_parameters() (or named_buffers() when not trainable)
    layout: Layout = IDENTITY
    trainable: bool = True  # False for BatchNorm running statistics and Pow exponents (torch buffers)


@dataclass
class TorchModel:
    """A torch module made from an ONNX model, and the map from ONNX initializers to it.

    param_map: ONNX initializer name -> ParamRef, for every float initializer that the module
    computes with; an initializer used by several nodes is one torch tensor. `constants` are the
    float initializers that onnx2torch reads as plain numbers (e.g. Clip bounds) or that no node
    uses: they are not in the module and write_back leaves them as they are.
    """

    module: fx.GraphModule
    param_map: dict[str, ParamRef]
    constants: frozenset[str]
    input_names: list[str]
    output_names: list[str]

    def torch_tensor(self, name: str) -> torch.Tensor:
        """The torch parameter (or buffer) that holds ONNX initializer `name`, in torch layout."""
        ref = self.param_map[name]
        if ref.trainable:
            return self.module.get_parameter(ref.torch_name)
        return self.module.get_buffer(ref.torch_name)

    def onnx_tensor(self, name: str) -> torch.Tensor:
        """The initializer's current value in ONNX layout. A view sharing storage (and autograd
        history) with the parameter, except for a Gemm with alpha or beta other than 1 (a copy)."""
        ref = self.param_map[name]
        return _to_onnx_layout(self.torch_tensor(name), ref.layout)

    def onnx_grad(self, name: str) -> np.ndarray:
        """The gradient of the initializer in ONNX layout, as float32; zeros where no gradient
        was computed (not trainable, or not reached by the last backward pass)."""
        ref = self.param_map[name]
        tensor = self.torch_tensor(name)
        if tensor.grad is None:
            return np.zeros(_to_onnx_layout(tensor, ref.layout).shape, dtype=np.float32)
        # d loss / d onnx = scale * (d loss / d torch), transposed back
        grad = tensor.grad.T if ref.layout.transposed else tensor.grad
        return (grad * ref.layout.scale).detach().cpu().float().numpy()


def _to_onnx_layout(tensor: torch.Tensor, layout: Layout) -> torch.Tensor:
    onnx_tensor = tensor.T if layout.transposed else tensor
    return onnx_tensor if layout.scale == 1.0 else onnx_tensor / layout.scale


def to_torch(model: onnx.ModelProto | str | PathLike) -> TorchModel:
    """Convert an ONNX model to a trainable torch module (see the module docstring)."""
    model = _with_group_norm_shapes(_prepared(_load(model)))
    _check_outputs_are_computed(model.graph)
    module = _convert(model)
    onnx_graph = OnnxGraph(model.graph)
    inits = {init.name: init for init in model.graph.initializer}
    float_names = {name for name, init in inits.items() if init.data_type in _FLOAT_TYPES}

    _repair_layer_norms(module, onnx_graph)
    placements, baked = _find_placements(module, onnx_graph, inits.keys(), float_names)
    _check_placements(module, placements, inits)
    get_attr_nodes = {node.target: node for node in module.graph.nodes if node.op == "get_attr"}
    fixed = _non_trainable_initializers(model.graph)
    tensors = {
        name: _bind_one_tensor(module, get_attr_nodes, name, places, trainable=name not in fixed)
        for name, places in placements.items()
        if name not in baked
    }
    _set_graph_outputs(module, onnx_graph)
    module.eval()  # compute what the ONNX model computes; call .train() to fine-tune

    torch_names = {id(tensor): name for name, tensor in module.named_parameters()}
    torch_names.update({id(tensor): name for name, tensor in module.named_buffers()})
    param_map = {
        name: ParamRef(torch_names[id(tensor)], placements[name][0].layout, isinstance(tensor, nn.Parameter))
        for name, tensor in tensors.items()
    }
    _check_every_parameter_is_mapped(module, param_map)
    return TorchModel(
        module=module,
        param_map=param_map,
        constants=frozenset(float_names - param_map.keys()),
        input_names=[value for value in onnx_graph.input_values if value not in inits],
        output_names=list(onnx_graph.output_values),
    )


def write_back(onnx_model: onnx.ModelProto | str | PathLike, torch_model: TorchModel | nn.Module) -> onnx.ModelProto:
    """A copy of the ONNX model whose initializers hold the current values of the torch module.

    `torch_model` is a TorchModel, or a module made by to_torch from this ONNX model (its
    param_map is then rebuilt by converting the ONNX model again: the names are deterministic).
    The copy is the model as to_torch prepared it (see _prepared): the same computation, with
    Identity copies of initializers bypassed and shared BatchNorm statistics split.
    """
    onnx_model = _prepared(_load(onnx_model))
    if isinstance(torch_model, nn.Module):
        torch_model = dataclasses.replace(to_torch(onnx_model), module=torch_model)
    result = onnx.ModelProto()
    result.CopyFrom(onnx_model)
    for init in result.graph.initializer:
        if init.name in torch_model.param_map:
            value = torch_model.onnx_tensor(init.name).detach().cpu().double().numpy()
            dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
            init.CopyFrom(numpy_helper.from_array(value.astype(dtype), init.name))
    return result


def _load(model: onnx.ModelProto | str | PathLike) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else onnx.load(model)


# ---------------------------------------------------------------------------------------------
# Preparing the model, converting it, and naming what fails
# ---------------------------------------------------------------------------------------------


_SLIDING = ("Conv", "MaxPool", "AveragePool", "LpPool")


def _prepared(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model as to_torch converts it and write_back writes it (the same computation)."""
    return _flatten_at_the_ends(_explicit_padding(_split_shared_statistics(_read_initializers_directly(model))))


def _flatten_at_the_ends(model: onnx.ModelProto) -> onnx.ModelProto:
    """Flatten with axis 0 or axis == rank as a Reshape to (1, -1) or (-1, 1): onnx2torch's
    Flatten fails at the ends (it flattens to 1-D first)."""
    from .graph import Graph

    shape = Graph(model).shape
    ends = {i: {a.name: a.i for a in n.attribute}.get("axis", 1) for i, n in enumerate(model.graph.node)
            if n.op_type == "Flatten" and shape(n.input[0]) is not None}
    ends = {i: axis for i, axis in ends.items() if axis in (0, len(shape(model.graph.node[i].input[0])))}
    if not ends:
        return model
    model = copy.deepcopy(model)
    for i, axis in ends.items():
        node = model.graph.node[i]
        target = f"{node.output[0]}_flat_shape"
        model.graph.initializer.append(numpy_helper.from_array(np.array([1, -1] if axis == 0 else [-1, 1]), target))
        node.op_type = "Reshape"
        del node.attribute[:]
        node.input.append(target)
    return model


def _explicit_padding(model: onnx.ModelProto) -> onnx.ModelProto:
    """Conv and pooling nodes with auto_pad SAME_UPPER/SAME_LOWER (jax2onnx writes them) get the
    explicit pads they stand for, which onnx2torch converts; the spatial input shape must be static."""
    from .graph import Graph

    nodes = [n for n in model.graph.node if n.op_type in _SLIDING
             and any(a.name == "auto_pad" and a.s in (b"SAME_UPPER", b"SAME_LOWER") for a in n.attribute)]
    if not nodes:
        return model
    model = copy.deepcopy(model)
    shapes = Graph(model).shape
    for node in [n for n in model.graph.node if n.op_type in _SLIDING]:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        mode = attrs.get("auto_pad", b"NOTSET")
        if mode not in (b"SAME_UPPER", b"SAME_LOWER"):
            continue
        spatial = shapes(node.input[0])[2:]
        kernel = attrs.get("kernel_shape") or shapes(node.input[1])[2:]
        strides = attrs.get("strides", [1] * len(spatial))
        dilations = attrs.get("dilations", [1] * len(spatial))
        begins, ends = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dilations):
            if not isinstance(size, int):
                raise TorchConversionError(f"{node.op_type} '{node.name}' pads SAME over a spatial axis of unknown size")
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small = total // 2
            begins.append(small if mode == b"SAME_UPPER" else total - small)
            ends.append(total - begins[-1])
        kept = [a for a in node.attribute if a.name not in ("auto_pad", "pads")]
        del node.attribute[:]
        node.attribute.extend(kept + [helper.make_attribute("pads", begins + ends)])
    return model


def _read_initializers_directly(model: onnx.ModelProto) -> onnx.ModelProto:
    """Let every node read initializers directly instead of through Identity nodes.

    The TorchScript exporter shares an initializer (e.g. one zero bias of several Convs) through
    Identity nodes, and onnx2torch needs the weights of Conv, Gemm and norms to be initializers.
    Returns a rewired copy (or the model itself when there is nothing to rewire).
    """
    graph = model.graph
    init_names = {init.name for init in graph.initializer}
    graph_outputs = {output.name for output in graph.output}
    source = {}  # Identity output -> the initializer it copies
    for node in graph.node:
        if node.op_type == "Identity" and node.domain == "" and node.output[0] not in graph_outputs:
            if node.input[0] in init_names or node.input[0] in source:
                source[node.output[0]] = source.get(node.input[0], node.input[0])
    if not source:
        return model
    rewired = onnx.ModelProto()
    rewired.CopyFrom(model)
    nodes = rewired.graph.node
    for i in reversed(range(len(nodes))):
        if nodes[i].op_type == "Identity" and nodes[i].output[0] in source:
            del nodes[i]
    for node in nodes:
        node.input[:] = [source.get(value, value) for value in node.input]
    return rewired


def _split_shared_statistics(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give each BatchNormalization running statistic whose initializer has other uses a copy of
    its own, named '<BN output>.running_mean' or '.running_var'.

    torch.onnx.export merges equal initializers: in a fresh model the BN mean and bias (zeros) and
    the var and scale (ones) become one initializer. torch trains the scale and bias but updates
    the statistics (in train mode), so these must be separate tensors.
    Returns a copy with the split (or the model itself when nothing is shared).
    """
    graph = model.graph
    init_names = {init.name for init in graph.initializer}
    uses = Counter(value for node in graph.node for value in node.input)
    taken = init_names | {value for node in graph.node for value in node.output}
    splits = []  # (node index, input index, name of the copy)
    for i, node in enumerate(graph.node):
        if node.op_type != "BatchNormalization" or node.domain != "":
            continue
        for index, role in ((3, "running_mean"), (4, "running_var")):
            if node.input[index] in init_names and uses[node.input[index]] > 1:
                copy_name = f"{node.output[0]}.{role}"
                while copy_name in taken:
                    copy_name += "_"
                taken.add(copy_name)
                splits.append((i, index, copy_name))
    if not splits:
        return model
    result = onnx.ModelProto()
    result.CopyFrom(model)
    inits = {init.name: init for init in graph.initializer}
    for i, index, copy_name in splits:
        node = result.graph.node[i]
        statistic = result.graph.initializer.add()
        statistic.CopyFrom(inits[node.input[index]])
        statistic.name = copy_name
        node.input[index] = copy_name
    return result


def _with_group_norm_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnx has no shape inference for GroupNormalization, and onnx2torch needs the ranks of the
    tensors after it (pooling, norms): infer shapes with each GroupNormalization standing in as an
    Identity (same output shape), then put the GroupNormalization nodes back."""
    graph_nodes = model.graph.node
    indices = [i for i, node in enumerate(graph_nodes) if node.op_type == "GroupNormalization" and node.domain == ""]
    if not indices:
        return model
    stand_in = onnx.ModelProto()
    stand_in.CopyFrom(model)
    for i in indices:
        identity = onnx.helper.make_node("Identity", graph_nodes[i].input[:1], graph_nodes[i].output)
        stand_in.graph.node[i].CopyFrom(identity)
    inferred = onnx.shape_inference.infer_shapes(stand_in)
    for i in indices:
        inferred.graph.node[i].CopyFrom(graph_nodes[i])
    return inferred


def _check_outputs_are_computed(graph: onnx.GraphProto) -> None:
    produced = {output for node in graph.node for output in node.output}
    for output in graph.output:
        if output.name not in produced:
            raise TorchConversionError(
                f"graph output '{output.name}' is not computed by a node (a graph input or an initializer): "
                "onnx2torch cannot convert that"
            )


def _convert(model: onnx.ModelProto) -> fx.GraphModule:
    try:
        return onnx2torch.convert(model, attach_onnx_mapping=True)
    except Exception as exc:  # onnx2torch raises many kinds; we name the node that failed
        raise _conversion_error(model, exc) from exc


def _conversion_error(model: onnx.ModelProto, exc: Exception) -> TorchConversionError:
    """Find the first node onnx2torch cannot convert (converting them one by one again)."""
    inferred = safe_shape_inference(model)
    opsets = {opset.domain: opset.version for opset in inferred.opset_import}
    onnx_graph = OnnxGraph(inferred.graph)
    for node in onnx_graph.nodes.values():
        opset = opsets.get(node.domain, 0)
        try:
            get_converter(operation_type=node.operation_type, version=opset, domain=node.domain)(node, onnx_graph)
        except Exception as node_exc:  # pylint: disable=broad-except
            version = _operator_version(node, opset)
            return TorchConversionError(
                f"cannot convert {node.operation_type} (version {version}, opset {opset}) node "
                f"'{node.name or node.unique_name}' to torch: {_one_line(node_exc)}"
            )
    return TorchConversionError(f"onnx2torch failed: {_one_line(exc)}")


def _operator_version(node: OnnxNode, opset: int) -> int:
    try:
        return defs.get_schema(node.operation_type, opset, node.domain).since_version
    except defs.SchemaError:
        return opset


def _one_line(exc: Exception) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


# ---------------------------------------------------------------------------------------------
# Post-processing the GraphModule: one tensor per initializer, graph outputs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Placement:
    """A copy of an initializer that onnx2torch made: attribute `attr` of submodule `owner`."""

    owner: str
    attr: str
    layout: Layout
    is_forward_input: bool  # a buffer in gm.initializers passed to an operator's forward


def _repair_layer_norms(module: fx.GraphModule, onnx_graph: OnnxGraph) -> None:
    """Repair two things onnx2torch gets wrong in the nn.LayerNorm it builds:
    - a zero bias also where the ONNX node has none: torch would train a bias ONNX cannot hold;
    - normalized_shape 0 where shape inference left a dimension unknown: the scale has the shape.
    """
    for node_name, node in onnx_graph.nodes.items():
        layer = module.get_submodule(node_name)
        if not isinstance(layer, nn.LayerNorm):
            continue
        if len(node.input_values) < 3 or not node.input_values[2]:
            layer.bias = None
        if 0 in layer.normalized_shape and layer.weight.dim() == len(layer.normalized_shape):
            layer.normalized_shape = tuple(layer.weight.shape)


def _check_every_parameter_is_mapped(module: fx.GraphModule, param_map: dict[str, ParamRef]) -> None:
    mapped = {ref.torch_name for ref in param_map.values()}
    for name, _ in module.named_parameters():
        if name not in mapped:
            raise TorchConversionError(f"torch parameter '{name}' made by onnx2torch holds no ONNX initializer")


def _find_placements(module: fx.GraphModule, onnx_graph: OnnxGraph, init_names, float_names: set[str]):
    """Every copy onnx2torch made of each float initializer, and the initializers it baked in."""
    placements: dict[str, list[_Placement]] = {}
    baked = set()
    buffer_count = 0  # onnx2torch names a new buffer onnx_initializer_<count> at each use
    for node_name, node in onnx_graph.nodes.items():
        submodule = module.get_submodule(node_name)
        forward_inputs = submodule.onnx_mapping.inputs
        for value in forward_inputs:
            if value not in init_names:
                continue
            if value in float_names:
                place = _Placement("initializers", f"onnx_initializer_{buffer_count}", IDENTITY, True)
                placements.setdefault(value, []).append(place)
            buffer_count += 1
        absorbed = _absorbed_inputs(node, node_name, submodule)
        for index, value in enumerate(node.input_values):
            if value not in float_names or value in forward_inputs:
                continue
            if index in absorbed:
                placements.setdefault(value, []).append(absorbed[index])
            else:
                baked.add(value)
    return placements, baked


def _absorbed_inputs(node: OnnxNode, node_name: str, module: nn.Module) -> dict[int, _Placement]:
    """The node inputs (by index) that onnx2torch copied into the layer's own parameters."""
    if isinstance(module, nn.Sequential):  # a layer with asymmetric padding: Sequential(pad, layer)
        node_name, module = f"{node_name}.1", module[1]
    if isinstance(module, nn.Linear):  # Gemm: weight is B (B.T when transB=0) * alpha, bias C * beta
        weight_layout = Layout(not node.attributes.get("transB", 0), node.attributes.get("alpha", 1.0))
        layouts = {"weight": weight_layout, "bias": Layout(scale=node.attributes.get("beta", 1.0))}
        attrs = ("weight", "bias")
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        attrs, layouts = ("weight", "bias", "running_mean", "running_var"), {}
    elif isinstance(module, (nn.modules.conv._ConvNd, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)):
        attrs, layouts = ("weight", "bias"), {}
    else:
        return {}
    return {
        index: _Placement(node_name, attr, layouts.get(attr, IDENTITY), False)
        for index, attr in enumerate(attrs, start=1)
        if index < len(node.input_values) and node.input_values[index]
    }


def _check_placements(module: fx.GraphModule, placements: dict, inits: dict) -> None:
    """Each copy must hold the initializer's value: guards the layout table above."""
    for name, places in placements.items():
        expected = torch.from_numpy(numpy_helper.to_array(inits[name]).copy())
        for place in places:
            actual = _to_onnx_layout(getattr(module.get_submodule(place.owner), place.attr), place.layout)
            if actual.shape != expected.shape or not _same_values(actual, expected, exact=place.layout.scale == 1.0):
                raise TorchConversionError(
                    f"onnx2torch stored initializer '{name}' in {place.owner}.{place.attr} in an unknown layout"
                )


def _same_values(actual: torch.Tensor, expected: torch.Tensor, exact: bool) -> bool:
    actual = actual.to(expected.dtype)
    return torch.equal(actual, expected) if exact else torch.allclose(actual, expected, rtol=1e-5)


# Inputs that must not train: BatchNormalization running statistics (torch updates them in
# train mode) and Pow exponents (their gradient is NaN wherever the base is negative).
_NON_TRAINABLE_INPUTS = {"BatchNormalization": (3, 4), "Pow": (1,)}


def _non_trainable_initializers(graph: onnx.GraphProto) -> set[str]:
    """Initializers kept fixed: the inputs above, and every single-element constant (a norm's
    epsilon, an attention scale, a clip bound): they are settings, and a step can make an
    epsilon negative and the model NaN."""
    scalars = {t.name for t in graph.initializer if int(np.prod(t.dims)) == 1}
    return scalars | {
        node.input[index]
        for node in graph.node
        if node.domain == ""
        for index in _NON_TRAINABLE_INPUTS.get(node.op_type, ())
        if index < len(node.input)
    }


def _bind_one_tensor(
    module: fx.GraphModule, get_attr_nodes: dict, name: str, places: list[_Placement], trainable: bool
) -> torch.Tensor:
    """Make all copies of initializer `name` one tensor (a parameter when trainable and not
    already held by a layer); return it."""
    if len({place.layout for place in places}) > 1:
        raise TorchConversionError(
            f"initializer '{name}' is used in different layouts (e.g. by a Gemm with transB=0 and another node): "
            "cannot hold it in one torch parameter"
        )
    layer_places = [place for place in places if not place.is_forward_input]
    if layer_places:
        owner = layer_places[0]
        tensor = getattr(module.get_submodule(owner.owner), owner.attr)
        target = f"{owner.owner}.{owner.attr}"
    else:
        value = getattr(module.initializers, places[0].attr)
        attr = _unique_attr_name(module.initializers, name)
        if trainable:
            module.initializers.register_parameter(attr, nn.Parameter(value))
        else:
            module.initializers.register_buffer(attr, value)
        tensor = getattr(module.initializers, attr)
        target = f"initializers.{attr}"
    for place in places:
        if place.is_forward_input:
            get_attr_nodes[f"initializers.{place.attr}"].target = target
            delattr(module.initializers, place.attr)
        elif place is not layer_places[0]:
            setattr(module.get_submodule(place.owner), place.attr, tensor)  # tie to the one tensor
    return tensor


def _unique_attr_name(container: nn.Module, onnx_name: str) -> str:
    attr = re.sub(r"\W", "_", onnx_name)
    attr = attr if attr[:1].isalpha() else f"p_{attr}"
    while hasattr(container, attr):
        attr += "_"
    return attr


def _set_graph_outputs(module: fx.GraphModule, onnx_graph: OnnxGraph) -> None:
    """Return exactly the graph outputs, in order (onnx2torch returns whole producer outputs)."""
    graph = module.graph
    call_nodes = {node.target: node for node in graph.nodes if node.op == "call_module"}
    old_output = next(node for node in graph.nodes if node.op == "output")
    values = []
    with graph.inserting_before(old_output):
        for name in onnx_graph.output_values:
            producer, index = onnx_graph.value_as_node_output(name)
            value = call_nodes[producer.unique_name]
            if len(producer.output_values) > 1:
                value = graph.call_function(operator.getitem, (value, index))
            values.append(value)
    graph.erase_node(old_output)
    graph.output(values[0] if len(values) == 1 else tuple(values))
    graph.lint()
    module.recompile()

