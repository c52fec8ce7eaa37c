"""Engine speed on a ResNet-50 export, side by side with Torch-Pruning on the same network.

    python bench/bench_engine.py [--repeats 5]

SPA is timed on the ONNX export (load + analyze, then prune 30% of channels with L1, then the
checks of the result); Torch-Pruning, if installed (`pip install torch-pruning`), on the PyTorch
model (dependency graph, then prune 30%). Each figure is the median of --repeats runs in this
process. Prints a table; --json writes the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def spa_times(path: str, repeats: int) -> dict:
    import spa
    from spa.rewrite import validate

    analysis_s = median_time(lambda: spa.analyze(path), repeats)
    prune_s = median_time(lambda: spa.prune(path, ratio=0.3, check=False), repeats)
    pruned, _ = spa.prune(path, ratio=0.3, check=False)
    graph = spa.Graph.load(path)
    check_s = median_time(lambda: validate(pruned, graph.model), repeats)
    return {"analyze_s": analysis_s, "prune_s": prune_s, "check_s": check_s}


def torch_pruning_times(repeats: int) -> dict | None:
    try:
        import torch
        import torch_pruning as tp
        import torchvision
    except ImportError:
        return None
    example = torch.randn(1, 3, 224, 224)

    def build_graph():
        model = torchvision.models.resnet50(num_classes=1000).eval()
        start = time.perf_counter()
        tp.DependencyGraph().build_dependency(model, example_inputs=example)
        return time.perf_counter() - start

    def prune():
        model = torchvision.models.resnet50(num_classes=1000).eval()
        start = time.perf_counter()
        pruner = tp.pruner.MagnitudePruner(model, example, importance=tp.importance.MagnitudeImportance(p=1),
                                           pruning_ratio=0.3, ignored_layers=[model.fc])
        pruner.step()
        return time.perf_counter() - start

    return {"graph_s": statistics.median(build_graph() for _ in range(repeats)),
            "prune_s": statistics.median(prune() for _ in range(repeats))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()

    from frontends.torch import export_zoo

    rows, figures = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for exporter in ("dynamo", "torchscript"):
            path = export_zoo("resnet50", os.path.join(tmp, f"resnet50_{exporter}.onnx"), exporter=exporter)
            t = spa_times(path, args.repeats)
            figures[f"spa_{exporter}"] = t
            rows.append([f"SPA, ONNX ({exporter})", t["analyze_s"], t["prune_s"], t["check_s"]])
    tp_times = torch_pruning_times(args.repeats)
    if tp_times:
        figures["torch_pruning"] = tp_times
        rows.append(["Torch-Pruning, PyTorch", tp_times["graph_s"], tp_times["prune_s"], None])

    from spa.cli.common import table

    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    print("ResNet-50, 30% of channels, median of", args.repeats, "runs (seconds)")
    print(table([[r[0]] + [fmt(v) for v in r[1:]] for r in rows],
                ["", "analyze / dependency graph", "prune 30% (incl. analysis)", "check result"]))
    if tp_times:
        for exporter in ("dynamo", "torchscript"):
            t = figures[f"spa_{exporter}"]
            print(f"{exporter}: SPA's time over Torch-Pruning's: analyze (reading the file included) "
                  f"{t['analyze_s'] / tp_times['graph_s']:.2f}x the graph build, prune {t['prune_s'] / tp_times['prune_s']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
