"""Converters for the operator versions onnx2torch 1.5.15 does not know, added to its registry."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from onnx2torch.node_converters.pad import OnnxPadDynamic
from onnx2torch.node_converters.reduce import OnnxReduceStaticAxes
from onnx2torch.node_converters.registry import add_converter, get_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxMapping, OperationConverterResult, get_const_value, onnx_mapping_from_node
from torch import nn


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


def has_converter(op_type: str, version: int) -> bool:
    try:
        get_converter(operation_type=op_type, version=version)
    except NotImplementedError:
        return False
    return True


def _register_missing_converters() -> None:
    """Add the versions above to onnx2torch's registry, leaving any it already has alone."""
    for (op_type, version), converter in _OWN_CONVERTERS.items():
        if not has_converter(op_type, version):
            add_converter(operation_type=op_type, version=version)(converter)
    # Ascending versions: a type-only version reuses whatever is registered just before it.
    for op_type, versions in _TYPE_ONLY_VERSIONS.items():
        for version in versions:
            if not has_converter(op_type, version):
                add_converter(operation_type=op_type, version=version)(_earlier_converter(op_type, version))


_register_missing_converters()
