"""Which channel counts do onnxruntime's CPU kernels like? Time per MAC at counts around multiples.

    python bench/bench_multiples.py [--kinds conv depthwise gemm] [--bases 64 160] [--rows 1 128]
                                    [--runs 40] [--threads N] [--threshold 0.1]

For each kind of layer, small models whose pruned dimension is C, for every even C from base - 32
to base + 32 and some odd ones, are timed in one process, taking turns run after run, and each
model's fastest run is kept (on a shared machine the fastest run is the kernels' own speed; a
median moves with the others' load). The layers are in chains, as in a network, so the layout
changes onnxruntime puts around blocked kernels are paid once per chain:

- conv: 1x1 (64 -> C), three 3x3 (C -> C) with Relu, 1x1 (C -> 64), at 28x28;
- depthwise: 1x1 (64 -> C), depthwise 3x3 (C), 1x1 (C -> 64), three such blocks, at 28x28 (the
  inverted residual of MobileNetV2: a depthwise group's channels always feed pointwise convs too);
- gemm: MatMul 768 -> C, Relu, MatMul C -> 768, on 1 and on 128 rows (a classifier head, a
  transformer's MLP).

Prints the time per MAC of every C relative to that of `base`, and for each candidate multiple M
(2, 4, ..., 32) how much dearer per MAC the counts that are multiples of M/2 but not of M are than
the multiples of M on either side. The multiple a kind of layer works in is the largest M that
costs at least --threshold more to miss, in every base and on 1 and 2 threads (one run on a loaded
machine can show a spurious one: compare runs); spa.hardware.KERNEL_MULTIPLES holds what this
machine measured (about 2 minutes per kind).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

SIZE = 28
CANDIDATES = (2, 4, 8, 16, 32)


def _conv(name, x, y, cin, cout, k, group, rng, init):
    import onnx
    from onnx import helper, numpy_helper

    w = rng.standard_normal((cout, cin // group, k, k)).astype(np.float32) * 0.05
    b = rng.standard_normal(cout).astype(np.float32) * 0.05
    init += [numpy_helper.from_array(w, f"{name}.w"), numpy_helper.from_array(b, f"{name}.b")]
    return helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [y], name=name, group=group,
                            kernel_shape=[k, k], pads=[k // 2] * 4)


def conv_model(c: int, kind: str, rng):
    """(model, MACs) of a conv or depthwise chain whose inner channel count is c."""
    from onnx import TensorProto, helper

    nodes, init, macs = [], [], 0
    x = "x"

    def add(cin, cout, k, group, relu=True):
        nonlocal x, macs
        i = len(nodes)
        nodes.append(_conv(f"conv{i}", x, f"t{i}", cin, cout, k, group, rng, init))
        macs += cout * (cin // group) * k * k * SIZE * SIZE
        x = f"t{i}"
        if relu:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"

    if kind == "conv":
        add(64, c, 1, 1)
        for _ in range(3):
            add(c, c, 3, 1)
        add(c, 64, 1, 1, relu=False)
    else:
        for _ in range(3):
            add(64, c, 1, 1)
            add(c, c, 3, c)
            add(c, 64, 1, 1, relu=False)
    graph = helper.make_graph(nodes, kind, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, SIZE, SIZE])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), macs


def gemm_model(c: int, rows: int, rng):
    from onnx import TensorProto, helper, numpy_helper

    w1 = rng.standard_normal((768, c)).astype(np.float32) * 0.05
    w2 = rng.standard_normal((c, 768)).astype(np.float32) * 0.05
    init = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "gemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, 768])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, 768])], init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), 2 * rows * 768 * c


def time_in_turns(models: list, runs: int, threads: int | None, warmup: int = 5) -> list[float]:
    """The fastest run's ms of each model, the models taking turns run after run (on a shared
    machine the fastest run is the kernels' own speed; a median moves with the others' load)."""
    from spa.runtime import random_inputs, session

    sessions = [session(m, threads) for m in models]
    feeds = [random_inputs(m, batch=1) for m in models]
    for s, f in zip(sessions, feeds):
        for _ in range(warmup):
            s.run(None, f)
    times = [[] for _ in models]
    for _ in range(runs):
        for s, f, own in zip(sessions, feeds, times):
            start = time.perf_counter()
            s.run(None, f)
            own.append((time.perf_counter() - start) * 1e3)
    return [min(t) for t in times]


def counts_around(base: int) -> list[int]:
    """Every even count from base - 32 to base + 32, and odd ones at base +- 1, 9, 17, 25."""
    even = range(base - 32, base + 33, 2)
    odd = [base + s * d for d in (1, 9, 17, 25) for s in (-1, 1)]
    return sorted({c for c in [*even, *odd] if c > 0})


def measure(kind: str, base: int, runs: int, threads: int | None, rows: int = 1) -> dict[int, float]:
    """C -> time per MAC relative to that of `base`."""
    rng = np.random.default_rng(0)
    counts = counts_around(base)
    built = [gemm_model(c, rows, rng) if kind == "gemm" else conv_model(c, kind, rng) for c in counts]
    ms = time_in_turns([m for m, _ in built], runs, threads)
    per_mac = {c: t / macs for c, t, (_, macs) in zip(counts, ms, built)}
    return {c: per_mac[c] / per_mac[base] for c in counts}



def penalties(relative: dict[int, float]) -> dict[int, float]:
    """M -> how much dearer per MAC the counts that are multiples of M/2 but not of M (M = 2: the
    odd counts) are than the multiples of M on either side (interpolated between them, so that
    the cost per MAC falling as layers widen does not count), median over the counts."""
    out = {}
    for m in CANDIDATES:
        ratios = []
        for c, v in relative.items():
            lo, hi = c - c % m, c - c % m + m
            if c % m and c % max(m // 2, 1) == 0 and lo in relative and hi in relative:
                ratios.append(v / (relative[lo] + (relative[hi] - relative[lo]) * (c - lo) / m))
        if ratios:
            out[m] = statistics.median(ratios)
    return out


def multiple(pen: dict[int, float], threshold: float) -> int:
    return max([m for m, p in pen.items() if p >= 1 + threshold], default=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", default=["conv", "depthwise", "gemm"])
    parser.add_argument("--bases", nargs="+", type=int, default=[64, 160])
    parser.add_argument("--rows", nargs="+", type=int, default=[1, 128], help="gemm: rows of the input")
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: all cores)")
    parser.add_argument("--threshold", type=float, default=0.10,
                        help="a multiple matters when missing it costs at least this much more per MAC")
    args = parser.parse_args()

    import onnxruntime

    from spa.cli.common import table
    from spa.hardware import cpu_flags

    print(f"onnxruntime {onnxruntime.__version__}, CPU flags: {' '.join(sorted(cpu_flags() & {'avx2', 'avx512f', 'fma'}))}")
    summary = []
    for kind in args.kinds:
        for base in args.bases:
            for rows in (args.rows if kind == "gemm" else [None]):
                relative = measure(kind, base, args.runs, args.threads, rows or 1)
                label = f"{kind} {base}" + (f" x{rows} rows" if rows else "")
                print(f"\n{label}: time per MAC relative to C = {base}")
                print("  " + "  ".join(f"{c}:{v:.2f}" for c, v in relative.items()))
                pen = penalties(relative)
                summary.append([label] + [f"{pen[m]:.2f}x" if m in pen else "-" for m in CANDIDATES]
                               + [str(multiple(pen, args.threshold))])
                print("  missing a multiple costs: " + ", ".join(f"{m}: {p:.2f}x" for m, p in pen.items()), flush=True)
    print()
    print(table(summary, ["layers", *(f"miss {m}" for m in CANDIDATES), "multiple"]))


if __name__ == "__main__":
    main()
