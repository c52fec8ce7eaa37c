"""Post-processing onnx2torch's GraphModule: one tensor per initializer, the graph outputs."""
from __future__ import annotations

import operator
import re
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from torch import fx, nn

from .model import IDENTITY, Layout, ParamRef, TorchConversionError, to_onnx_layout


@dataclass(frozen=True)
class _Placement:
    """A copy of an initializer that onnx2torch made: attribute `attr` of submodule `owner`."""

    owner: str
    attr: str
    layout: Layout
    is_forward_input: bool  # a buffer in gm.initializers passed to an operator's forward


def repair_layer_norms(module: fx.GraphModule, onnx_graph: OnnxGraph) -> None:
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


def check_every_parameter_is_mapped(module: fx.GraphModule, param_map: dict[str, ParamRef]) -> None:
    mapped = {ref.torch_name for ref in param_map.values()}
    for name, _ in module.named_parameters():
        if name not in mapped:
            raise TorchConversionError(f"torch parameter '{name}' made by onnx2torch holds no ONNX initializer")


def find_placements(module: fx.GraphModule, onnx_graph: OnnxGraph, init_names, float_names: set[str]):
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


def check_placements(module: fx.GraphModule, placements: dict, inits: dict) -> None:
    """Each copy must hold the initializer's value: guards the layout table above."""
    for name, places in placements.items():
        expected = torch.from_numpy(numpy_helper.to_array(inits[name]).copy())
        for place in places:
            actual = to_onnx_layout(getattr(module.get_submodule(place.owner), place.attr), place.layout)
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


def non_trainable_initializers(graph: onnx.GraphProto) -> set[str]:
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


def bind_one_tensor(
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


def set_graph_outputs(module: fx.GraphModule, onnx_graph: OnnxGraph) -> None:
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

