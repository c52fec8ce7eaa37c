"""Streaming the run-time tensors of a model, batch by batch, to whoever reduces them.

`RuntimeNetwork` runs the ONNX model itself in onnxruntime, with the chosen tensors added as
outputs and the operators nothing chosen needs left out: it works on every model onnxruntime
runs, with no PyTorch. `Network` converts the model once to torch (spa.to_torch; on the GPU when
there is one) and taps its modules; it is what gradients need (data-free inversion), and the only
part that imports torch. Both have `stream`: it runs batches of inputs and hands each chosen
tensor, as a numpy array, to a callback. Nothing is kept between batches: the caller reduces each tensor to what it needs (a
Hessian, channel energies) and drops it.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import networkx as nx
import numpy as np
import onnx
from onnx import helper, numpy_helper

from .conform import upgrade
from .errors import SpaError
from .graph import Graph
from .protos import model_like, node_reads
from .runtime import graph_inputs, run, session


def default_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class _Reached(Exception):
    """Raised by a hook once every operator a pass needs has been seen: the rest is skipped."""


class Network:
    """A torch copy of an ONNX model whose operators can be tapped by ONNX node."""

    def __init__(self, graph: Graph, device=None):
        import torch
        from torch import nn

        from .torch_bridge import TorchConversionError, to_torch

        self.graph = graph
        self.device = torch.device(device) if device is not None else default_device()
        try:
            self.torch_model = to_torch(_self_contained(graph))
        except TorchConversionError as e:
            raise SpaError(f"running the model needs it in PyTorch, and {e}") from None
        self.module = self.torch_model.module.to(self.device)
        self.input_names = self.torch_model.input_names
        self._producers: dict[str, tuple] = {}  # ONNX tensor -> (module, output position)
        for _, module in self.module.named_modules():
            mapping = getattr(module, "onnx_mapping", None)
            if mapping is not None:
                for position, name in enumerate(mapping.outputs):
                    self._producers[name] = (module, position)
        self.batchnorms = [m for m in self.module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def computes(self, tensor: str) -> bool:
        return tensor in self._producers

    def stream(self, tensors: Iterable[str], batches: Iterable[dict[str, np.ndarray]],
               receive: Callable[[str, np.ndarray], None], batch_statistics: bool = False):
        """Run every batch (input name -> array) and call receive(tensor, value) for each of
        `tensors` as it is computed. With batch_statistics, every BatchNormalization normalizes
        with the batch's own statistics (its running statistics are left untouched)."""
        import torch

        by_module: dict = {}
        for name in dict.fromkeys(tensors):
            module, position = self._producers[name]
            by_module.setdefault(module, []).append((name, position))
        if not by_module:
            return
        seen: set = set()

        def hook(module, _args, output):
            for name, position in by_module[module]:
                value = output[position] if isinstance(output, (tuple, list)) else output
                receive(name, value.detach().cpu().numpy())
            seen.add(module)
            if len(seen) == len(by_module):
                raise _Reached

        handles = [module.register_forward_hook(hook) for module in by_module]
        try:
            with torch.no_grad(), self._batch_statistics(batch_statistics):
                for feeds in batches:
                    seen.clear()
                    try:
                        self.module(*[self.tensor(feeds[name]) for name in self.input_names])
                    except _Reached:
                        pass
        finally:
            for handle in handles:
                handle.remove()

    def tensor(self, array: np.ndarray):
        """The array as a torch tensor on the network's device."""
        import torch

        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    @contextlib.contextmanager
    def _batch_statistics(self, enabled: bool):
        """BatchNorm layers in training mode with momentum 0: batch statistics, no update."""
        if not enabled or not self.batchnorms:
            yield
            return
        saved = [(m.training, m.momentum) for m in self.batchnorms]
        for m in self.batchnorms:
            m.train()
            m.momentum = 0.0
        try:
            yield
        finally:
            for m, (training, momentum) in zip(self.batchnorms, saved):
                m.train(training)
                m.momentum = momentum


class RuntimeNetwork:
    """The ONNX model in onnxruntime, any of its tensors tapped.

    `replaced` (parameter name -> array) runs the model with those parameters changed: a model
    already pruned and compensated, with the removed slices at zero, computes what the pruned one
    computes."""

    def __init__(self, graph: Graph, replaced: dict | None = None):
        self.graph = graph
        self.replaced = replaced or {}
        self.input_names = [vi.name for vi in graph_inputs(graph.model)]
        self.batchnorms = [i for i, n in enumerate(graph.nodes) if n.op_type == "BatchNormalization"]
        self._sessions: dict[tuple, object] = {}

    def computes(self, tensor: str) -> bool:
        t = self.graph.tensors.get(tensor)
        return t is not None and (t.producer is not None or tensor in self.input_names)

    def stream(self, tensors: Iterable[str], batches: Iterable[dict[str, np.ndarray]],
               receive: Callable[[str, np.ndarray], None], batch_statistics: bool = False):
        """Run every batch and call receive(tensor, value) for each of `tensors`. With
        batch_statistics, every BatchNormalization normalizes with the batch's own statistics."""
        names = [n for n in dict.fromkeys(tensors) if n not in self.input_names]
        fed = [n for n in dict.fromkeys(tensors) if n in self.input_names]
        sess = self._session(tuple(names), batch_statistics) if names else None
        for feeds in batches:
            values = dict(zip(names, run(None, {n: feeds[n] for n in self.input_names}, sess))) if names else {}
            for name in fed:
                receive(name, np.asarray(feeds[name]))
            for name in names:
                receive(name, values[name])

    def _session(self, names: tuple[str, ...], batch_statistics: bool):
        key = (names, batch_statistics)
        if key not in self._sessions:
            self._sessions = {key: session(self._tapped(list(names), batch_statistics))}  # one at a time: memory
        return self._sessions[key]

    def _tapped(self, names: list[str], batch_statistics: bool) -> onnx.ModelProto:
        """The model computing only `names`, as its outputs."""
        graph = self.graph
        needed = set()
        for name in names:
            producer = graph.tensors[name].producer
            needed |= {producer} | nx.ancestors(graph.dag, producer)
        nodes = [onnx.NodeProto.FromString(graph.nodes[i].SerializeToString()) for i in sorted(needed)]
        if batch_statistics:
            for node in nodes:
                if node.op_type == "BatchNormalization":
                    del node.output[1:]
                    node.output.extend([f"{node.output[0]}.batch_mean", f"{node.output[0]}.batch_var"])
                    node.attribute.append(helper.make_attribute("training_mode", 1))
        read = {n for node in nodes for n in node_reads(node)}
        read_initializers = [t for t in graph.model.graph.initializer if t.name in read]
        as_arrays = {t.name for t in read_initializers if t.name in self.replaced or t.data_location == onnx.TensorProto.EXTERNAL}
        arrays = {name: self.replaced[name] if name in self.replaced else graph.value(name) for name in as_arrays}
        for name, value in self.replaced.items():  # parameters of Constant nodes and Identity copies
            if name not in graph.initializers:
                for k, node in enumerate(nodes):
                    if node.output and node.output[0] == name:
                        nodes[k] = helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))
        outputs = [helper.make_tensor_value_info(n, graph.tensors[n].dtype, None) for n in names]
        model = model_like(graph.model, nodes, [t for t in read_initializers if t.name not in as_arrays], arrays,
                           inputs=[vi for vi in graph.model.graph.input if vi.name in self.input_names],
                           outputs=outputs, value_info=[], name="tapped")
        if batch_statistics and graph.opset < 14:  # BatchNormalization's training_mode came with opset 14
            model = upgrade(model, 15)
        return model


def _self_contained(graph: Graph) -> onnx.ModelProto:
    """graph.model with external initializer data read in (onnx2torch needs the values)."""
    model = graph.model
    external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if not external:
        return model
    inline = onnx.ModelProto()
    inline.CopyFrom(model)
    for tensor in inline.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            tensor.CopyFrom(numpy_helper.from_array(graph.value(tensor.name), tensor.name))
    return inline
