"""The model as to_torch converts it and write_back writes it: the same computation, in a form
onnx2torch converts."""
from __future__ import annotations

import copy
import re
from collections import Counter

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx2torch.onnx_graph import OnnxGraph
from torch import fx, nn

from .model import TorchConversionError

_SLIDING = ("Conv", "MaxPool", "AveragePool", "LpPool")


def prepared(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model as to_torch converts it and write_back writes it (the same computation)."""
    model = _read_initializers_directly(_constants_as_initializers(model))
    return _flatten_at_the_ends(_explicit_padding(_split_shared_statistics(model)))


def _constants_as_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant nodes as initializers of the same name (a Constant that is a graph output stays).

    paddle2onnx writes weights as Constant nodes, and onnx2torch reads the weights of Conv, Gemm
    and the norms from the initializers only: on such a file it fails at the first Conv with a
    KeyError on the weight's name (the dots and slashes in the names are not the cause). String
    and sparse constants stay nodes. Returns a copy (or the model itself when nothing changes).
    """
    outputs = {output.name for output in model.graph.output}
    values = {}
    for i, node in enumerate(model.graph.node):
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output[0] not in outputs:
            tensor = _constant_tensor(node)
            if tensor is not None:
                values[i] = tensor
    if not values:
        return model
    result = onnx.ModelProto()
    result.CopyFrom(model)
    del result.graph.node[:]
    result.graph.node.extend(node for i, node in enumerate(model.graph.node) if i not in values)
    result.graph.initializer.extend(values.values())
    return result


def _constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """A Constant node's value as a tensor named like its output, or None for strings and sparse values."""
    if len(node.attribute) != 1:
        return None
    attribute = node.attribute[0]
    if attribute.name == "value":
        tensor = onnx.TensorProto()
        tensor.CopyFrom(attribute.t)
        tensor.name = node.output[0]
        return tensor
    dtypes = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64, "value_ints": np.int64}
    if attribute.name not in dtypes:
        return None
    value = np.array(helper.get_attribute_value(attribute), dtype=dtypes[attribute.name])
    return numpy_helper.from_array(value, node.output[0])


def for_onnx2torch(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with the names onnx2torch mishandles replaced (or the model itself when none are).

    - Empty optional outputs (an LSTM's Y left out as ''): onnx2torch then takes every empty
      input of the graph (an omitted bias) for that output. They get names nobody reads.
    - Node names: onnx2torch names each torch submodule after its node (dots as slashes, the op
      type where the name is empty, _1, _2 for repeats) and keeps submodules, graph inputs and
      initializers in one table: a node whose name (made unique that way) repeats another's,
      equals an input or an initializer name, is an attribute of a torch module ('forward',
      'training', 'graph', 'code'), or holds a quote, a backslash or a control character breaks
      the conversion or, worse, feeds a wrong tensor. Those nodes are renamed.
    Tensor names that are not empty are kept, so the parameter map uses the model's own names.
    """
    result = _name_empty_outputs(model)
    taken = {value.name for value in model.graph.input} | {init.name for init in model.graph.initializer}
    taken.add("initializers")  # onnx2torch's own submodule
    for _ in range(3):  # a new name could collide with a generated one: check again
        bad, seen = [], set()
        counters: dict[str, int] = {}
        for i, node in enumerate(result.graph.node):
            name = OnnxGraph.generate_node_name(node)
            count = counters.get(name, 0)
            counters[name] = count + 1
            unique = name + (f"_{count}" if count else "")
            if unique in seen or unique in taken or not _usable_module_name(unique):
                bad.append(i)
            seen.add(unique)
        if not bad:
            return result
        result = _copy_once(result, model)
        for i in bad:
            node = result.graph.node[i]
            stem = re.sub(r"\W", "_", node.op_type) or "node"
            new, k = f"spa_{stem}_{i}", 0
            while new in seen or new in taken:
                k += 1
                new = f"spa_{stem}_{i}_{k}"
            node.name = new
            seen.add(new)
    raise TorchConversionError("cannot give the nodes names onnx2torch accepts")


def _name_empty_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    if not any(not output for node in model.graph.node for output in node.output):
        return model
    result = _copy_once(model, model)
    taken = {value for node in model.graph.node for value in (*node.input, *node.output)}
    taken |= {value.name for value in model.graph.input} | {init.name for init in model.graph.initializer}
    for i, node in enumerate(result.graph.node):
        for k, output in enumerate(node.output):
            if not output:
                name = f"spa_unused_output_{i}_{k}"
                while name in taken:
                    name += "_"
                node.output[k] = name
                taken.add(name)
    return result


def _copy_once(current: onnx.ModelProto, original: onnx.ModelProto) -> onnx.ModelProto:
    if current is not original:
        return current
    result = onnx.ModelProto()
    result.CopyFrom(original)
    return result


_MODULE_ATTRIBUTES = set(dir(fx.GraphModule(nn.Module(), fx.Graph())))


def _usable_module_name(name: str) -> bool:
    return (name.isprintable() and '"' not in name and "\\" not in name and name not in _MODULE_ATTRIBUTES
            and not re.fullmatch(r"onnx_initializer_\d+", name) and not name.endswith("_split_output"))


def _flatten_at_the_ends(model: onnx.ModelProto) -> onnx.ModelProto:
    """Flatten with axis 0 or axis == rank as a Reshape to (1, -1) or (-1, 1): onnx2torch's
    Flatten fails at the ends (it flattens to 1-D first)."""
    from ..graph import Graph

    if not any(n.op_type == "Flatten" for n in model.graph.node):
        return model
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
    from ..graph import Graph

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


def with_group_norm_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
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

