"""Channel multiples the runtime's kernels like.

onnxruntime's CPU kernels do not cost the same per multiply-accumulate at every channel count:
its convolutions run channels in blocks (NCHWc layouts, 16 channels with AVX-512, 8 with AVX2),
and a count that is not a multiple wastes part of a block or falls back to a slower kernel. A
pruned model whose counts miss the blocks can run slower than the original although it has half
the FLOPs. `--round-to auto` (the default) keeps every group's channel count at the multiple its
layers work in, from the table below.

KERNEL_MULTIPLES was measured with `python bench/bench_multiples.py` (onnxruntime 1.32, AMD EPYC
with AVX-512, 1 and 2 threads): the time per MAC at every channel count from 32 below to 32 above
24, 64 and 160, in chains of layers, timed side by side. Missing a multiple of 16 made dense
convolutions 1.1 to 1.5 times dearer per MAC; depthwise convolutions cost 1.5 to 2
times more at counts that are not multiples of 4 and nothing measurable beyond; Gemm and MatMul
showed no multiple above noise. A multiple of 16 is one of 8 too, so the table suits AVX2 CPUs.
A group no larger than its multiple is left whole (spa.targets): a 16-channel layer cut to 8
leaves the blocked kernels and ran slower than the original (MobileNetV2's 16-to-96 expansion).
"""
from __future__ import annotations

import functools
import math
import types

import onnx

# layer kind -> the channel multiple onnxruntime's CPU kernels work in
KERNEL_MULTIPLES = {"conv": 16, "depthwise": 4, "gemm": 1}
LAYER_OPS = {"Conv": "conv", "ConvTranspose": "conv", "Gemm": "gemm", "MatMul": "gemm"}
ATTENTION_KINDS = ("heads", "head_dims")


def layer_kind(node: onnx.NodeProto) -> str | None:
    """conv (dense convolution), depthwise (depthwise or grouped convolution), gemm (Gemm and
    MatMul), or None for a node whose cost does not depend on blocks of channels."""
    kind = LAYER_OPS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    if kind == "conv" and any(a.name == "group" and a.i > 1 for a in node.attribute):
        return "depthwise"
    return kind


def group_multiple(group, graph) -> int:
    """The channel multiple a group's channels should keep: the least common multiple of the
    multiples of the layers its channels run through (as a layer's output or input channels).
    Attention heads go whole: a group of heads is rounded to single heads (1)."""
    if group.kind in ATTENTION_KINDS:
        return 1
    multiple = 1
    for member in group.members:
        tensor = graph.tensors.get(member.tensor)
        if tensor is None:
            continue
        nodes = tensor.consumers + ([tensor.producer] if tensor.producer is not None else [])
        for index in nodes:
            kind = layer_kind(graph.nodes[index])
            if kind:
                multiple = math.lcm(multiple, KERNEL_MULTIPLES[kind])
    return multiple


def layer_channels(node: onnx.NodeProto, weight_shape) -> tuple[int, int] | None:
    """(input, output) channels of a Conv, ConvTranspose, Gemm or MatMul with weight shape
    `weight_shape`, or None."""
    if not weight_shape or any(not isinstance(d, int) for d in weight_shape) or len(weight_shape) < 2:
        return None
    attrs = {a.name: a.i for a in node.attribute}
    group = attrs.get("group", 1)
    if node.op_type == "Conv":
        return weight_shape[1] * group, weight_shape[0]
    if node.op_type == "ConvTranspose":
        return weight_shape[0], weight_shape[1] * group
    if node.op_type == "Gemm" and attrs.get("transB"):
        return weight_shape[1], weight_shape[0]
    return weight_shape[-2], weight_shape[-1]


def misaligned_layers(original, pruned) -> list[dict]:
    """The layers of `pruned` whose channel counts the prune changed to a count that is not a
    multiple of what their kernels work in (KERNEL_MULTIPLES), most FLOPs first: what to blame
    when a pruned model runs slower. Each: node, op, kind, channels before and after (input,
    output), multiple, and FLOPs (MACs). Layers are matched to the original by node name."""
    from .graph import Graph
    from .metrics import count_flops

    before, after = Graph.load(original), Graph.load(pruned)
    old = {n.name: n for n in before.nodes if n.name}
    found = []
    for node in after.nodes:
        kind = layer_kind(node)
        if not kind or node.name not in old or len(node.input) < 2 or len(old[node.name].input) < 2:
            continue
        was = layer_channels(old[node.name], before.shape(old[node.name].input[1]))
        now = layer_channels(node, after.shape(node.input[1]))
        multiple = KERNEL_MULTIPLES[kind]
        if was is None or now is None or was == now or multiple == 1:
            continue
        if all(c % multiple == 0 for c, w in zip(now, was) if c != w):
            continue
        flops = count_flops(types.SimpleNamespace(nodes=[node], shape=after.shape))
        found.append({"node": node.name, "op": node.op_type, "kind": kind, "before": list(was), "after": list(now),
                      "multiple": multiple, "flops": flops})
    return sorted(found, key=lambda layer: -layer["flops"])


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux), empty where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()
