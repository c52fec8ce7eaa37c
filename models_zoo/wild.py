"""The wild zoo: small models written the way other exporters and other people write them.

SPA's own zoo (``models_zoo.torch_models``) is exported by SPA's own front end, at the newest
opset. Files met in the wild look different (see the field notes, "What real models exported by
others look like"). Each builder here writes one ONNX file imitating one kind of real model and
returns its path. Everything is random-initialized from a seed; nothing is downloaded.

* :func:`resnet_ts11`, :func:`mobilenet_v2_ts12`: PyTorch-1.9-era exports (TorchScript exporter,
  opset 11 / 12, IR 6 / 7, BatchNorm folded, dynamic batch through ``dynamic_axes``); the ResNet
  lists every weight as a graph input as well (``keep_initializers_as_inputs=True``) and has
  1.9's default tensor names (``input.1``, a numbered output).
* :func:`paddle_style`: rewrites any ONNX file the way paddle2onnx writes graphs (opset 11,
  IR 6, ``-1`` and ``p2o.DynamicDimension.N`` dims, dotted names, Constant-node weights,
  initializers listed as inputs, Identity chains, a stale ``value_info``, hundreds of Constant
  nodes, the recognizer's character list in ``metadata_props``). :func:`paddle_classifier` and
  :func:`paddle_crnn` apply it to a text-direction classifier and to the CRNN.
* :func:`yolov8`: a YOLOv8-style detector (C2f, SPPF, FPN/PAN neck, decoupled heads, DFL decode,
  anchors made from the feature shapes), input ``[batch, 3, height, width]`` all symbolic; it
  runs only where height and width are multiples of 32.
* :func:`crnn`: a CRNN text recognizer (conv backbone collapsing height 32 to 1, 2-layer BiLSTM,
  per-step Softmax), input ``[1, 3, 32, width]``, opset 11.
* :func:`speech_gru`: a streaming speech model (Silero-VAD-like): a Conv1d front end on log-mel
  features and a 2-layer GRU whose state is a graph input and output.

:data:`WILD_ZOO` maps each name to a :class:`WildModel`: its builder, the torch module the file
computes (for checking the export), data-shaped inputs at a size it really runs at
(:func:`word_image`, :func:`scene_image`, :func:`speech_features`), its opset, the input shapes
to give a pruner where the declared ones do not run, and for the paddle-style models the plain
export they were rewritten from (which must prune alike).
"""
from __future__ import annotations

import itertools
import math
import os
import subprocess
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

from models_zoo import torch_models
from models_zoo.torch_models import conv_bn, init_model

__all__ = [
    "WildModel", "WILD_ZOO", "write", "torchscript_export", "paddle_style",
    "resnet_ts11", "mobilenet_v2_ts12", "paddle_classifier", "yolov8", "crnn", "paddle_crnn", "speech_gru",
    "text_direction_classifier_plain", "crnn_plain",
    "word_image", "scene_image", "speech_features", "CHARACTERS",
]

CHARACTERS = "0123456789abcdefghijklmnopqrstuvwxyz"
"""The recognizers' alphabet; class 0 is the CTC blank, class i + 1 is CHARACTERS[i]."""


# --------------------------------------------------------------------------------------------
# Export and initialization helpers
# --------------------------------------------------------------------------------------------

def torchscript_export(module: nn.Module, args: tuple, path, *, opset: int, input_names: list[str],
                       output_names: list[str], dynamic_axes: dict[str, dict[int, str]],
                       keep_batchnorm: bool = False, keep_initializers_as_inputs: bool = False) -> str:
    """Export with the TorchScript exporter (``dynamo=False``), as PyTorch 1.x did.

    ``keep_batchnorm`` keeps BatchNormalization nodes (``TrainingMode.PRESERVE`` on the eval-mode
    model skips the exporter's BN folding; see ``frontends.torch``), the way paddle2onnx writes them.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    module.eval()
    kw = {"training": torch.onnx.TrainingMode.PRESERVE} if keep_batchnorm else {}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, path, dynamo=False, opset_version=opset, input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic_axes,
                          keep_initializers_as_inputs=keep_initializers_as_inputs, **kw)
    return path


def _init(model: nn.Module, seed: int) -> nn.Module:
    """``init_model``, plus what it leaves at N(0, 0.02): Conv1d (Kaiming, as Conv2d) and the
    recurrent layers (U(-1/sqrt(hidden), 1/sqrt(hidden)), torch's own default, seeded)."""
    init_model(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv1d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / m.weight[0].numel()) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.05)
            elif isinstance(m, nn.RNNBase):
                bound = 1.0 / math.sqrt(m.hidden_size)
                for p in m.parameters():
                    p.copy_(torch.rand(p.shape, generator=g) * 2 * bound - bound)
    return model.eval()


# --------------------------------------------------------------------------------------------
# Inputs shaped like the data
# --------------------------------------------------------------------------------------------

_FONTS = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Bold.ttf")
_FONT_DIR = "/usr/share/fonts/truetype/dejavu"


def _font(size: int, index: int = 0):
    """A DejaVu TrueType font (installed with the system; ``fc-match`` finds it elsewhere)."""
    from PIL import ImageFont

    name = _FONTS[index % len(_FONTS)]
    candidates = [os.path.join(_FONT_DIR, name)]
    try:
        found = subprocess.run(["fc-match", "-f", "%{file}", name[:-4]], capture_output=True, text=True, timeout=10)
        candidates.append(found.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    for candidate in candidates:
        if candidate and os.path.exists(candidate):
            return ImageFont.truetype(candidate, size)
    return ImageFont.load_default(size)


def word_image(text: str = "spa2024", height: int = 32, width: int = 100, seed: int = 0) -> np.ndarray:
    """A rendered word, [1, 3, height, width] float32, normalized as PaddleOCR does ((x/255 - 0.5) / 0.5).

    Dark text on a light, slightly noisy background, fitted to the box (a recognizer's input)."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    font = _font(int(height * 0.8), seed)
    left, top, right, bottom = font.getbbox(text)
    canvas = Image.new("L", (right - left + 8, bottom - top + 8), color=int(rng.integers(200, 250)))
    ImageDraw.Draw(canvas).text((4 - left, 4 - top), text, fill=int(rng.integers(0, 60)), font=font)
    canvas = canvas.resize((width, height), Image.BILINEAR).filter(ImageFilter.GaussianBlur(0.6))
    pixels = np.asarray(canvas, dtype=np.float32) + rng.normal(0, 4, (height, width))
    pixels = (np.clip(pixels, 0, 255) / 255.0 - 0.5) / 0.5
    return np.repeat(pixels[None, None], 3, axis=1).astype(np.float32)


def scene_image(height: int = 64, width: int = 64, seed: int = 0, batch: int = 1) -> np.ndarray:
    """Rendered scenes (boxes, ellipses and a word on a gradient), [batch, 3, height, width]
    float32 normalized with the ImageNet mean and std: objects for a detector or a classifier."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    images = []
    for b in range(batch):
        ramp = np.linspace(40, 160, width)[None, :, None] + np.linspace(0, 60, height)[:, None, None]
        base = (ramp * rng.uniform(0.6, 1.0, 3)).astype(np.uint8).repeat(1, axis=2)
        image = Image.fromarray(np.broadcast_to(base, (height, width, 3)).copy())
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x0, y0 = rng.integers(0, width - 8), rng.integers(0, height - 8)
            x1, y1 = x0 + rng.integers(6, width // 2), y0 + rng.integers(6, height // 2)
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.rectangle if rng.random() < 0.5 else draw.ellipse)((x0, y0, x1, y1), fill=colour)
        draw.text((2, height // 2), "ab1", fill=(255, 255, 255), font=_font(max(8, height // 5), b))
        images.append(np.asarray(image, dtype=np.float32) / 255.0)
    x = np.stack(images).transpose(0, 3, 1, 2)
    mean = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
    std = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
    return ((x - mean) / std).astype(np.float32)


def speech_features(n_mels: int = 16, frames: int = 50, seed: int = 0) -> np.ndarray:
    """Log-mel-like features of a synthetic utterance, [1, n_mels, frames] float32.

    8 kHz audio: silence, then a voiced chirp with harmonics (a vowel glide), a pause, a noise
    burst (a fricative); framed (25 ms window, 10 ms hop), power spectrum, triangular mel bands, log.
    """
    rng = np.random.default_rng(seed)
    rate, hop, window = 8000, 80, 200
    n = hop * (frames - 1) + window
    t = np.arange(n) / rate
    f0 = 120 + 80 * t / t[-1]
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 6)) * ((t > 0.08) & (t < 0.3))
    fricative = rng.normal(0, 0.3, n) * ((t > 0.36) & (t < 0.45))
    audio = voiced + fricative + rng.normal(0, 0.005, n)
    idx = np.arange(window)[None, :] + hop * np.arange(frames)[:, None]
    power = np.abs(np.fft.rfft(audio[idx] * np.hanning(window), axis=1)) ** 2       # frames, bins
    mel = 2595 * np.log10(1 + np.fft.rfftfreq(window, 1 / rate) / 700)
    edges = np.linspace(0, mel[-1], n_mels + 2)
    bands = np.stack([np.clip(np.minimum((mel - lo) / (mid - lo), (hi - mel) / (hi - mid)), 0, None)
                      for lo, mid, hi in zip(edges, edges[1:], edges[2:])])          # n_mels, bins
    features = np.log(power @ bands.T + 1e-6).T
    features = (features - features.mean()) / features.std()
    return features[None].astype(np.float32)


# --------------------------------------------------------------------------------------------
# 1. PyTorch-1.9-era classifiers (TorchScript exporter, opset 11 and 12)
# --------------------------------------------------------------------------------------------

def _as_torch_1_9(path: str, renames: dict[str, str] | None = None) -> str:
    """What PyTorch 1.9 wrote that today's exporter does not: IR version 6 at opsets 11 and 12,
    and its default names (today's exporter refuses a numbered output name, so rename after)."""
    model = onnx.load(path)
    model.ir_version = 6
    _rename(model.graph, renames or {})
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def resnet_ts11(path, seed: int = 0) -> str:
    """ResNet-style CNN (``torch_models.resnet_basic``), TorchScript opset 11 as PyTorch 1.9
    wrote it: BatchNorm folded, IR 6, batch axis dynamic, every weight also a graph input
    (``keep_initializers_as_inputs=True``), 1.9's default names ``input.1`` and ``495``."""
    path = torchscript_export(torch_models.resnet_basic(seed), (torch.randn(1, 3, 32, 32),), path, opset=11,
                              input_names=["input.1"], output_names=["output"],
                              dynamic_axes={"input.1": {0: "batch_size"}, "output": {0: "batch_size"}},
                              keep_initializers_as_inputs=True)
    return _as_torch_1_9(path, {"output": "495"})


def mobilenet_v2_ts12(path, seed: int = 0) -> str:
    """MobileNetV2-style CNN (``torch_models.mobilenet_v2``: ReLU6 as Clip, depthwise convs,
    residual adds), TorchScript opset 12 (IR 6, as PyTorch 1.9), BatchNorm folded, batch dynamic."""
    path = torchscript_export(torch_models.mobilenet_v2(seed), (torch.randn(1, 3, 32, 32),), path, opset=12,
                              input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return _as_torch_1_9(path)


# --------------------------------------------------------------------------------------------
# 2. paddle2onnx-style graphs
# --------------------------------------------------------------------------------------------

_PADDLE_OP = {  # ONNX op -> the Paddle operator name its tensors are named after
    "Conv": "conv2d", "BatchNormalization": "batch_norm2d", "Relu": "relu", "MaxPool": "pool2d",
    "AveragePool": "pool2d", "GlobalAveragePool": "pool2d", "MatMul": "linear", "Gemm": "linear",
    "Add": "elementwise_add", "Mul": "elementwise_mul", "Softmax": "softmax", "LSTM": "lstm", "GRU": "gru",
    "Transpose": "transpose", "Squeeze": "squeeze", "Unsqueeze": "unsqueeze", "Reshape": "reshape2",
    "Flatten": "flatten", "HardSigmoid": "hard_sigmoid", "Sigmoid": "sigmoid", "Concat": "concat",
    "Clip": "clip", "Identity": "assign",
}
_PADDLE_WEIGHT = {  # (op, input index) -> Paddle's parameter suffix
    ("Conv", 1): "w_0", ("Conv", 2): "b_0",
    ("BatchNormalization", 1): "w_0", ("BatchNormalization", 2): "b_0",
    ("BatchNormalization", 3): "w_1", ("BatchNormalization", 4): "w_2",
    ("MatMul", 1): "w_0", ("Add", 1): "b_0",
    ("LSTM", 1): "w_0", ("LSTM", 2): "w_1", ("LSTM", 3): "b_0",
    ("GRU", 1): "w_0", ("GRU", 2): "w_1", ("GRU", 3): "b_0",
}
PADDLE_OUTPUT = "save_infer_model/scale_0.tmp_1"
"""The output name of a Paddle inference model saved with ``save_inference_model``."""


def _is_weight(tensor: onnx.TensorProto) -> bool:
    """Floating-point tensors with more than one element are parameters; the rest (int64 shapes
    and axes, scalars like Clip's bounds) are shape values, which paddle2onnx writes as Constants."""
    return tensor.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE) and \
        int(np.prod(tensor.dims)) > 1


def _gemm_as_matmul_add(graph: onnx.GraphProto) -> None:
    """Paddle's ``linear`` is MatMul + Add with an [in, out] weight: rewrite each plain Gemm so."""
    initializers = {t.name: t for t in graph.initializer}
    nodes = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = initializers.get(node.input[1]) if node.op_type == "Gemm" else None
        if weight is None or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            nodes.append(node)
            continue
        if attrs.get("transB", 0):
            weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight).T.copy(), weight.name))
        product = node.output[0] + "_matmul"
        nodes.append(helper.make_node("MatMul", [node.input[0], node.input[1]], [product]))
        if len(node.input) > 2 and node.input[2]:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]]))
        else:
            nodes[-1].output[0] = node.output[0]
    del graph.node[:]
    graph.node.extend(nodes)


def _paddle_names(graph: onnx.GraphProto) -> dict[str, str]:
    """Paddle names for every tensor: ``conv2d_3.w_0``, ``batch_norm2d_3.tmp_2``, ``linear_0.tmp_1``,
    the input ``x``; graph outputs get ``save_infer_model/...`` later."""
    initializers = {t.name for t in graph.initializer}
    real_inputs = [i.name for i in graph.input if i.name not in initializers]
    names = {name: ("x" if len(real_inputs) == 1 else f"x{i}") for i, name in enumerate(real_inputs)}
    counters: dict[str, int] = {}
    layer = ""
    for node in graph.node:
        op = _PADDLE_OP.get(node.op_type, node.op_type.lower())
        fused_add = node.op_type == "Add" and layer.startswith("linear_") and node.input[0] in names \
            and names[node.input[0]] == f"{layer}.tmp_0"
        if not fused_add:  # the Add after a linear's MatMul belongs to that linear
            layer = f"{op}_{counters.setdefault(op, 0)}"
            counters[op] += 1
        first = 1 if fused_add else (2 if node.op_type == "BatchNormalization" else 0)
        for j, out in enumerate(node.output):
            names.setdefault(out, f"{layer}.tmp_{first + j}")
        for i, name in enumerate(node.input):
            if name in initializers and name not in names:
                names[name] = f"{layer}.{_PADDLE_WEIGHT.get((node.op_type, i), f'w_{i}')}"
    return names


def _rename(graph: onnx.GraphProto, names: dict[str, str]) -> None:
    for node in graph.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
    for vi in (*graph.input, *graph.output, *graph.value_info):
        vi.name = names.get(vi.name, vi.name)
    for t in graph.initializer:
        t.name = names.get(t.name, t.name)


def _paddle_dims(vis, named: bool) -> None:
    """Symbolic axis 0 becomes dim_value -1; other symbolic axes ``p2o.DynamicDimension.N`` and
    ``DynamicDimension.N`` in turn on inputs (both spellings are in shipped files), -1 on outputs."""
    k = 0
    for vi in vis:
        for axis, dim in enumerate(vi.type.tensor_type.shape.dim):
            if dim.HasField("dim_value"):
                continue
            if axis == 0 or not named:
                dim.Clear()
                dim.dim_value = -1
            else:
                dim.dim_param = ("p2o.DynamicDimension.{}" if k % 2 == 0 else "DynamicDimension.{}").format(k)
                k += 1


def paddle_style(model_path, out_path, metadata: dict[str, str] | None = None,
                 identity_chain: int = 3, constants: int = 240) -> str:
    """Rewrite an ONNX model the way paddle2onnx writes graphs; the result computes the same.

    - opset 11 (``onnx.version_converter`` where the source has another), IR version 6,
      producer ``PaddlePaddle``;
    - plain Gemm as MatMul + Add with an [in, out] weight (Paddle's ``linear``);
    - Paddle tensor names (``conv2d_10.w_0``, ``batch_norm2d_3.tmp_2``, ``linear_0.tmp_1``),
      node names ``p2o.Conv.0``, input ``x``, outputs ``save_infer_model/scale_N.tmp_1``
      (through an Identity, as Paddle's final ``scale`` op), Identity tensors ``NAME/identity:K``;
    - every third weight in a Constant node, the other weights initializers also listed as graph
      inputs; every shape value (int64 vectors, scalars) a Constant node per use;
    - chains of ``identity_chain`` Identity nodes on every second activation and on every second
      weight;
    - input dims: axis 0 as dim_value -1, other symbolic axes ``p2o.DynamicDimension.N`` /
      ``DynamicDimension.N``; output symbolic axes -1;
    - a stale ``value_info``: a wrong shape on a real activation and an entry for a tensor that
      no longer exists;
    - padded with unused shape Constants to ``constants`` Constant nodes in all (shipped files hold
      hundreds);
    - ``metadata`` in ``metadata_props`` (a recognizer's ``character`` list, newline-separated).
    """
    model = onnx.load(os.fspath(model_path))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset != 11:
        model = onnx.version_converter.convert_version(model, 11)
    graph = model.graph
    _gemm_as_matmul_add(graph)
    initializer_names = {t.name for t in graph.initializer}
    del graph.value_info[:]
    real_inputs = [i for i in graph.input if i.name not in initializer_names]
    del graph.input[:]
    graph.input.extend(real_inputs)
    _rename(graph, _paddle_names(graph))

    constants_out: list[onnx.NodeProto] = []
    counter = {"constant": 0, "identity": 0}

    def constant(value: onnx.TensorProto, name: str | None = None) -> str:
        if name is None:
            name = f"p2o.helper.constant.{counter['constant']}"
            counter["constant"] += 1
        tensor = onnx.TensorProto()
        tensor.CopyFrom(value)
        tensor.name = name
        constants_out.append(helper.make_node("Constant", [], [name], value=tensor))
        return name

    def chain(source: str) -> tuple[list[onnx.NodeProto], str]:
        nodes, current = [], source
        for _ in range(identity_chain):
            out = f"{source}/identity:{counter['identity']}"
            counter["identity"] += 1
            nodes.append(helper.make_node("Identity", [current], [out]))
            current = out
        return nodes, current

    # Weights (in order of first use) and shape values.
    weights = [t for t in graph.initializer if _is_weight(t)]
    shapes = {t.name: t for t in graph.initializer if not _is_weight(t)}
    kept = []
    for i, tensor in enumerate(weights):
        if i % 3 == 1:
            constant(tensor, tensor.name)
        else:
            kept.append(tensor)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in kept)

    weight_chains: list[onnx.NodeProto] = []
    chained_weight = {}
    for i, tensor in enumerate(weights):
        if i % 2 == 0:
            nodes, end = chain(tensor.name)
            weight_chains += nodes
            chained_weight[tensor.name] = end

    output_names = {o.name for o in graph.output}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    body: list[onnx.NodeProto] = []
    chained_activation: dict[str, str] = {}
    for k, node in enumerate(graph.node):
        node.input[:] = [constant(shapes[n]) if n in shapes else chained_activation.get(n, chained_weight.get(n, n))
                         for n in node.input]
        body.append(node)
        for out in node.output:
            if k % 2 == 0 and consumers.get(out) and out not in output_names:
                nodes, chained_activation[out] = chain(out)
                body += nodes
    for i, output in enumerate(graph.output):  # Paddle's final scale op, exported as Identity
        final = PADDLE_OUTPUT.replace("scale_0", f"scale_{i}")
        body.append(helper.make_node("Identity", [output.name], [final]))
        output.name = final

    fillers = itertools.cycle([np.array([0, -1], np.int64), np.array([1, -1, 1, 1], np.int64),
                               np.array(1.0, np.float32), np.array([2], np.int64)])
    while len(constants_out) < constants:  # shape values nothing reads
        constant(numpy_helper.from_array(next(fillers)))

    del graph.node[:]
    graph.node.extend(constants_out + weight_chains + body)
    per_op: dict[str, int] = {}
    for node in graph.node:  # p2o.Conv.0, p2o.Conv.1, ...
        node.name = f"p2o.{node.op_type}.{per_op.setdefault(node.op_type, 0)}"
        per_op[node.op_type] += 1

    _paddle_dims(graph.input, named=True)
    _paddle_dims(graph.output, named=False)
    activation = next(n.output[0] for n in body if n.op_type in ("BatchNormalization", "Conv"))
    graph.value_info.extend([
        helper.make_tensor_value_info(activation, TensorProto.FLOAT, [1, 7, 7, 7]),           # wrong shape
        helper.make_tensor_value_info("conv2d_0.tmp_0@stale", TensorProto.FLOAT, [-1, 8, -1, -1]),  # gone
    ])
    graph.name = "Model from PaddlePaddle."
    model.ir_version = 6
    model.producer_name, model.producer_version = "PaddlePaddle", ""
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("", 11))
    del model.metadata_props[:]
    for key, value in (metadata or {}).items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.checker.check_model(model)
    out_path = os.fspath(out_path)
    onnx.save(model, out_path)
    return out_path


class TextDirectionClassifier(nn.Module):
    """PaddleOCR's text-direction classifier, tiny: depthwise-separable Conv-BN-Hardswish/ReLU
    stages, global average pool, Linear to the two labels ("0", "180"), Softmax."""

    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 8, stride=2, act=nn.Hardswish),
            conv_bn(8, 8, groups=8), conv_bn(8, 16, 1, act=nn.Hardswish),
            conv_bn(16, 16, stride=2, groups=16), conv_bn(16, 32, 1, act=nn.Hardswish),
            conv_bn(32, 32, groups=32), conv_bn(32, 32, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        return torch.softmax(self.fc(torch.flatten(self.pool(self.features(x)), 1)), dim=1)


def text_direction_classifier(seed: int = 0) -> nn.Module:
    return _init(TextDirectionClassifier(), seed)


def _bn_kept_export(module: nn.Module, path, dynamic: dict[int, str]) -> str:
    """TorchScript opset 11 with BatchNorm kept (Paddle keeps it), on a 32 x 100 example image."""
    return torchscript_export(module, (torch.randn(1, 3, 32, 100),), path, opset=11, input_names=["image"],
                              output_names=["probs"], dynamic_axes={"image": dynamic, "probs": {0: "batch"}},
                              keep_batchnorm=True)


def _paddle_from(source: Callable[..., str], path, seed: int, metadata: dict[str, str]) -> str:
    """Write ``source``'s plain export next to ``path``, rewrite it with :func:`paddle_style`, drop it."""
    path = os.fspath(path)
    plain = source(path + ".source.onnx", seed=seed)
    try:
        return paddle_style(plain, path, metadata=metadata)
    finally:
        os.remove(plain)


def text_direction_classifier_plain(path, seed: int = 0) -> str:
    """The plain export :func:`paddle_classifier` rewrites: BatchNorm kept, batch, height, width dynamic."""
    return _bn_kept_export(text_direction_classifier(seed), path, {0: "batch", 2: "height", 3: "width"})


def paddle_classifier(path, seed: int = 0) -> str:
    """paddle2onnx-style text-direction classifier (PaddleOCR ``cls``): input
    ``x: [-1, 3, p2o.DynamicDimension.0, DynamicDimension.1]``, BatchNorm unfused, labels in metadata."""
    return _paddle_from(text_direction_classifier_plain, path, seed, {"label_list": "0\n180"})


# --------------------------------------------------------------------------------------------
# 3. YOLOv8-style detector
# --------------------------------------------------------------------------------------------

class ConvBnSiLU(nn.Sequential):
    """Ultralytics ``Conv``: Conv2d (no bias, 'same' padding) + BatchNorm2d + SiLU."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1):
        super().__init__(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.SiLU())


class YoloBottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool):
        super().__init__()
        self.cv1, self.cv2, self.add = ConvBnSiLU(c, c, 3), ConvBnSiLU(c, c, 3), shortcut

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """1x1 conv, chunk into two halves, n bottlenecks on the last piece, Concat of all, 1x1 conv."""

    def __init__(self, cin: int, cout: int, n: int = 1, shortcut: bool = False):
        super().__init__()
        self.c = cout // 2
        self.cv1 = ConvBnSiLU(cin, 2 * self.c)
        self.cv2 = ConvBnSiLU((2 + n) * self.c, cout)
        self.m = nn.ModuleList(YoloBottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    """1x1 conv, three chained MaxPool(5, 1, 2), Concat of the four, 1x1 conv."""

    def __init__(self, cin: int, cout: int, k: int = 5):
        super().__init__()
        hidden = cin // 2
        self.cv1, self.cv2 = ConvBnSiLU(cin, hidden), ConvBnSiLU(hidden * 4, cout)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x):
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class DFL(nn.Module):
    """Distribution focal loss decode: softmax over reg_max bins, expectation by a fixed 1x1 conv."""

    def __init__(self, reg_max: int):
        super().__init__()
        self.reg_max = reg_max
        self.conv = nn.Conv2d(reg_max, 1, 1, bias=False).requires_grad_(False)

    def reset(self) -> None:
        """The fixed arange weights (call after any re-initialization)."""
        with torch.no_grad():
            self.conv.weight.copy_(torch.arange(self.reg_max, dtype=torch.float).view(1, self.reg_max, 1, 1))

    def forward(self, x):
        b, _, a = x.shape
        return self.conv(x.view(b, 4, self.reg_max, a).transpose(2, 1).softmax(1)).view(b, 4, a)


class Detect(nn.Module):
    """Decoupled heads per level (box: 4 * reg_max channels, class: nc), flattened and
    concatenated over levels, split, DFL-decoded to distances, turned into boxes with anchors made
    from the feature shapes (as ultralytics exports with dynamic=True), and sigmoid scores."""

    def __init__(self, nc: int, channels: tuple[int, ...], strides: tuple[int, ...], reg_max: int = 16):
        super().__init__()
        self.nc, self.reg_max, self.no, self.strides = nc, reg_max, nc + 4 * reg_max, strides
        c2, c3 = max(16, channels[0] // 4, reg_max * 2), max(channels[0], nc)
        self.cv2 = nn.ModuleList(nn.Sequential(ConvBnSiLU(c, c2, 3), ConvBnSiLU(c2, c2, 3), nn.Conv2d(c2, 4 * reg_max, 1))
                                 for c in channels)
        self.cv3 = nn.ModuleList(nn.Sequential(ConvBnSiLU(c, c3, 3), ConvBnSiLU(c3, c3, 3), nn.Conv2d(c3, nc, 1))
                                 for c in channels)
        self.dfl = DFL(reg_max)

    @staticmethod
    def anchors(feats: list[torch.Tensor], strides: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        points, stride_list = [], []
        for x, stride in zip(feats, strides):
            h, w = x.shape[2], x.shape[3]
            sy = torch.arange(h, dtype=torch.float) + 0.5
            sx = torch.arange(w, dtype=torch.float) + 0.5
            gy, gx = torch.meshgrid(sy, sx, indexing="ij")
            points.append(torch.stack((gx, gy), -1).view(-1, 2))
            stride_list.append(torch.full((h * w, 1), float(stride)))
        return torch.cat(points).transpose(0, 1), torch.cat(stride_list).transpose(0, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = [torch.cat((box(f), cls(f)), 1) for f, box, cls in zip(feats, self.cv2, self.cv3)]
        b = x[0].shape[0]
        x_cat = torch.cat([xi.view(b, self.no, -1) for xi in x], 2)
        box, cls = x_cat.split((self.reg_max * 4, self.nc), 1)
        anchor, stride = self.anchors(x, self.strides)
        lt, rb = self.dfl(box).chunk(2, 1)
        x1y1, x2y2 = anchor.unsqueeze(0) - lt, anchor.unsqueeze(0) + rb
        boxes = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * stride
        return torch.cat((boxes, cls.sigmoid()), 1)


class YOLOv8(nn.Module):
    """YOLOv8n's layout at tiny widths: stem and 4 stride-2 Conv + C2f stages, SPPF, an FPN/PAN
    neck (nearest Upsample x2 + Concat, stride-2 Conv + Concat), Detect on P3/P4/P5."""

    def __init__(self, nc: int = 4, widths: tuple[int, ...] = (8, 16, 32, 48, 64)):
        super().__init__()
        c0, c1, c2, c3, c4 = widths
        self.stem = ConvBnSiLU(3, c0, 3, 2)                                                     # P1/2
        self.p2 = nn.Sequential(ConvBnSiLU(c0, c1, 3, 2), C2f(c1, c1, 1, True))               # P2/4
        self.p3 = nn.Sequential(ConvBnSiLU(c1, c2, 3, 2), C2f(c2, c2, 2, True))               # P3/8
        self.p4 = nn.Sequential(ConvBnSiLU(c2, c3, 3, 2), C2f(c3, c3, 1, True))               # P4/16
        self.p5 = nn.Sequential(ConvBnSiLU(c3, c4, 3, 2), C2f(c4, c4, 1, True), SPPF(c4, c4))  # P5/32
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.top_down4, self.top_down3 = C2f(c4 + c3, c3), C2f(c3 + c2, c2)
        self.down3, self.bottom_up4 = ConvBnSiLU(c2, c2, 3, 2), C2f(c2 + c3, c3)
        self.down4, self.bottom_up5 = ConvBnSiLU(c3, c3, 3, 2), C2f(c3 + c4, c4)
        self.detect = Detect(nc, (c2, c3, c4), (8, 16, 32))

    def forward(self, x):
        p3 = self.p3(self.p2(self.stem(x)))
        p4 = self.p4(p3)
        p5 = self.p5(p4)
        h4 = self.top_down4(torch.cat((self.up(p5), p4), 1))
        out3 = self.top_down3(torch.cat((self.up(h4), p3), 1))
        out4 = self.bottom_up4(torch.cat((self.down3(out3), h4), 1))
        out5 = self.bottom_up5(torch.cat((self.down4(out4), p5), 1))
        return self.detect([out3, out4, out5])


def yolov8_module(seed: int = 0) -> nn.Module:
    model = _init(YOLOv8(), seed)
    model.detect.dfl.reset()
    return model


def yolov8(path, seed: int = 0) -> str:
    """YOLOv8-style detector, TorchScript opset 12, input ``images: [batch, 3, height, width]``
    (all symbolic, ``dynamic_axes``), output ``output0: [batch, 4 + nc, anchors]``.
    Runs only at height and width multiples of 32 (the neck concatenates upsampled P5 with P4)."""
    return torchscript_export(yolov8_module(seed), (torch.randn(1, 3, 64, 64),), path, opset=12,
                              input_names=["images"], output_names=["output0"],
                              dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                                            "output0": {0: "batch", 2: "anchors"}})


# --------------------------------------------------------------------------------------------
# 4. CRNN text recognizer
# --------------------------------------------------------------------------------------------

class CRNN(nn.Module):
    """Conv-BN-ReLU backbone with MaxPools taking height 32 to 1 (width / 4), squeeze, [T, B, C],
    2-layer bidirectional LSTM, Linear to the classes, Softmax per step, output [B, T, classes]."""

    def __init__(self, num_classes: int = len(CHARACTERS) + 1, hidden: int = 16):
        super().__init__()
        self.cnn = nn.Sequential(
            conv_bn(3, 8), nn.MaxPool2d(2, 2),                                   # 16 x W/2
            conv_bn(8, 16), nn.MaxPool2d(2, 2),                                  # 8 x W/4
            conv_bn(16, 32), conv_bn(32, 32), nn.MaxPool2d((2, 1), (2, 1)),     # 4
            conv_bn(32, 48), nn.MaxPool2d((2, 1), (2, 1)),                      # 2
            conv_bn(48, 48), nn.MaxPool2d((2, 1), (2, 1)))                      # 1
        self.rnn = nn.LSTM(48, hidden, num_layers=2, bidirectional=True)
        self.fc = nn.Linear(2 * hidden, num_classes)

    def forward(self, x):
        features = self.cnn(x).squeeze(2).permute(2, 0, 1)   # T, B, C
        y, _ = self.rnn(features)
        return self.fc(y).softmax(2).permute(1, 0, 2)        # B, T, classes


def crnn_module(seed: int = 0) -> nn.Module:
    """The CRNN with a head as confident as a trained one's (random heads give flat softmaxes)."""
    model = _init(CRNN(), seed)
    with torch.no_grad():
        model.fc.weight.mul_(6.0)
    return model


def crnn(path, seed: int = 0) -> str:
    """CRNN, TorchScript opset 11 as 1.9-era recognizers ship: input ``input: [1, 3, 32, width]``
    (width symbolic), LSTM nodes, output ``output: [1, width / 4, 37]`` (CTC probabilities)."""
    return torchscript_export(crnn_module(seed), (torch.randn(1, 3, 32, 100),), path, opset=11,
                              input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {3: "width"}, "output": {1: "seq"}})


def crnn_plain(path, seed: int = 0) -> str:
    """The plain export :func:`paddle_crnn` rewrites: BatchNorm kept, batch and width dynamic."""
    return _bn_kept_export(crnn_module(seed), path, {0: "batch", 3: "width"})


def paddle_crnn(path, seed: int = 0) -> str:
    """The CRNN as paddle2onnx writes a PaddleOCR recognizer: ``x: [-1, 3, 32, p2o.DynamicDimension.0]``,
    BatchNorm unfused, the character list in ``metadata_props["character"]``."""
    return _paddle_from(crnn_plain, path, seed, {"character": "\n".join(CHARACTERS)})


# --------------------------------------------------------------------------------------------
# 5. Streaming speech model
# --------------------------------------------------------------------------------------------

class StreamingGRU(nn.Module):
    """Conv1d-BN-ReLU x2 front end on log-mel features [B, mels, T], a 2-layer GRU with its state
    passed in and returned (forward(x, h) -> (logits, h_new)), Linear to per-frame logits."""

    def __init__(self, n_mels: int = 16, channels: int = 32, hidden: int = 24, layers: int = 2, n_out: int = 8):
        super().__init__()
        self.frontend = nn.Sequential(
            nn.Conv1d(n_mels, channels, 3, padding=1, bias=False), nn.BatchNorm1d(channels), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm1d(channels), nn.ReLU())
        self.gru = nn.GRU(channels, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, n_out)

    def forward(self, x, h):
        y, h_new = self.gru(self.frontend(x).transpose(1, 2), h)
        return self.head(y), h_new


SPEECH_STATE = (2, 1, 24)
"""The speech model's state shape [layers, batch, hidden] at batch 1."""


def speech_gru_module(seed: int = 0) -> nn.Module:
    return _init(StreamingGRU(), seed)


def speech_gru(path, seed: int = 0) -> str:
    """Streaming speech model (Silero-VAD / streaming-ASR style), TorchScript opset 13: inputs
    ``input: [batch, 16, time]`` and ``h: [2, batch, 24]``, outputs ``output: [batch, time, 8]``
    and ``hn: [2, batch, 24]``. The GRU's hidden units reach graph inputs and outputs; the
    front end's channels do not."""
    return torchscript_export(speech_gru_module(seed), (torch.randn(1, 16, 50), torch.zeros(SPEECH_STATE)), path,
                              opset=13, input_names=["input", "h"], output_names=["output", "hn"],
                              dynamic_axes={"input": {0: "batch", 2: "time"}, "h": {1: "batch"},
                                            "output": {0: "batch", 1: "time"}, "hn": {1: "batch"}})


def speech_state(seed: int = 0) -> np.ndarray:
    """A state as a stream carries one: small, bounded values (GRU states lie in (-1, 1))."""
    return np.tanh(np.random.default_rng(seed).normal(0, 0.5, SPEECH_STATE)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WildModel:
    """One wild-zoo model. ``feeds()`` are data-shaped inputs, keyed by the file's input names, at a
    size the model runs at; ``module(seed)`` is the torch model the file computes (its outputs in
    the file's order); ``input_shapes`` are the sizes to give a pruner where the declared ones
    (symbolic dims taken small) do not run, or None; ``plain`` writes, for a paddle-style model,
    the ordinary export that :func:`paddle_style` rewrote (it must prune alike)."""
    write: Callable[..., str]
    module: Callable[[int], nn.Module]
    feeds: Callable[[], dict[str, np.ndarray]]
    opset: int
    input_shapes: dict[str, tuple[int, ...]] | None = None
    plain: Callable[..., str] | None = None
    description: str = ""


def _entry(write, module, feeds, opset, **kw) -> WildModel:
    return WildModel(write, module, feeds, opset, description=(write.__doc__ or "").strip().splitlines()[0], **kw)


WILD_ZOO: dict[str, WildModel] = {
    "resnet_ts11": _entry(resnet_ts11, torch_models.resnet_basic,
                          lambda: {"input.1": scene_image(32, 32, batch=2)}, 11),
    "mobilenet_v2_ts12": _entry(mobilenet_v2_ts12, torch_models.mobilenet_v2,
                                lambda: {"input": scene_image(32, 32, batch=2)}, 12),
    "paddle_classifier": _entry(paddle_classifier, text_direction_classifier,
                                lambda: {"x": word_image("hello42")}, 11,
                                plain=text_direction_classifier_plain),
    "yolov8": _entry(yolov8, yolov8_module, lambda: {"images": scene_image(64, 64)}, 12,
                     input_shapes={"images": (1, 3, 64, 64)}),
    "crnn": _entry(crnn, crnn_module, lambda: {"input": word_image("spa2024")}, 11,
                   input_shapes={"input": (1, 3, 32, 100)}),
    "paddle_crnn": _entry(paddle_crnn, crnn_module, lambda: {"x": word_image("prune7")}, 11,
                          input_shapes={"x": (1, 3, 32, 100)}, plain=crnn_plain),
    "speech_gru": _entry(speech_gru, speech_gru_module,
                         lambda: {"input": speech_features(), "h": speech_state()}, 13),
}


def write(name: str, path, seed: int = 0) -> str:
    """Write the wild-zoo model ``name`` to ``path`` and return the path."""
    if name not in WILD_ZOO:
        raise KeyError(f"unknown wild-zoo model {name!r}; known: {sorted(WILD_ZOO)}")
    return WILD_ZOO[name].write(path, seed=seed)
