"""LSTM, GRU and RNN as torch modules that compute the ONNX definitions, registered with onnx2torch.

onnx2torch 1.5.15 has no converter for the recurrent operators. These modules follow the ONNX
operator definitions step by step (not torch.nn.LSTM, whose gate order and GRU reset differ):

- LSTM: gates in the order i, o, f, c in W [dirs, 4H, in], R [dirs, 4H, H] and B [dirs, 8H]
  (W's biases then R's); optional peepholes P [dirs, 3H] (i, o, f);
  C_t = f * C_t-1 + i * g(c~), H_t = o * h(C_t).
- GRU: gates z, r, h in W [dirs, 3H, in], R [dirs, 3H, H], B [dirs, 6H]; with
  linear_before_reset=0 the candidate is g(X W_h + (r * H_t-1) R_h + Rb_h + Wb_h), with 1 it is
  g(X W_h + r * (H_t-1 R_h + Rb_h) + Wb_h); H_t = (1 - z) * h~ + z * H_t-1.
- RNN: H_t = f(X W + H_t-1 R + Wb + Rb).

Supported: direction forward, reverse and bidirectional; layout 0 ([seq, batch, ...]) and 1
([batch, seq, ...]); optional initial_h / initial_c (zeros), sequence_lens (the steps past a
sequence's length give zeros and leave its state as it was, as onnxruntime computes); clip (each
gate's input to its activation clamped to [-clip, clip]); the activations Sigmoid, Tanh and Relu
in any position (defaults: LSTM Sigmoid, Tanh, Tanh; GRU Sigmoid, Tanh; RNN Tanh). Anything else
(other activations, activation_alpha/beta, LSTM input_forget) is refused with the reason: the
bridge turns it into a one-line TorchConversionError naming the node.

Each module takes the node's inputs in ONNX order (W, R, B stay ONNX tensors, so SPA's parameter
map holds them in ONNX layout) and returns the node's outputs (Y, Y_h[, Y_c]) as a tuple, or the
one tensor when the node has one output.
"""
from __future__ import annotations

import torch
from onnx2torch.node_converters.registry import add_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node
from torch import nn

from .versions import has_converter

_ACTIVATIONS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu}
_DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_DIRECTIONS = {"forward": ("forward",), "reverse": ("reverse",), "bidirectional": ("forward", "reverse")}
# Versions with a schema of their own: 7 (the first onnxruntime runs), 14 (layout), 22 (bfloat16).
_VERSIONS = (7, 14, 22)


class _Recurrent(nn.Module):
    """What the three operators share: layouts, directions, sequence lengths, the time loop."""

    op_type = ""

    def __init__(self, directions: tuple[str, ...], layout: int, activations: list, clip: float | None,
                 num_outputs: int, linear_before_reset: bool = False):
        super().__init__()
        self.directions = directions
        self.layout = layout
        self.activations = activations  # one tuple of functions per direction
        self.clip = clip
        self.num_outputs = num_outputs
        self.linear_before_reset = linear_before_reset

    def run(self, x, w, r, b, sequence_lens, initial_h, initial_c=None, p=None):
        if self.layout:  # [batch, seq, in] and states [batch, dirs, H]
            x = x.transpose(0, 1)
            initial_h = None if initial_h is None else initial_h.transpose(0, 1)
            initial_c = None if initial_c is None else initial_c.transpose(0, 1)
        seq, batch = x.shape[0], x.shape[1]
        hidden = r.shape[-1]
        gates = _GATES[self.op_type]
        ys, hs, cs = [], [], []
        for d, direction in enumerate(self.directions):
            bias = b[d] if b is not None else None
            x_bias, r_bias = (None, None) if bias is None else (bias[: gates * hidden], bias[gates * hidden:])
            projected = x @ w[d].transpose(0, 1)  # every step's input projection at once: [seq, batch, G*H]
            if x_bias is not None:
                projected = projected + x_bias
            h = initial_h[d] if initial_h is not None else x.new_zeros(batch, hidden)
            c = initial_c[d] if initial_c is not None else x.new_zeros(batch, hidden)
            steps = range(seq) if direction == "forward" else range(seq - 1, -1, -1)
            outputs = [None] * seq
            for t in steps:
                h_new, c_new = self.step(projected[t], h, c, r[d], r_bias, None if p is None else p[d],
                                         self.activations[d])
                if sequence_lens is None:
                    h, c = h_new, c_new
                    outputs[t] = h
                else:
                    valid = (t < sequence_lens).unsqueeze(1)
                    h, c = torch.where(valid, h_new, h), torch.where(valid, c_new, c)
                    outputs[t] = torch.where(valid, h_new, torch.zeros_like(h_new))
            ys.append(torch.stack(outputs) if seq else x.new_zeros(0, batch, hidden))
            hs.append(h)
            cs.append(c)
        y, y_h, y_c = torch.stack(ys, 1), torch.stack(hs), torch.stack(cs)  # [seq, dirs, batch, H], [dirs, batch, H]
        if self.layout:
            y, y_h, y_c = y.permute(2, 0, 1, 3), y_h.transpose(0, 1), y_c.transpose(0, 1)
        results = (y, y_h, y_c)[: self.num_outputs]
        return results[0] if self.num_outputs == 1 else results

    def gate(self, value: torch.Tensor, activation) -> torch.Tensor:
        if self.clip is not None:
            value = value.clamp(-self.clip, self.clip)
        return activation(value)

    def step(self, x_part, h, c, r, r_bias, p, activations):
        raise NotImplementedError


class OnnxLSTM(_Recurrent):
    op_type = "LSTM"

    def forward(  # pylint: disable=arguments-differ
        self, x, w, r, b=None, sequence_lens=None, initial_h=None, initial_c=None, p=None
    ):
        return self.run(x, w, r, b, sequence_lens, initial_h, initial_c, p)

    def step(self, x_part, h, c, r, r_bias, p, activations):
        f, g, act_h = activations
        z = x_part + h @ r.transpose(0, 1)
        if r_bias is not None:
            z = z + r_bias
        i, o, forget, candidate = z.chunk(4, dim=-1)
        if p is not None:
            p_i, p_o, p_f = p.chunk(3)
            i, forget = i + p_i * c, forget + p_f * c
        i, forget = self.gate(i, f), self.gate(forget, f)
        c_new = forget * c + i * self.gate(candidate, g)
        if p is not None:
            o = o + p_o * c_new
        return self.gate(o, f) * act_h(c_new), c_new


class OnnxGRU(_Recurrent):
    op_type = "GRU"

    def forward(self, x, w, r, b=None, sequence_lens=None, initial_h=None):  # pylint: disable=arguments-differ
        return self.run(x, w, r, b, sequence_lens, initial_h)

    def step(self, x_part, h, c, r, r_bias, p, activations):
        f, g = activations
        x_z, x_r, x_h = x_part.chunk(3, dim=-1)
        r_z, r_r, r_h = r.chunk(3, dim=0)
        rb_z, rb_r, rb_h = (None, None, None) if r_bias is None else r_bias.chunk(3)
        z = x_z + h @ r_z.transpose(0, 1)
        reset = x_r + h @ r_r.transpose(0, 1)
        if r_bias is not None:
            z, reset = z + rb_z, reset + rb_r
        z, reset = self.gate(z, f), self.gate(reset, f)
        if self.linear_before_reset:
            recurrent = h @ r_h.transpose(0, 1)
            if rb_h is not None:
                recurrent = recurrent + rb_h
            candidate = x_h + reset * recurrent
        else:
            candidate = x_h + (reset * h) @ r_h.transpose(0, 1)
            if rb_h is not None:
                candidate = candidate + rb_h
        candidate = self.gate(candidate, g)
        return (1 - z) * candidate + z * h, c


class OnnxRNN(_Recurrent):
    op_type = "RNN"

    def forward(self, x, w, r, b=None, sequence_lens=None, initial_h=None):  # pylint: disable=arguments-differ
        return self.run(x, w, r, b, sequence_lens, initial_h)

    def step(self, x_part, h, c, r, r_bias, p, activations):
        z = x_part + h @ r.transpose(0, 1)
        if r_bias is not None:
            z = z + r_bias
        return self.gate(z, activations[0]), c


_MODULES = {"LSTM": OnnxLSTM, "GRU": OnnxGRU, "RNN": OnnxRNN}


def _activations(op_type: str, attributes, directions: int) -> list[tuple]:
    """One tuple of activation functions per direction (the attribute lists the forward ones first)."""
    per_direction = len(_DEFAULT_ACTIVATIONS[op_type])
    names = attributes.get("activations") or list(_DEFAULT_ACTIVATIONS[op_type]) * directions
    if len(names) == per_direction and directions == 2:
        names = list(names) * 2
    if len(names) != per_direction * directions:
        raise NotImplementedError(f"{op_type} with {len(names)} activations for {directions} direction(s)")
    unknown = [name for name in names if name.lower() not in _ACTIVATIONS]
    if unknown:
        raise NotImplementedError(f"{op_type} with activation {unknown[0]} (supported: Sigmoid, Tanh, Relu)")
    functions = [_ACTIVATIONS[name.lower()] for name in names]
    return [tuple(functions[d * per_direction:(d + 1) * per_direction]) for d in range(directions)]


def _convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # pylint: disable=unused-argument
    op_type, attributes = node.operation_type, node.attributes
    for name in ("activation_alpha", "activation_beta"):
        if name in attributes:
            raise NotImplementedError(f"{op_type} with {name}")
    if attributes.get("input_forget", 0):
        raise NotImplementedError(f"{op_type} with input_forget=1 (coupled input and forget gates)")
    direction = attributes.get("direction", "forward")
    if direction not in _DIRECTIONS:
        raise NotImplementedError(f"{op_type} with direction={direction!r}")
    directions = _DIRECTIONS[direction]
    clip = attributes.get("clip")
    module = _MODULES[op_type](
        directions=directions,
        layout=attributes.get("layout", 0),
        activations=_activations(op_type, attributes, len(directions)),
        clip=None if clip is None else float(clip),
        num_outputs=len(node.output_values),
        linear_before_reset=bool(attributes.get("linear_before_reset", 0)),
    )
    return OperationConverterResult(module, onnx_mapping_from_node(node))


def register() -> None:
    """Add the converters to onnx2torch's registry, leaving any it has of its own alone."""
    for op_type in _MODULES:
        for version in _VERSIONS:
            if not has_converter(op_type, version):
                add_converter(operation_type=op_type, version=version)(_convert)


register()
