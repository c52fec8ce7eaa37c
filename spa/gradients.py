"""Gradient statistics for the data-driven criteria, computed in PyTorch on the model from to_torch.

The loss is the mean cross-entropy of the model's first output (logits over axis 1, divided by a
temperature where a criterion asks for one) against the calibration labels, or against the
model's own predictions (argmax) when the caller opts into pseudo-labels. Each statistic is an
array per ONNX parameter, in the parameter's ONNX layout, keyed by SPA's parameter names:

- "grad": g = dL/dw over the whole calibration set (the batches' gradients weighted by size);
  `GradientSource.batch_gradients` also gives each batch's gradient on its own (Taylor);
- "fisher": the empirical Fisher diagonal E_x[(dl_x/dw)^2], from one gradient per sample, the
  usual estimate of the Hessian diagonal (OBD);
- "hessian_grad": H g, the Hessian of L times g (double backward: the gradient of <dL/dw, g>).

Parameters torch does not train (BatchNorm running statistics) get zeros.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper
from tqdm import tqdm

from .calib import Calibration
from .errors import SpaError
from .graph import Graph

def gradient_source(graph: Graph, calibration: Calibration, temperature: float = 1.0, pseudo_labels: bool = False,
                    batch_size: int = 16, progress: bool = False) -> "GradientSource":
    """The model in torch (every floating-point parameter trainable, see params_as_initializers),
    ready to compute gradient statistics on the calibration data."""
    from .torch_bridge import TorchConversionError, to_torch

    try:
        model = to_torch(params_as_initializers(graph))
    except TorchConversionError as e:
        raise SpaError(f"gradients need the model in PyTorch, and {e}") from None
    return GradientSource(model, calibration, temperature, pseudo_labels, batch_size, progress)


def params_as_initializers(graph: Graph) -> onnx.ModelProto:
    """The model with every floating-point SPA parameter an initializer of its own name (Identity
    copies and Constant nodes included, external data read in), so that each has its own torch
    tensor and gradient."""
    model = graph.model
    floats = {n for n in graph.params() if np.issubdtype(graph.value(n).dtype, np.floating)}
    as_nodes = {n for n in floats if n in graph.copies or n in graph.constant_nodes}
    external = {t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    if not as_nodes and not external:
        return model
    result = onnx.ModelProto()
    result.CopyFrom(model)
    dropped = {graph.tensors[n].producer for n in as_nodes}
    del result.graph.node[:]
    result.graph.node.extend(n for i, n in enumerate(model.graph.node) if i not in dropped)
    kept = [numpy_helper.from_array(graph.value(t.name), t.name) if t.name in external else t for t in model.graph.initializer]
    del result.graph.initializer[:]
    result.graph.initializer.extend(kept + [numpy_helper.from_array(graph.value(n), n) for n in sorted(as_nodes)])
    return result


class GradientSource:
    """The torch module, its trainable parameters, and the loss over calibration batches."""

    def __init__(self, model, calibration: Calibration, temperature: float, pseudo_labels: bool, batch_size: int,
                 progress: bool):
        self.model = model
        self.names = [n for n, ref in model.param_map.items() if ref.trainable]
        self.tensors = [model.torch_tensor(n) for n in self.names]
        for tensor in self.tensors:
            tensor.requires_grad_(True)
        self.calibration = calibration
        self.temperature = temperature
        self.pseudo_labels = pseudo_labels
        self.batch_size = batch_size
        self.progress = progress

    def batches(self, what: str, batch_size: int | None = None):
        size = batch_size or self.batch_size
        return tqdm(self.calibration.batches(size), total=self.calibration.count(size), desc=what, unit="batch",
                    disable=not self.progress, leave=False)

    def loss(self, inputs: dict[str, np.ndarray], labels: np.ndarray | None):
        import torch
        import torch.nn.functional as F

        outputs = self.model.module(*[torch.from_numpy(inputs[n]) for n in self.model.input_names])
        logits = (outputs[0] if isinstance(outputs, (tuple, list)) else outputs).float()
        if logits.dim() < 2:
            raise SpaError(f"the model's first output has shape {tuple(logits.shape)}: cross-entropy needs logits "
                           "of shape (N, classes, ...)")
        if labels is None:
            target = logits.detach().argmax(dim=1)
        else:
            target = torch.from_numpy(labels)
            expected = (logits.shape[0],) + tuple(logits.shape[2:])
            if tuple(target.shape) != expected:
                raise SpaError(f"labels of shape {tuple(target.shape)} do not fit the model's first output of shape "
                               f"{tuple(logits.shape)}: cross-entropy needs labels of shape {expected}")
            if target.min() < 0 or target.max() >= logits.shape[1]:
                raise SpaError(f"labels must be class indices in [0, {logits.shape[1]}), got values from "
                               f"{int(target.min())} to {int(target.max())}")
        return F.cross_entropy(logits / self.temperature, target)

    def gradients(self, loss, create_graph: bool = False):
        import torch

        grads = torch.autograd.grad(loss, self.tensors, create_graph=create_graph, allow_unused=True)
        return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, self.tensors)]

    def statistics(self, needs) -> dict[str, dict[str, np.ndarray]]:
        """statistic -> {parameter name -> array in ONNX layout}, for each statistic in `needs`."""
        import torch

        stats: dict[str, dict[str, np.ndarray]] = {}
        with torch.enable_grad():
            if "grad" in needs or "hessian_grad" in needs:
                stats["grad"] = self.mean_gradient()
            if "hessian_grad" in needs:
                stats["hessian_grad"] = self.hessian_gradient(stats["grad"])
            if "fisher" in needs:
                stats["fisher"] = self.fisher()
        return {k: v for k, v in stats.items() if k in needs}

    def batch_gradients(self, what: str = "gradient", per_batch=None):
        """For each calibration batch: (its share of the samples, {parameter name -> per_batch(loss)
        (default: the gradient) in ONNX layout})."""
        import torch

        with torch.enable_grad():
            for inputs, labels in self.batches(what):
                weight = len(next(iter(inputs.values()))) / self.calibration.size
                grads = (per_batch or self.gradients)(self.loss(inputs, self._labels(labels)))
                yield weight, self.to_onnx([g.detach() for g in grads])

    def weighted_sum(self, what: str, per_batch=None) -> dict[str, np.ndarray]:
        """sum over batches of (batch size / N) * per_batch(loss), in ONNX layout."""
        total: dict[str, np.ndarray] = {}
        for weight, values in self.batch_gradients(what, per_batch):
            for name, value in values.items():
                total[name] = total.get(name, 0) + weight * value
        return total

    def mean_gradient(self) -> dict[str, np.ndarray]:
        return self.weighted_sum("gradient")

    def hessian_gradient(self, grad: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        # In torch coordinates t = scale * W(.T), the vector that gives H_W g_W back in ONNX
        # coordinates is v = scale * g_W(.T) (see _to_torch_layout).
        vector = [torch.from_numpy(self._to_torch_layout(n, grad[n])) for n in self.names]

        def hessian_times_g(loss):
            first = self.gradients(loss, create_graph=True)
            inner = sum((f * v).sum() for f, v in zip(first, vector) if f.requires_grad)
            return self.gradients(inner) if torch.is_tensor(inner) else [torch.zeros_like(t) for t in self.tensors]

        return self.weighted_sum("Hessian x gradient", hessian_times_g)

    def fisher(self) -> dict[str, np.ndarray]:
        total = None
        for inputs, labels in self.batches("Fisher (per sample)", batch_size=1):
            squares = [g.detach() ** 2 for g in self.gradients(self.loss(inputs, self._labels(labels)))]
            total = squares if total is None else [a + b for a, b in zip(total, squares)]
        return {n: v / self.calibration.size for n, v in self.to_onnx(total).items()}

    def _labels(self, labels):
        if labels is None and not self.pseudo_labels:
            raise SpaError("the loss needs labels: add a 'labels' array to the calibration data, "
                           "or use pseudo-labels (the model's own predictions)")
        return labels

    def to_onnx(self, torch_grads) -> dict[str, np.ndarray]:
        """Gradients w.r.t. torch tensors -> gradients w.r.t. the ONNX parameters (t = s * W(.T))."""
        result = {}
        for name, grad in zip(self.names, torch_grads):
            layout = self.model.param_map[name].layout
            grad = grad.T if layout.transposed else grad
            result[name] = (grad * layout.scale).cpu().float().numpy()
        return result

    def _to_torch_layout(self, name: str, onnx_grad: np.ndarray) -> np.ndarray:
        layout = self.model.param_map[name].layout
        value = onnx_grad.T if layout.transposed else onnx_grad
        return np.ascontiguousarray(value * layout.scale, dtype=np.float32)
