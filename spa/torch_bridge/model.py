"""What to_torch returns: the module and where each ONNX initializer lives in it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from onnx import TensorProto
from torch import fx


class TorchConversionError(ValueError):
    """The ONNX model cannot be turned into a torch module (one-line message)."""


FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}


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
        return to_onnx_layout(self.torch_tensor(name), ref.layout)

    def onnx_grad(self, name: str) -> np.ndarray:
        """The gradient of the initializer in ONNX layout, as float32; zeros where no gradient
        was computed (not trainable, or not reached by the last backward pass)."""
        ref = self.param_map[name]
        tensor = self.torch_tensor(name)
        if tensor.grad is None:
            return np.zeros(to_onnx_layout(tensor, ref.layout).shape, dtype=np.float32)
        # d loss / d onnx = scale * (d loss / d torch), transposed back
        grad = tensor.grad.T if ref.layout.transposed else tensor.grad
        return (grad * ref.layout.scale).detach().cpu().float().numpy()


def to_onnx_layout(tensor: torch.Tensor, layout: Layout) -> torch.Tensor:
    onnx_tensor = tensor.T if layout.transposed else tensor
    return onnx_tensor if layout.scale == 1.0 else onnx_tensor / layout.scale

