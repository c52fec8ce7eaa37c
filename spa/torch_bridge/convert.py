"""to_torch and write_back."""
from __future__ import annotations

import dataclasses
from os import PathLike

import onnx
import onnx2torch
from onnx import defs, numpy_helper
from onnx2torch.node_converters.registry import get_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.safe_shape_inference import safe_shape_inference
from torch import fx, nn

from . import recurrent, versions  # noqa: F401  (they register converters with onnx2torch)
from .model import FLOAT_TYPES, ParamRef, TorchConversionError, TorchModel
from .params import (
    bind_one_tensor, check_every_parameter_is_mapped, check_placements, find_placements,
    non_trainable_initializers, repair_layer_norms, set_graph_outputs,
)
from .prepare import for_onnx2torch, prepared, with_group_norm_shapes


def to_torch(model: onnx.ModelProto | str | PathLike) -> TorchModel:
    """Convert an ONNX model to a trainable torch module (see the package docstring)."""
    model = with_group_norm_shapes(prepared(_load(model)))
    _check_outputs_are_computed(model.graph)
    node_names = [node.name for node in model.graph.node]  # for error messages
    model = for_onnx2torch(model)
    module = _convert(model, node_names)
    onnx_graph = OnnxGraph(model.graph)
    inits = {init.name: init for init in model.graph.initializer}
    float_names = {name for name, init in inits.items() if init.data_type in FLOAT_TYPES}

    repair_layer_norms(module, onnx_graph)
    placements, baked = find_placements(module, onnx_graph, inits.keys(), float_names)
    check_placements(module, placements, inits)
    get_attr_nodes = {node.target: node for node in module.graph.nodes if node.op == "get_attr"}
    fixed = non_trainable_initializers(model.graph)
    tensors = {
        name: bind_one_tensor(module, get_attr_nodes, name, places, trainable=name not in fixed)
        for name, places in placements.items()
        if name not in baked
    }
    set_graph_outputs(module, onnx_graph)
    module.eval()  # compute what the ONNX model computes; call .train() to fine-tune

    torch_names = {id(tensor): name for name, tensor in module.named_parameters()}
    torch_names.update({id(tensor): name for name, tensor in module.named_buffers()})
    param_map = {
        name: ParamRef(torch_names[id(tensor)], placements[name][0].layout, isinstance(tensor, nn.Parameter))
        for name, tensor in tensors.items()
    }
    check_every_parameter_is_mapped(module, param_map)
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
    The copy is the model as to_torch prepared it (see prepare.prepared): the same computation,
    with Constant nodes as initializers, Identity copies of initializers bypassed, shared
    BatchNorm statistics split, SAME padding explicit.
    """
    onnx_model = prepared(_load(onnx_model))
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


def _check_outputs_are_computed(graph: onnx.GraphProto) -> None:
    produced = {output for node in graph.node for output in node.output}
    for output in graph.output:
        if output.name not in produced:
            raise TorchConversionError(
                f"graph output '{output.name}' is not computed by a node (a graph input or an initializer): "
                "onnx2torch cannot convert that"
            )


def _convert(model: onnx.ModelProto, node_names: list[str]) -> fx.GraphModule:
    try:
        return onnx2torch.convert(model, attach_onnx_mapping=True)
    except Exception as exc:  # onnx2torch raises many kinds; we name the node that failed
        raise _conversion_error(model, exc, node_names) from exc


def _conversion_error(model: onnx.ModelProto, exc: Exception, node_names: list[str]) -> TorchConversionError:
    """Find the first node onnx2torch cannot convert (converting them one by one again)."""
    inferred = safe_shape_inference(model)
    opsets = {opset.domain: opset.version for opset in inferred.opset_import}
    onnx_graph = OnnxGraph(inferred.graph)
    for index, node in enumerate(onnx_graph.nodes.values()):
        opset = opsets.get(node.domain, 0)
        try:
            get_converter(operation_type=node.operation_type, version=opset, domain=node.domain)(node, onnx_graph)
        except Exception as node_exc:  # pylint: disable=broad-except
            version = _operator_version(node, opset)
            name = node_names[index] if index < len(node_names) and node_names[index] else node.unique_name
            return TorchConversionError(
                f"cannot convert {node.operation_type} (version {version}, opset {opset}) node "
                f"'{name}' to torch: {_node_reason(node, node_exc)}"
            )
    return TorchConversionError(f"onnx2torch failed: {_one_line(exc)}")


def _node_reason(node: OnnxNode, exc: Exception) -> str:
    """The converter's exception in one line; a KeyError on one of the node's inputs means
    onnx2torch needs that input to be a constant (an initializer) and it is computed at run time."""
    if isinstance(exc, KeyError) and exc.args and exc.args[0] in node.input_values:
        return f"its input '{exc.args[0]}' is computed at run time, and onnx2torch needs it to be a constant"
    return _one_line(exc)


def _operator_version(node: OnnxNode, opset: int) -> int:
    try:
        return defs.get_schema(node.operation_type, opset, node.domain).since_version
    except defs.SchemaError:
        return opset


def _one_line(exc: Exception) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())

