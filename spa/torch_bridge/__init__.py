"""From ONNX to a trainable PyTorch module and back.

`to_torch` converts an ONNX model with onnx2torch and returns a `TorchModel`: the module (its
forward takes the graph inputs in order and returns the graph outputs) and a `param_map` saying,
for each floating-point ONNX initializer, which torch tensor holds it and in which layout.
`write_back` copies the torch values into a copy of the ONNX model.

Before converting, the model is put in a form onnx2torch converts (`prepare`): Constant nodes
become initializers of the same name (paddle2onnx writes weights so), Identity copies of weights
are bypassed, shared BatchNorm statistics are split, SAME padding made explicit, and nodes whose
names onnx2torch cannot use as module names are renamed. Tensor names are kept, so `param_map`
is keyed by the model's own names. Converters onnx2torch lacks are added to its registry:
operator versions after its last one (`versions`) and LSTM, GRU and RNN (`recurrent`).

onnx2torch stores an initializer in one of three ways, and all three are handled (`params`):
- passed to the operator's forward: it keeps a buffer per use (so a shared initializer is
  duplicated). We replace those by one `nn.Parameter` per initializer;
- copied into the parameters of a torch layer (Conv, Linear from Gemm, BatchNorm, LayerNorm,
  InstanceNorm), possibly transposed or scaled. That layer's parameter becomes the one tensor of
  the initializer, and other layers using the same initializer are tied to it;
- read as a plain number at conversion (Clip bounds). Those are not in the module: `constants`.
Every float initializer the module computes with is trainable, except BatchNorm running
statistics (torch buffers, updated in train mode), Pow exponents (NaN gradients) and
single-element constants (epsilons, scales, bounds: settings, not weights).

A model that still cannot be converted raises `TorchConversionError`, one line naming the
operator, its version and the node.
"""
from .convert import to_torch, write_back
from .model import IDENTITY, Layout, ParamRef, TorchConversionError, TorchModel
from .versions import _TYPE_ONLY_VERSIONS

__all__ = ["IDENTITY", "Layout", "ParamRef", "TorchConversionError", "TorchModel", "to_torch", "write_back"]
