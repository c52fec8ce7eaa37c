"""Streaming the run-time inputs of chosen operators, batch by batch, through a torch copy of the
model (on the GPU when there is one).

`Network` converts the model once (spa.to_torch) and finds the torch module that computes every
ONNX tensor. `Network.stream` runs batches of inputs and hands each chosen tensor to a callback as
soon as it is computed; a forward pass stops once the last chosen tensor is known, so the layers
after it are not run. Nothing is kept between batches: the caller reduces each tensor to what it
needs (a Hessian, channel energies) and drops it.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from .errors import SpaError
from .graph import Graph
from .torch_bridge import TorchConversionError, to_torch


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class _Reached(Exception):
    """Raised by a hook once every operator a pass needs has been seen: the rest is skipped."""


class Network:
    """A torch copy of an ONNX model whose operators can be tapped by ONNX node."""

    def __init__(self, graph: Graph, device: torch.device | str | None = None):
        self.graph = graph
        self.device = torch.device(device) if device is not None else default_device()
        try:
            self.torch_model = to_torch(_self_contained(graph))
        except TorchConversionError as e:
            raise SpaError(f"running the model needs it in PyTorch, and {e}") from None
        self.module = self.torch_model.module.to(self.device)
        self.input_names = self.torch_model.input_names
        self._producers: dict[str, tuple[nn.Module, int]] = {}  # ONNX tensor -> (module, output position)
        for _, module in self.module.named_modules():
            mapping = getattr(module, "onnx_mapping", None)
            if mapping is not None:
                for position, name in enumerate(mapping.outputs):
                    self._producers[name] = (module, position)
        self.batchnorms = [m for m in self.module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def computes(self, tensor: str) -> bool:
        return tensor in self._producers

    def stream(self, tensors: Iterable[str], batches: Iterable[dict[str, np.ndarray]],
               receive: Callable[[str, torch.Tensor], None], batch_statistics: bool = False):
        """Run every batch (input name -> array) and call receive(tensor, value) for each of
        `tensors` as it is computed. With batch_statistics, every BatchNormalization normalizes
        with the batch's own statistics (its running statistics are left untouched)."""
        by_module: dict[nn.Module, list[tuple[str, int]]] = {}
        for name in dict.fromkeys(tensors):
            module, position = self._producers[name]
            by_module.setdefault(module, []).append((name, position))
        if not by_module:
            return
        seen: set[nn.Module] = set()

        def hook(module, _args, output):
            for name, position in by_module[module]:
                value = output[position] if isinstance(output, (tuple, list)) else output
                receive(name, value.detach())
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

    def tensor(self, array: np.ndarray) -> torch.Tensor:
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
