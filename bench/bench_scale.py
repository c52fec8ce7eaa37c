"""Time and memory of analyze and prune against graph size.

    python bench/bench_scale.py [--sizes 1000 2000 5000 10000] [--kind resnet|transformer]

Builds deep models directly in ONNX (a ResNet of basic blocks, or a transformer of attention and
MLP layers), then, each in a fresh process, times `spa.analyze` and `spa.prune(ratio=0.3)` and
reads the process's peak resident memory. Prints one row per size: nodes, model size, times,
time per 1,000 nodes (flat when the engine is linear), peak memory above the loaded Python, and
that peak as a multiple of the model's size.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def resnet(nodes: int, channels: int = 64, seed: int = 0) -> onnx.ModelProto:
    """Conv-Relu-Conv-Add-Relu blocks (5 nodes each) on 8x8 maps, then a pooled Gemm head."""
    rng = np.random.default_rng(seed)
    inits, body = [], []

    def weight(name, shape):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * 0.05).astype(np.float32), name))
        return name

    x = "input"
    body.append(helper.make_node("Conv", [x, weight("stem", (channels, 3, 3, 3)), weight("stem_b", (channels,))], ["h0"], pads=[1] * 4))
    x = "h0"
    for i in range(max(1, (nodes - 4) // 5)):
        a, b = f"b{i}", f"b{i}"
        body += [
            helper.make_node("Conv", [x, weight(f"{a}.w1", (channels, channels, 3, 3)), weight(f"{a}.b1", (channels,))], [f"{b}.c1"], pads=[1] * 4),
            helper.make_node("Relu", [f"{b}.c1"], [f"{b}.r1"]),
            helper.make_node("Conv", [f"{b}.r1", weight(f"{a}.w2", (channels, channels, 3, 3)), weight(f"{a}.b2", (channels,))], [f"{b}.c2"], pads=[1] * 4),
            helper.make_node("Add", [f"{b}.c2", x], [f"{b}.sum"]),
            helper.make_node("Relu", [f"{b}.sum"], [f"{b}.out"]),
        ]
        x = f"{b}.out"
    body += [helper.make_node("GlobalAveragePool", [x], ["pooled"]), helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("Gemm", ["flat", weight("fc", (10, channels)), weight("fc_b", (10,))], ["logits"], transB=1)]
    graph = helper.make_graph(body, "deep_resnet", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def transformer(nodes: int, hidden: int = 64, heads: int = 4, seq: int = 16, seed: int = 0) -> onnx.ModelProto:
    """Pre-norm layers: attention written as MatMul/Reshape/Transpose/Softmax, a GELU MLP."""
    rng = np.random.default_rng(seed)
    inits, body = [], []
    head = hidden // heads

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(name, shape):
        return const(name, (rng.standard_normal(shape) * 0.05).astype(np.float32))

    def node(op, inputs, name, **attrs):
        body.append(helper.make_node(op, inputs, [name], **attrs))
        return name

    split, merge = const("split", np.array([-1, seq, heads, head])), const("merge", np.array([-1, seq, hidden]))
    x = "input"
    for i in range(max(1, nodes // 25)):
        p = f"l{i}"
        n = node("LayerNormalization", [x, weight(f"{p}.ln1", (hidden,)), weight(f"{p}.ln1b", (hidden,))], f"{p}.n1", axis=-1)
        q, k, v = (node("Transpose", [node("Reshape", [node("MatMul", [n, weight(f"{p}.{t}", (hidden, hidden))], f"{p}.{t}m"),
                                                       split], f"{p}.{t}r")], f"{p}.{t}t", perm=perm)
                   for t, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])))
        scores = node("Softmax", [node("Mul", [node("MatMul", [q, k], f"{p}.qk"), const(f"{p}.scale", np.float32(head ** -0.5))],
                                       f"{p}.s")], f"{p}.p", axis=-1)
        att = node("Reshape", [node("Transpose", [node("MatMul", [scores, v], f"{p}.pv")], f"{p}.pt", perm=[0, 2, 1, 3]), merge], f"{p}.a")
        x = node("Add", [x, node("MatMul", [att, weight(f"{p}.o", (hidden, hidden))], f"{p}.om")], f"{p}.x1")
        n = node("LayerNormalization", [x, weight(f"{p}.ln2", (hidden,)), weight(f"{p}.ln2b", (hidden,))], f"{p}.n2", axis=-1)
        up = node("Gelu", [node("Add", [node("MatMul", [n, weight(f"{p}.fc1", (hidden, 4 * hidden))], f"{p}.f1"),
                                        weight(f"{p}.fc1b", (4 * hidden,))], f"{p}.f1b")], f"{p}.g")
        x = node("Add", [x, node("MatMul", [up, weight(f"{p}.fc2", (4 * hidden, hidden))], f"{p}.f2")], f"{p}.x2")
    logits = node("MatMul", [node("ReduceMean", [x, const("axis1", np.array([1]))], "pooled", keepdims=0),
                             weight("head", (hidden, 10))], "logits")
    graph = helper.make_graph(body, "deep_transformer",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", seq, hidden])],
                              [helper.make_tensor_value_info(logits, TensorProto.FLOAT, ["batch", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)


def measure(path: str) -> dict:
    """Run in a fresh process: time analyze and prune, and the peak resident memory."""
    code = f"""
import json, resource, time, spa
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter(); analysis = spa.analyze({path!r}); analyze_s = time.perf_counter() - start
start = time.perf_counter(); pruned, report = spa.prune({path!r}, ratio=0.3); prune_s = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(dict(analyze_s=analyze_s, prune_s=prune_s, peak_mb=(peak - base) / 1024, groups=len(analysis.groups),
                      params_drop=1 - report.params_after / report.params_before)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 5000, 10000])
    parser.add_argument("--kind", choices=("resnet", "transformer"), default="resnet")
    args = parser.parse_args()
    from spa.cli.common import table

    build = resnet if args.kind == "resnet" else transformer
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            model = build(size)
            path = os.path.join(tmp, f"{args.kind}_{size}.onnx")
            onnx.save(model, path)
            megabytes = os.path.getsize(path) / 2**20
            m = measure(path)
            n = len(model.graph.node)
            rows.append([n, f"{megabytes:.1f}", m["groups"], f"{m['analyze_s']:.2f}", f"{m['prune_s']:.2f}",
                         f"{1000 * m['analyze_s'] / n:.3f}", f"{1000 * m['prune_s'] / n:.3f}",
                         f"{m['peak_mb']:.0f}", f"{m['peak_mb'] / megabytes:.1f}x"])
            print(" ".join(map(str, rows[-1])), file=sys.stderr)
    print(table(rows, ["nodes", "model MB", "groups", "analyze s", "prune 30% s", "analyze s/1k nodes",
                       "prune s/1k nodes", "peak MB", "peak / model"]))


if __name__ == "__main__":
    main()
